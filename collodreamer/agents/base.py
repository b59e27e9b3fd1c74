"""The interface every agent offers the training loop (see STYLE.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class EnvSpec:
    """What an agent needs to know of its environment to build its networks."""

    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    action_dim: int


class Agent(Protocol):
    """``act`` picks an action for one observation; ``train_step`` learns from a replay batch.

    ``state`` is the agent's own memory between steps of one episode (None at the first step);
    ``batch`` holds ``[batch, length, ...]`` arrays with the keys of :mod:`collodreamer.data`.
    """

    def act(self, obs: np.ndarray, state: Any, training: bool) -> tuple[np.ndarray, Any]: ...

    def train_step(self, batch: dict[str, np.ndarray]) -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
