"""Dreamer (Hafner et al. 2019): an actor and a value learned on imagined trajectories of the world
model, with lambda-returns bootstrapped from a slow target value network."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from collodreamer.config import ActorConfig, Config
from collodreamer.envs import EnvSpec
from collodreamer.models import MLP, WorldModel, autocast, to_torch
from collodreamer.models.losses import lambda_returns, tanh_gaussian_entropy, update_target
from collodreamer.models.networks import frozen, optimizer_step
from collodreamer.models.rssm import flatten
from collodreamer.models.value import ValueNetwork
from collodreamer.timing import timed


class Actor(nn.Module):
    """Tanh-Gaussian policy: mean squashed to ``mean_scale * tanh(mean / mean_scale)``, softplus std
    initialised near ``init_std``, samples passed through tanh (DreamerV1)."""

    def __init__(self, feature_dim: int, action_dim: int, config: ActorConfig) -> None:
        super().__init__()
        self.config = config
        self.net = MLP(feature_dim, 2 * action_dim, config.units, config.layers)
        self.raw_init_std = math.log(math.exp(config.init_std) - 1.0)

    def distribution(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-tanh mean and std of the policy at each feature."""
        mean, std = self.net(feature).chunk(2, -1)
        scale = self.config.mean_scale
        mean = scale * torch.tanh(mean / scale)
        std = nn.functional.softplus(std + self.raw_init_std) + self.config.min_std
        return mean, std

    def entropy(self, feature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One-sample entropy estimate of the policy at each feature, and the pre-tanh std."""
        mean, std = self.distribution(feature)
        return tanh_gaussian_entropy(mean, std, torch.randn_like(std)), std

    def sample(self, feature: torch.Tensor) -> torch.Tensor:
        mean, std = self.distribution(feature)
        return torch.tanh(mean + std * torch.randn_like(std))

    def mode(self, feature: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.distribution(feature)[0])


class DreamerAgent:
    def __init__(self, config: Config, spec: EnvSpec, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.world_model = WorldModel(config.model, spec, device)
        feature_dim = self.world_model.feature_dim
        self.actor = Actor(feature_dim, spec.action_dim, config.actor).to(device)
        self.value = ValueNetwork(feature_dim, config.value).to(device)
        self.target_value = copy.deepcopy(self.value).requires_grad_(False).eval()
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor.lr, eps=1e-5)
        self.value_optimizer = torch.optim.Adam(self.value.parameters(), lr=config.value.lr, eps=1e-5)
        self.value_updates = 0

    @torch.no_grad()
    def act(self, obs: np.ndarray, state: Any, training: bool) -> tuple[np.ndarray, Any]:
        latent, action = state if state is not None else (None, None)
        latent = self.world_model.filter(obs, latent, action)
        feature = self.world_model.rssm.feature(latent)
        action = self.actor.sample(feature) if training else self.actor.mode(feature)
        if training and self.config.expl_noise > 0:
            action = (action + self.config.expl_noise * torch.randn_like(action)).clamp(-1.0, 1.0)
        return action[0].cpu().numpy(), (latent, action)

    def metrics(self) -> dict[str, float]:
        return {}

    def train_step(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        post, metrics = self.world_model.train_step(to_torch(batch, self.device))
        start = flatten(post)
        count = self.config.actor.starts
        if 0 < count < start["deter"].shape[0]:
            # Imagination costs most of an update on a CPU; a random subset of starts keeps it cheap.
            index = torch.randperm(start["deter"].shape[0], device=self.device)[:count]
            start = {k: v[index] for k, v in start.items()}
        with timed("behaviour"):
            metrics.update(self.train_behaviour(start))
        return metrics

    def train_behaviour(self, start: dict[str, torch.Tensor]) -> dict[str, float]:
        """One actor and one value update on imagined trajectories from every posterior state."""
        actor_config, value_config = self.config.actor, self.config.value
        horizon = actor_config.horizon
        with frozen(self.world_model), autocast(self.device, self.config.model.amp):
            features, _ = self.world_model.rssm.imagine(start, self.actor.sample, horizon)
            rewards = self.world_model.reward_of(features[1:])
            values = self.target_value(features[1:])
        discounts = torch.full_like(rewards, value_config.gamma)
        returns = lambda_returns(rewards.float(), values.float(), discounts, value_config.lam)
        # Weight step t by gamma^t: later imagined steps matter less (DreamerV1).
        weights = torch.cumprod(torch.cat([torch.ones_like(discounts[:1]), discounts[:-1]]), 0)
        entropy, std = self.actor.entropy(features[:-1].detach())
        actor_loss = -(weights * (returns + actor_config.entropy * entropy)).mean()
        actor_norm = optimizer_step(self.actor_optimizer, actor_loss, self.actor, actor_config.grad_clip)
        with autocast(self.device, self.config.model.amp):
            prediction = self.value(features[:-1].detach()).float()
        value_loss = (weights * 0.5 * (prediction - returns.detach()) ** 2).mean()
        value_norm = optimizer_step(self.value_optimizer, value_loss, self.value, value_config.grad_clip)
        self.value_updates += 1
        if self.value_updates % value_config.target_period == 0:
            update_target(self.target_value, self.value, value_config.target_tau)
        return {
            "actor/loss": actor_loss.item(),
            "actor/grad_norm": actor_norm,
            "actor/entropy": entropy.mean().item(),
            "actor/std": std.mean().item(),
            "value/loss": value_loss.item(),
            "value/grad_norm": value_norm,
            "value/mean": prediction.mean().item(),
            "imagine/reward": rewards.float().mean().item(),
            "imagine/return": returns.mean().item(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "world_model": self.world_model.training_state(),
            "actor": self.actor.state_dict(),
            "value": self.value.state_dict(),
            "target_value": self.target_value.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            "value_optimizer": self.value_optimizer.state_dict(),
            "value_updates": self.value_updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.world_model.load_training_state(state["world_model"])
        self.actor.load_state_dict(state["actor"])
        self.value.load_state_dict(state["value"])
        self.target_value.load_state_dict(state["target_value"])
        self.actor_optimizer.load_state_dict(state["actor_optimizer"])
        self.value_optimizer.load_state_dict(state["value_optimizer"])
        self.value_updates = state["value_updates"]
