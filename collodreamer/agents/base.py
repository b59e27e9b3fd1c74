"""The interface every agent offers the training loop, and the optional capabilities some offer (a
world model to predict with, a planner to trace): callers ask ``isinstance(agent, Planner)``, never
for an attribute. Also the exploration noise the acting agents share."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

if TYPE_CHECKING:
    from collodreamer.models import WorldModel
    from collodreamer.planning import Objective
    from collodreamer.schema import PlannerConfig

# (count, length) -> a replay batch of tensors and its posterior states, [count, length, ...] each
Sampler = Callable[[int, int], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]


class Agent(Protocol):
    """``act`` picks an action for one observation; ``train_step`` learns from a replay batch.

    ``state`` is the agent's own memory between steps of one episode (None at the first step);
    ``reward`` is the reward paid on arriving at ``obs`` (0 at the first step), from which the
    agents measure what their plans promised against what they earned; ``batch`` holds
    ``[batch, length, ...]`` arrays with the keys of :mod:`collodreamer.data`; ``device`` is where its
    networks compute (the cpu for an agent without any).
    """

    device: torch.device

    def act(
        self, obs: np.ndarray, state: Any, training: bool, reward: float = 0.0
    ) -> tuple[np.ndarray, Any]: ...

    def train_step(self, batch: dict[str, np.ndarray]) -> dict[str, float]: ...

    def metrics(self) -> dict[str, float]:
        """Averages of what was measured while acting (e.g. per-plan diagnostics) since the last call."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class ModelBased(Protocol):
    """An agent that acts through a learned world model (every agent but the random one)."""

    world_model: WorldModel


@runtime_checkable
class Planner(ModelBased, Protocol):
    """An agent that plans by collocation on its world model: its objective and planner settings."""

    def objective(self) -> Objective: ...

    def planner_config(self) -> PlannerConfig: ...


def explore(action: torch.Tensor, noise: float) -> torch.Tensor:
    """An executed action with Gaussian exploration noise of std ``noise``, kept in [-1, 1]."""
    if noise <= 0:
        return action
    return (action + noise * torch.randn_like(action)).clamp(-1.0, 1.0)
