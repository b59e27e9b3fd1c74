"""The value network V(z) with the regularisers of Fig. 1 (normalisation, dropout, clipping), and the
critic that trains it: V with its slow target copy V', optimiser and update schedule."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from collodreamer.health import nonfinite
from collodreamer.models.ensemble import pessimistic
from collodreamer.models.networks import MLP
from collodreamer.models.optim import adam, load_optimizer, optimizer_step, update_target
from collodreamer.schema import ValueConfig


def straight_through_clip(value: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """The value clip of the paper's V (Fig. 1; ``value.clip_mode=straight_through``):
    ``clamp(value, low, high)`` forward, the identity backward: the clipped value is what is used,
    and the gradient outside the range is the network's own (a hard clamp's is zero there, so a
    planner pushing V up would see no direction where V is clipped at ``low``)."""
    return value + (value.clamp(low, high) - value).detach()


class ValueNetwork(nn.Module):
    """V(z) -> ``[...]``; batch norm and dropout act in training mode only, clipping always
    (``clip_mode``: a hard clamp, or the straight-through clamp of :func:`straight_through_clip`).
    With ``heads > 1``, V is the pessimistic estimate ``mean - kappa * std`` over that many networks."""

    def __init__(self, feature_dim: int, config: ValueConfig) -> None:
        super().__init__()

        def network() -> MLP:
            return MLP(feature_dim, 1, config.units, config.layers, config.norm, config.dropout)

        self.net = network()
        self.more = nn.ModuleList(network() for _ in range(config.heads - 1))  # the ensemble's other heads
        self.kappa = config.kappa
        self.bounds = (config.clip_low, config.clip_high) if config.clip else None
        self.straight_through = config.clip_mode == "straight_through"

    def heads(self, feature: torch.Tensor) -> torch.Tensor:
        """Each head's (clipped) value ``[K, ...]``."""
        value = torch.stack([net(feature).squeeze(-1) for net in (self.net, *self.more)])
        if self.bounds is None:
            return value
        if self.straight_through:
            return straight_through_clip(value, *self.bounds)
        return value.clamp(*self.bounds)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return pessimistic(self.heads(feature), self.kappa)


class Critic:
    """V, its slow target V' (``V' <- tau V + (1 - tau) V'`` after every ``target_period`` updates)
    and its Adam optimiser. V stays in eval mode (batch norm's running statistics, no dropout)
    except inside :meth:`update`."""

    def __init__(self, feature_dim: int, config: ValueConfig, device: torch.device) -> None:
        self.config = config
        self.value = ValueNetwork(feature_dim, config).to(device).eval()
        self.target = copy.deepcopy(self.value).requires_grad_(False)
        self.optimizer = adam(self.value.parameters(), config.lr)
        self.updates = 0

    def update(
        self, features: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
    ) -> dict[str, float]:
        """One step on ``mean(weights * 0.5 * (V(z) - T)^2)``; returns the loss and gradient norm.
        Non-finite features or targets (from a diverged plan or model) skip the step before V sees
        them, so they reach neither its weights nor its batch-norm statistics."""
        if not bool(torch.isfinite(features).all() & torch.isfinite(targets).all()):
            nonfinite.count("value", False)
            return {"value/loss": math.nan, "value/grad_norm": math.nan, "value/mean": math.nan}
        with torch.enable_grad():
            self.value.train()
            prediction = self.value.heads(features.detach())
            squared = 0.5 * (prediction - targets.detach()) ** 2
            loss = (squared if weights is None else weights * squared).mean()
            norm = optimizer_step(self.optimizer, loss, self.value, self.config.grad_clip, "value")
            self.value.eval()
        self.updates += 1
        if self.updates % self.config.target_period == 0:
            update_target(self.target, self.value, self.config.target_tau)
        return {"value/loss": loss.item(), "value/grad_norm": norm, "value/mean": prediction.mean().item()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "value": self.value.state_dict(),
            "target_value": self.target.state_dict(),
            "value_optimizer": self.optimizer.state_dict(),
            "value_updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value.load_state_dict(state["value"])
        self.target.load_state_dict(state["target_value"])
        load_optimizer(self.optimizer, state["value_optimizer"], self.config.lr)
        self.updates = state["value_updates"]
