"""Small ensembles of heads whose disagreement measures what the model does not know (beyond the
paper): the planners' pessimism."""

from __future__ import annotations

import torch
from torch import nn

from collodreamer.models.networks import MLP


def pessimistic(predictions: torch.Tensor, kappa: float) -> torch.Tensor:
    """``mean - kappa * std`` over the heads ``[K, ...]`` (the population std: with two heads and
    ``kappa = 1`` it is their minimum, TD-MPC2's pessimism)."""
    if predictions.shape[0] == 1:
        return predictions[0]
    return predictions.mean(0) - kappa * predictions.std(0, unbiased=False)


class Ensemble(nn.Module):
    """``heads`` MLPs of one input, each with its own initialisation: predictions ``[K, ...]``."""

    def __init__(self, in_dim: int, heads: int, units: int, layers: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(MLP(in_dim, 1, units, layers) for _ in range(heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(x).squeeze(-1) for head in self.heads])
