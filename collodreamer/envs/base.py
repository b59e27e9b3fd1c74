"""The environment protocol the training loop, evaluation, benchmarks and reports use (Gymnasium's,
plus what a run needs): every task, dm_control or Gymnasium, is seen through it.

Observations are 64x64 RGB pixels (uint8, HWC) or a float32 state vector; actions live in [-1, 1]
per dimension (``action_space``) and each environment rescales them to its own bounds. One ``step``
repeats the action ``action_repeat`` env frames and sums the rewards; an episode is truncated after
``time_limit`` env frames (``EnvConfig``).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from gymnasium.spaces import Box

from collodreamer.spec import IMAGE_SIZE, EnvSpec


class Env(Protocol):
    """``reset`` starts an episode, ``step`` acts in it, Gymnasium's way; ``render`` films it; the
    state dicts carry the random state a resumed run goes on with."""

    observation_space: Box  # pixels (H, W, 3) uint8, or a state vector (N,) float32
    action_space: Box  # [-1, 1] per action dimension
    action_repeat: int  # env frames per step

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """The first observation of a new episode and an info dict; ``seed`` reseeds the task."""
        ...

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """(obs, reward summed over the repeated frames, terminated, truncated, info): terminated when
        the task itself ended the episode, truncated at a time limit."""
        ...

    def render(self, size: int) -> np.ndarray:
        """An RGB frame (uint8, ``[size, size, 3]``) of the current state."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def close(self) -> None: ...

    @property
    def spec(self) -> EnvSpec:
        """What an agent needs to build its networks (environments that subclass Env have it)."""
        return EnvSpec(tuple(self.observation_space.shape), int(self.action_space.shape[0]))


def observation_space(pixels: bool, state_size: int) -> Box:
    """:data:`IMAGE_SIZE` x :data:`IMAGE_SIZE` RGB images for ``pixels``, else ``state_size`` floats."""
    if pixels:
        return Box(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    return Box(-np.inf, np.inf, (state_size,), np.float32)


def unit_actions(dims: int) -> Box:
    """The action space agents act in: [-1, 1] per dimension."""
    return Box(-1.0, 1.0, (dims,), np.float32)


def to_bounds(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """An action in [-1, 1] (clipped there) rescaled to the task's ``[low, high]``, in float64."""
    action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
    return low + (action + 1.0) * 0.5 * (high - low)
