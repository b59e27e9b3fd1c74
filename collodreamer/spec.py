"""What an agent needs to know of its environment to build its networks (no simulator imported)."""

from __future__ import annotations

from dataclasses import dataclass

IMAGE_SIZE = 64  # pixels per side of image observations: Dreamer's conv encoder and decoder take 64x64


@dataclass(frozen=True)
class EnvSpec:
    """Observation shape (``(H, W, 3)`` pixels or ``(N,)`` states) and the number of actions."""

    obs_shape: tuple[int, ...]
    action_dim: int

    @property
    def pixels(self) -> bool:
        """Whether observations are images rather than state vectors."""
        return len(self.obs_shape) == 3
