"""Tensor plumbing shared by the networks: replay arrays to tensors on the run's device, modules frozen
for a backward pass, and bfloat16 autocast where the device computes it natively."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn


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


def to_torch(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """Replay arrays to tensors; float64 becomes float32, uint8 images stay uint8 until encoded."""
    out = {}
    for key, value in batch.items():
        tensor = torch.as_tensor(value)
        if tensor.dtype == torch.float64:
            tensor = tensor.float()
        out[key] = tensor.to(device, non_blocking=True)
    return out
