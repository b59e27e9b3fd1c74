"""The world model shared by all agents: encoder, RSSM, decoder and reward head (Eq. 1-4)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from collodreamer.models.losses import gaussian_nll, image_nll, kl_loss
from collodreamer.models.networks import (
    MLP,
    ConvDecoder,
    ConvEncoder,
    RunningNorm,
    image_target,
)
from collodreamer.models.optim import adam, load_optimizer, optimizer_step
from collodreamer.models.rssm import RSSM, State
from collodreamer.models.tensors import autocast, uses_bfloat16
from collodreamer.schema import ModelConfig
from collodreamer.spec import EnvSpec
from collodreamer.timing import timed

Batch = dict[str, torch.Tensor]
ExtraLoss = Callable[[Batch, State, State], tuple[torch.Tensor, dict[str, float]]]


class WorldModel(nn.Module):
    def __init__(self, config: ModelConfig, spec: EnvSpec, device: torch.device) -> None:
        super().__init__()
        self.config = config
        self.device = device
        self.pixels = spec.pixels
        self.action_dim = spec.action_dim
        if self.pixels:
            self.encoder: nn.Module = ConvEncoder(config.cnn_depth)
            embed_dim = self.encoder.out_dim
        else:
            embed_dim = config.units
            self.encoder = MLP(spec.obs_shape[0], embed_dim, config.units, config.layers)
            # State vectors mix scales (reacher: joint angles with std 4, the target offset with std
            # 0.1); standardised, every dimension weighs the same in the reconstruction loss.
            self.obs_norm = RunningNorm(spec.obs_shape[0])
        self.embed_dim = embed_dim
        self.rssm = RSSM(config, spec.action_dim, embed_dim)
        feature_dim = self.rssm.feature_dim
        if self.pixels:
            self.decoder: nn.Module = ConvDecoder(feature_dim, config.cnn_depth)
        else:
            self.decoder = MLP(feature_dim, spec.obs_shape[0], config.units, config.layers)
        self.reward = MLP(feature_dim, 1, config.units, config.layers)
        self.to(device)
        # The conv stacks alone may compute in bfloat16 (model.precision); channels last suits the
        # oneDNN and cuDNN convolutions and makes the decoder's channels-last images a view.
        self.bfloat16 = self.pixels and uses_bfloat16(config.precision, device)
        if self.pixels:
            self.encoder.to(memory_format=torch.channels_last)
            self.decoder.to(memory_format=torch.channels_last)
        self.optimizer = adam(self.parameters(), config.lr)

    @property
    def feature_dim(self) -> int:
        return self.rssm.feature_dim

    def reward_of(self, feature: torch.Tensor) -> torch.Tensor:
        """r(z): the predicted reward received on arriving at the state with feature z."""
        return self.reward(feature).squeeze(-1)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, State, State, dict[str, float]]:
        """The negative ELBO of Eq. 4 on ``[B, T]`` sequences: reconstruction and reward
        negative log-likelihoods plus the (balanced, free-nats) KL.

        Returns (loss, posteriors, priors, metrics)."""
        config = self.config
        obs = self.scale(batch["obs"])
        post, prior = self.rssm.observe(self.embed(obs), batch["action"], batch["is_first"])
        feature = self.rssm.feature(post)
        recon = self.reconstruct(feature)
        reward = self.reward_of(feature)
        obs_loss = image_nll(recon.float(), obs) if self.pixels else gaussian_nll(recon, obs, 1).mean()
        reward_loss = gaussian_nll(reward, batch["reward"], 0).mean()
        extra = {}
        if self.rssm.categorical:
            # The planner's knots hold class probabilities (mu is a mean), never one-hot samples, so
            # the reward head also learns at the posterior's probabilities.
            mean_reward = self.reward_of(self.rssm.mean_feature(post))
            mean_reward_loss = gaussian_nll(mean_reward, batch["reward"], 0).mean()
            extra["model/reward_mean_feature_loss"] = mean_reward_loss.item()
            reward_loss = 0.5 * (reward_loss + mean_reward_loss)
        balance = config.kl_balance if config.kl_balancing else None
        kl, kl_value = kl_loss(self.rssm.kl, post, prior, balance, config.free_nats)
        loss = obs_loss + reward_loss + config.kl_scale * kl
        metrics = {
            "model/loss": loss.item(),
            "model/image_loss" if self.pixels else "model/state_loss": obs_loss.item(),
            "model/reward_loss": reward_loss.item(),
            "model/kl": kl_value.item(),
            **extra,
        }
        return loss, post, prior, metrics

    def update_normaliser(self, batch: Batch) -> None:
        """Fold a training batch's state vectors into the running standardisation (states only)."""
        if not self.pixels:
            self.obs_norm.update(batch["obs"])

    def train_step(self, batch: Batch, extra_loss: ExtraLoss | None = None) -> tuple[State, dict[str, float]]:
        """One Adam step on Eq. 4, plus ``extra_loss(batch, posteriors, priors) -> (loss, metrics)``
        when given (ColloDreamer's Eq. 11); returns the posterior states (detached) and metrics."""
        with timed("model"):
            self.update_normaliser(batch)
            loss, post, prior, metrics = self.loss(batch)
            if extra_loss is not None:
                extra, extra_metrics = extra_loss(batch, post, prior)
                loss = loss + extra
                metrics.update(extra_metrics)
            metrics["model/grad_norm"] = optimizer_step(
                self.optimizer, loss, self, self.config.grad_clip, "world_model"
            )
        return {k: v.detach() for k, v in post.items()}, metrics

    def reconstruct(self, feature: torch.Tensor) -> torch.Tensor:
        """The decoder's mean observation in the loss's units (images as pixels / 255 - 0.5, channels
        last, in bfloat16 where the conv stacks compute in it; state vectors standardised)."""
        with autocast(self.device, self.bfloat16):
            return self.decoder(feature)

    def decode(self, feature: torch.Tensor) -> torch.Tensor:
        """The decoder's mean observation in the environment's units: images as floats in [0, 255]
        (channels last), state vectors unstandardised."""
        recon = self.reconstruct(feature).float()
        if self.pixels:
            return ((recon + 0.5) * 255.0).clamp(0.0, 255.0)
        return self.obs_norm.inverse(recon)

    def observe(self, batch: Batch) -> tuple[State, State]:
        """Posterior and prior states ``[B, T, ...]`` of sequences of observations, actions and episode
        starts (``batch["obs"]``, ``["action"]``, ``["is_first"]``) filtered through the model."""
        return self.rssm.observe(self.encode(batch["obs"]), batch["action"], batch["is_first"])

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """Embeddings of observations (images as uint8, state vectors in their own units)."""
        return self.embed(self.scale(obs))

    def scale(self, obs: torch.Tensor) -> torch.Tensor:
        """Observations in the model's scale, the encoder's input and the decoder's target: images as
        pixels / 255 - 0.5, state vectors standardised."""
        return image_target(obs) if self.pixels else self.obs_norm(obs)

    def embed(self, obs: torch.Tensor) -> torch.Tensor:
        """Float32 embeddings of observations in the model's scale (:meth:`scale`)."""
        with autocast(self.device, self.bfloat16):
            return self.encoder(obs).float()

    @torch.no_grad()
    def filter(self, obs: np.ndarray, state: State | None, action: torch.Tensor | None) -> State:
        """Update the posterior with one real observation. ``state`` None starts an episode;
        ``action`` is the action executed since ``state``."""
        obs_t = torch.as_tensor(obs, device=self.device)[None]
        if obs_t.dtype == torch.float64:
            obs_t = obs_t.float()
        first = state is None
        if state is None:
            state = self.rssm.initial((1,), self.device)
        if action is None:
            action = torch.zeros(1, self.action_dim, device=self.device)
        is_first = torch.tensor([first], device=self.device)
        return self.rssm.obs_step(state, action, self.encode(obs_t), is_first)

    def training_state(self) -> dict[str, Any]:
        return {"params": self.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        self.load_state_dict(state["params"])
        load_optimizer(self.optimizer, state["optimizer"], self.config.lr)
