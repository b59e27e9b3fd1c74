"""Reference policies: uniform random actions (the prefill policy, and the agent that exercises the
loop) and zero actions."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from collodreamer.spec import EnvSpec


class RandomAgent:
    def __init__(self, spec: EnvSpec, seed: int) -> None:
        self.action_dim = spec.action_dim
        self.device = torch.device("cpu")
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, state: Any, training: bool, reward: float = 0.0) -> tuple[np.ndarray, Any]:
        return self.rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32), state

    def train_step(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        return {}

    def metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


class ZeroAgent:
    """The zero action at every step: the body left to the task's own dynamics (a reference level)."""

    def __init__(self, spec: EnvSpec) -> None:
        self.action = np.zeros(spec.action_dim, np.float32)

    def act(self, obs: np.ndarray, state: Any, training: bool, reward: float = 0.0) -> tuple[np.ndarray, Any]:
        return self.action, state
