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


def excess_disagreement(predictions: torch.Tensor, level: float, kappa: float) -> torch.Tensor:
    """``kappa * max(u / level - 1, 0)`` with ``u`` the heads' disagreement, the population std over the
    heads ``[K, ..., E]`` averaged over the ``E`` outputs (Plan2Explore's, as a MOPO-style penalty):
    zero up to ``level``, the disagreement on replayed states; 0 while ``level`` is unknown (0)."""
    if level <= 0:
        return predictions.new_zeros(predictions.shape[1:-1])
    return kappa * torch.relu(predictions.std(0, unbiased=False).mean(-1) / level - 1.0)


class Ensemble(nn.Module):
    """``heads`` MLPs of one input, each with its own initialisation: predictions ``[K, ...]`` (one
    output) or ``[K, ..., out_dim]``."""

    def __init__(self, in_dim: int, heads: int, units: int, layers: int, out_dim: int = 1) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.heads = nn.ModuleList(MLP(in_dim, out_dim, units, layers) for _ in range(heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        predictions = torch.stack([head(x) for head in self.heads])
        return predictions.squeeze(-1) if self.out_dim == 1 else predictions
