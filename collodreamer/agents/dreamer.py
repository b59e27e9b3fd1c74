"""Dreamer (Hafner et al. 2019): an actor and a value learned on imagined trajectories of the world
model, with lambda-returns bootstrapped from a slow target value network."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from collodreamer.agents.base import Sampler, explore
from collodreamer.agents.promise import Segment, promise_metrics
from collodreamer.averages import Averages
from collodreamer.models import MLP, WorldModel, to_torch
from collodreamer.models.losses import lambda_returns, tanh_gaussian_entropy
from collodreamer.models.optim import adam, load_optimizer, optimizer_step
from collodreamer.models.rssm import State, flatten
from collodreamer.models.tensors import frozen
from collodreamer.models.value import Critic
from collodreamer.planning import policy_rollout
from collodreamer.schema import ActorConfig, Config
from collodreamer.spec import EnvSpec
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


@dataclass
class ActorState:
    """An episode's memory: the filtered posterior, the last executed action, and the segment of
    ``planner.replan_every`` steps under way, read as a plan (see :mod:`collodreamer.agents.promise`)."""

    latent: State
    action: torch.Tensor
    segment: Segment


class ImaginedBehaviour:
    """Dreamer's behaviour: an actor and a critic trained on imagined trajectories of the world model,
    with lambda-returns bootstrapped from the critic's slow target, and the actor's way of acting. The
    critic follows Dreamer's convention: ``V(s)`` predicts the rewards from the next state on."""

    def __init__(
        self,
        config: Config,
        world_model: WorldModel,
        action_dim: int,
        reward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.config = config
        self.world_model = world_model
        self.reward = reward or world_model.reward_of  # r(z) in imagination
        device = world_model.device
        feature_dim = world_model.feature_dim
        self.actor = Actor(feature_dim, action_dim, config.actor).to(device)
        self.critic = Critic(feature_dim, config.value, device)
        self.actor_optimizer = adam(self.actor.parameters(), config.actor.lr)

    def value_of(self, feature: torch.Tensor) -> torch.Tensor:
        """The critic's value counting the reward of ``feature`` itself, ``r(z) + gamma V(z)`` (the
        critic predicts the rewards from the next state on)."""
        value = self.critic.value(feature)
        return self.reward(feature) + self.config.value.gamma * value

    @torch.no_grad()
    def act(
        self,
        obs: np.ndarray,
        state: ActorState | None,
        training: bool,
        reward: float,
        log: Callable[[dict[str, float]], None],
    ) -> tuple[np.ndarray, ActorState]:
        """Dreamer's acting: the actor's action at the filtered feature (sampled, with exploration
        noise, while training; its mode in tests); each ``planner.replan_every`` steps read as a
        segment of the actor's imagined rollout, whose promise metrics go to ``log``."""
        latent = self.world_model.filter(
            obs, state.latent if state else None, state.action if state else None
        )
        feature = self.world_model.rssm.feature(latent)
        segment = state.segment if state else None
        if segment is not None:
            segment.paid.append(reward)  # for the action executed last
        if segment is None or len(segment.actions) >= self.config.planner.replan_every:
            if segment is not None:
                log(promise_metrics(self.world_model, segment, feature, self.value_of))
            segment = Segment(self.imagined_plan(feature))
        action = self.actor.sample(feature) if training else self.actor.mode(feature)
        if training:
            action = explore(action, self.config.expl_noise)
        segment.executed(feature, action)
        return action[0].cpu().numpy(), ActorState(latent, action, segment)

    def imagined_plan(self, feature: torch.Tensor) -> torch.Tensor:
        """The actor's deterministic rollout ``[1, replan_every + 1, D]`` under the mean dynamics: the
        plan its next segment is measured against."""
        dynamics, steps = self.world_model.rssm.next_feature_mean, self.config.planner.replan_every
        return policy_rollout(dynamics, self.actor.mode, feature, steps)[0]

    def train(self, post: State) -> dict[str, float]:
        """One actor and one critic update on imagined trajectories from the posterior states ``post``
        (``[B, T, ...]``), from ``actor.starts`` random ones of them when that is set."""
        start = flatten(post)
        count = self.config.actor.starts
        if 0 < count < start["deter"].shape[0]:
            # Imagination costs most of an update on a CPU; a random subset of starts keeps it cheap.
            index = torch.randperm(start["deter"].shape[0], device=start["deter"].device)[:count]
            start = {k: v[index] for k, v in start.items()}
        with timed("behaviour"):
            return self._update(start)

    def _update(self, start: State) -> dict[str, float]:
        actor_config, value_config = self.config.actor, self.config.value
        with frozen(self.world_model):
            features, _ = self.world_model.rssm.imagine(start, self.actor.sample, actor_config.horizon)
            rewards = self.reward(features[1:])
            values = self.critic.target(features[1:])
        returns = lambda_returns(rewards, values, value_config.gamma, value_config.lam)
        # Weight step t by gamma^t: later imagined steps matter less (DreamerV1).
        discounts = torch.full_like(returns, value_config.gamma)
        weights = torch.cumprod(torch.cat([torch.ones_like(discounts[:1]), discounts[:-1]]), 0)
        entropy, std = self.actor.entropy(features[:-1].detach())
        actor_loss = -(weights * (returns + actor_config.entropy * entropy)).mean()
        actor_norm = optimizer_step(
            self.actor_optimizer, actor_loss, self.actor, actor_config.grad_clip, "actor"
        )
        metrics = self.critic.update(features[:-1], returns, weights)
        return {
            **metrics,
            "actor/loss": actor_loss.item(),
            "actor/grad_norm": actor_norm,
            "actor/entropy": entropy.mean().item(),
            "actor/std": std.mean().item(),
            "imagine/reward": rewards.mean().item(),
            "imagine/return": returns.mean().item(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "actor": self.actor.state_dict(),
            "actor_optimizer": self.actor_optimizer.state_dict(),
            **self.critic.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.actor.load_state_dict(state["actor"])
        load_optimizer(self.actor_optimizer, state["actor_optimizer"], self.config.actor.lr)
        self.critic.load_state_dict(state)


class DreamerAgent:
    def __init__(self, config: Config, spec: EnvSpec, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.world_model = WorldModel(config.model, spec, device)
        self.behaviour = ImaginedBehaviour(config, self.world_model, spec.action_dim)
        self.actor = self.behaviour.actor
        self._averages = Averages()

    def act(
        self, obs: np.ndarray, state: ActorState | None, training: bool, reward: float = 0.0
    ) -> tuple[np.ndarray, ActorState]:
        return self.behaviour.act(obs, state, training, reward, self._averages.add)

    def value_of(self, feature: torch.Tensor) -> torch.Tensor:
        return self.behaviour.value_of(feature)

    def metrics(self) -> dict[str, float]:
        return self._averages.take()

    def learn_held_fixed(self, sample: Sampler, updates: int, plans: int) -> None:
        """Learn the actor and critic on a held-fixed model's replay: ``updates`` training batches."""
        replay = self.config.replay
        for _ in range(updates):
            self.behaviour.train(sample(replay.batch_size, replay.batch_length)[1])

    def train_step(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        post, metrics = self.world_model.train_step(to_torch(batch, self.device))
        return {**metrics, **self.behaviour.train(post)}

    def state_dict(self) -> dict[str, Any]:
        return {"world_model": self.world_model.training_state(), **self.behaviour.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.world_model.load_training_state(state["world_model"])
        self.behaviour.load_state_dict(state)
