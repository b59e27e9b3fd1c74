"""Training plumbing shared by every network: the optimiser step, frozen modules, mixed precision,
target networks, and replay arrays to tensors on the run's device."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import nn

ADAM_EPS = 1e-5  # DreamerV1's Adam epsilon, for every network


def adam(parameters: Iterable[nn.Parameter], lr: float) -> torch.optim.Adam:
    """The optimiser of every network here: Adam with DreamerV1's epsilon."""
    return torch.optim.Adam(parameters, lr=lr, eps=ADAM_EPS)


def explore(action: torch.Tensor, noise: float) -> torch.Tensor:
    """An executed action with Gaussian exploration noise of std ``noise``, kept in [-1, 1]."""
    if noise <= 0:
        return action
    return (action + noise * torch.randn_like(action)).clamp(-1.0, 1.0)


def optimizer_step(
    optimizer: torch.optim.Optimizer, loss: torch.Tensor, module: nn.Module, clip: float
) -> float:
    """Zero, backprop, clip the gradient norm to ``clip``, step; returns the pre-clip norm."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = nn.utils.clip_grad_norm_(module.parameters(), clip)
    optimizer.step()
    return norm.item()


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Let gradients flow through ``module`` without accumulating into its parameters."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA when enabled; a no-op otherwise."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def update_target(target: nn.Module, online: nn.Module, tau: float) -> None:
    """Polyak averaging ``target <- tau * online + (1 - tau) * target`` (``tau=1`` copies)."""
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.lerp_(o, tau)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)


def to_torch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Replay arrays to tensors; float64 becomes float32, uint8 images stay uint8 until encoded."""
    out = {}
    for key, value in batch.items():
        tensor = torch.as_tensor(value)
        if tensor.dtype == torch.float64:
            tensor = tensor.float()
        out[key] = tensor.to(device, non_blocking=True)
    return out
