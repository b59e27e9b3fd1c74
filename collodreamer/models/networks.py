"""Building blocks: MLPs, Dreamer's CNN encoder and transposed-CNN decoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """``layers`` hidden layers of ``units`` (ELU), then a linear output of ``out_dim``.

    ``norm`` places a BatchNorm before or after each hidden activation, or a LayerNorm before it
    (``layer``); ``dropout`` gives the drop probability after each hidden layer (one entry per
    layer, or empty for none).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        units: int,
        layers: int,
        norm: str = "none",
        dropout: Sequence[float] = (),
    ) -> None:
        super().__init__()
        if norm not in ("none", "before", "after", "layer"):
            raise ValueError(f"norm must be none, before, after or layer, got {norm!r}")
        if dropout and len(dropout) != layers:
            raise ValueError(f"dropout needs one probability per hidden layer ({layers}), got {len(dropout)}")
        modules: list[nn.Module] = []
        size = in_dim
        for index in range(layers):
            modules.append(nn.Linear(size, units))
            if norm == "before":
                modules.append(nn.BatchNorm1d(units))
            elif norm == "layer":
                modules.append(nn.LayerNorm(units))
            modules.append(nn.ELU())
            if norm == "after":
                modules.append(nn.BatchNorm1d(units))
            if dropout and dropout[index] > 0:
                modules.append(nn.Dropout(dropout[index]))
            size = units
        modules.append(nn.Linear(size, out_dim))
        self.net = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        return self.net(x.reshape(-1, x.shape[-1])).reshape(*lead, -1)


class ConvEncoder(nn.Module):
    """Dreamer's encoder: 64x64x3 images (channels last, scaled by :func:`image_target`) -> 4 convs
    (kernel 4, stride 2, ReLU) -> 32*depth."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, depth, 4, 2),
            nn.ReLU(),
            nn.Conv2d(depth, 2 * depth, 4, 2),
            nn.ReLU(),
            nn.Conv2d(2 * depth, 4 * depth, 4, 2),
            nn.ReLU(),
            nn.Conv2d(4 * depth, 8 * depth, 4, 2),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.out_dim = 32 * depth

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        lead = images.shape[:-3]
        return self.net(images.reshape(-1, *images.shape[-3:]).permute(0, 3, 1, 2)).reshape(*lead, -1)


class ConvDecoder(nn.Module):
    """Dreamer's decoder: feature -> 32*depth -> 4 transposed convs (kernels 5, 5, 6, 6) -> 64x64x3.

    Returns the mean image in the encoder's scale (pixels / 255 - 0.5), channels last.
    """

    def __init__(self, feature_dim: int, depth: int) -> None:
        super().__init__()
        self.depth = depth
        self.linear = nn.Linear(feature_dim, 32 * depth)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(32 * depth, 4 * depth, 5, 2),
            nn.ReLU(),
            nn.ConvTranspose2d(4 * depth, 2 * depth, 5, 2),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * depth, depth, 6, 2),
            nn.ReLU(),
            nn.ConvTranspose2d(depth, 3, 6, 2),
        )

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        lead = feature.shape[:-1]
        x = self.linear(feature.reshape(-1, feature.shape[-1]))
        # On its 1x1 input the first transposed conv is a linear map onto its k x k output: as one
        # matrix product (channels last) it costs a seventh of the convolution routine's time.
        first = self.net[0]
        k = first.kernel_size[0]
        weight = first.weight.permute(2, 3, 1, 0).reshape(-1, first.in_channels)
        x = F.linear(x, weight, first.bias.repeat(k * k)).reshape(-1, k, k, first.out_channels)
        images = self.net[1:](x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return images.reshape(*lead, *images.shape[1:])


class RunningNorm(nn.Module):
    """Standardise vectors by per-dimension running mean and variance over everything seen so far
    (Chan et al.'s parallel update); the identity until the first update."""

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("var", torch.ones(size, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        n, batch_mean, batch_var = x.shape[0], x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.var.copy_((self.var * self.count + batch_var * n + delta**2 * self.count * n / total) / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / (self.var.to(x.dtype) + self.eps).sqrt()

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Standardised vectors back in their own units."""
        return x * (self.var.to(x.dtype) + self.eps).sqrt() + self.mean.to(x.dtype)


def image_target(obs: torch.Tensor) -> torch.Tensor:
    """uint8 images in the scale of the encoder's input and the decoder's output, pixels / 255 - 0.5
    (in place on one float copy: on a batch of images each pass costs)."""
    return obs.to(torch.float32, copy=True).div_(255.0).sub_(0.5)
