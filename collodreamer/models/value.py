"""The value network V(z) with the regularisers of Fig. 1 (batch norm, dropout, clipping)."""

from __future__ import annotations

import torch
from torch import nn

from collodreamer.config import ValueConfig
from collodreamer.models.networks import MLP


class ValueNetwork(nn.Module):
    """V(z) -> ``[...]``; batch norm and dropout act in training mode only, clipping always."""

    def __init__(self, feature_dim: int, config: ValueConfig) -> None:
        super().__init__()
        self.net = MLP(feature_dim, 1, config.units, config.layers, config.norm, config.dropout)
        self.bounds = (config.clip_low, config.clip_high) if config.clip else None

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        value = self.net(feature).squeeze(-1)
        return value.clamp(*self.bounds) if self.bounds else value
