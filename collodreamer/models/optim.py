"""The optimisers: Adam with DreamerV1's epsilon for every network, the optimiser step (which skips
non-finite updates and records the training health), restoring an optimiser at the configured rate,
and the Polyak update of target networks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from collodreamer.health import growth, nonfinite

ADAM_EPS = 1e-5  # DreamerV1's Adam epsilon, for every network


def adam(parameters: Iterable[nn.Parameter], lr: float) -> torch.optim.Adam:
    """The optimiser of every network here: Adam with DreamerV1's epsilon."""
    return torch.optim.Adam(parameters, lr=lr, eps=ADAM_EPS)


def optimizer_step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, module: nn.Module, clip: float, name: str
) -> float:
    """Zero, backprop, clip the gradient norm to ``clip``, step; returns the pre-clip norm. A non-finite
    loss or gradient norm never reaches the weights: that step is skipped (the optimiser's state stays
    as it was too) and counted under ``name`` in :data:`nonfinite`; the weights a step changed are
    measured by :data:`growth`."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = nn.utils.clip_grad_norm_(module.parameters(), clip)
    if nonfinite.count(name, bool(torch.isfinite(norm) & torch.isfinite(loss.detach()))):
        growth.before(name, module)
        optimizer.step()
        growth.check(name, module)
    else:
        optimizer.zero_grad(set_to_none=True)
    return norm.item()


def load_optimizer(optimizer: torch.optim.Optimizer, state: dict[str, Any], lr: float) -> None:
    """Restore ``optimizer`` from a checkpoint's ``state`` at the configured learning rate ``lr``: a rate
    changed on ``--resume`` wins over the one saved with the state."""
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        group["lr"] = lr


@torch.no_grad()
def update_target(target: nn.Module, online: nn.Module, tau: float) -> None:
    """Polyak averaging of the parameters, ``target <- tau * online + (1 - tau) * target`` (``tau=1``
    copies); buffers (batch-norm statistics) are copied as they are."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o, tau)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)
