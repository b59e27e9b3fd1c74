"""Training plumbing shared by every network: the optimiser step (which skips non-finite updates),
frozen modules, mixed precision, target networks, and replay arrays to tensors on the run's device."""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

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


class NonFiniteCounter:
    """Updates (and plans) that went non-finite, per network: how many since the last :meth:`take`,
    and the longest run of them in a row. The training loop logs the first and stops a run whose
    second reaches ``run.max_nonfinite``."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._skipped: Counter[str] = Counter()
        self._in_a_row: Counter[str] = Counter()
        self._longest: Counter[str] = Counter()

    def count(self, name: str, finite: bool) -> bool:
        """Record one update of ``name``; a finite one ends its run of non-finite ones. Returns ``finite``."""
        if finite:
            self._in_a_row[name] = 0
        else:
            self._skipped[name] += 1
            self._in_a_row[name] += 1
            self._longest[name] = max(self._longest[name], self._in_a_row[name])
        return finite

    def failing(self) -> dict[str, int]:
        """The networks whose latest update was non-finite, with how many in a row."""
        return {name: count for name, count in self._in_a_row.items() if count}

    def take(self) -> tuple[dict[str, int], dict[str, int]]:
        """Per network: the non-finite updates since the last call, and the longest run of them in a row
        seen since then (a run still going counts from its start)."""
        skipped, longest = dict(self._skipped), dict(self._longest)
        self._skipped.clear()
        self._longest = Counter(self.failing())
        return skipped, longest


nonfinite = NonFiniteCounter()

# The learning rate that drives each network's updates, named by the settings a resume may change.
RATE_SETTINGS = {
    "world_model": "model.lr",
    "actor": "actor.lr",
    "value": "value.lr",
    "policy": "policy.lr",
    "reward_heads": "pessimism.lr",
}


class WeightGrowth:
    """A health check beside the non-finite one: each network's weight norm against its level at its
    first update in this process. A network whose norm grew past ``limit`` times that level has blown
    up while staying finite (e.g. ``value.lr=1e6``: weights of 1e28); the training loop stops it."""

    def __init__(self) -> None:
        self.limit = math.inf
        self.clear()

    def clear(self) -> None:
        self._level: dict[str, float] = {}
        self._grown: dict[str, tuple[float, float]] = {}

    def before(self, name: str, module: nn.Module) -> None:
        """Before an update of ``name``: its level, once, before its first update."""
        if name not in self._level:
            self._level[name] = max(weight_norm(module), 1e-6)

    def check(self, name: str, module: nn.Module) -> None:
        """After an update of ``name``: note it when its weights grew past the limit."""
        norm = weight_norm(module)
        if norm > self.limit * self._level[name]:
            self._grown.setdefault(name, (self._level[name], norm))

    def take(self) -> dict[str, tuple[float, float]]:
        """The networks that grew past the limit since the last call: their level and their norm."""
        grown, self._grown = self._grown, {}
        return grown


growth = WeightGrowth()


@torch.no_grad()
def weight_norm(module: nn.Module) -> float:
    """The 2-norm of all of ``module``'s parameters together."""
    return float(nn.utils.get_total_norm(list(module.parameters())))


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


def uses_bfloat16(precision: str, device: torch.device) -> bool:
    """Whether ``model.precision`` means bfloat16 on ``device``: always for ``bfloat16``; for ``auto``
    where the device computes it natively (a CUDA GPU that supports it, a CPU with AVX512-BF16 or AMX;
    elsewhere the CPU would emulate it, slower than float32)."""
    if precision != "auto":
        return precision == "bfloat16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu  # torch's own checks, as its oneDNN kernels use them
    return device.type == "cpu" and (cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when enabled; a no-op otherwise."""
    if enabled:
        return torch.autocast(device.type, dtype=torch.bfloat16)
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
