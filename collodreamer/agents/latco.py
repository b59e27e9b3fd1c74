"""LatCo (Rybkin et al. 2021): plan by latent collocation on the world model, execute the first
``replan_every`` actions while filtering the posterior with real observations, replan. The objective
is the predicted reward summed over the horizon (Eq. 8)."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from collodreamer.config import Config
from collodreamer.envs import EnvSpec
from collodreamer.models import State, WorldModel, to_torch
from collodreamer.models.networks import frozen
from collodreamer.planning import Objective, Plan, PlanResult, collocate, shifted_plan


@dataclass
class PlannerState:
    """An episode's memory: the filtered posterior, the last executed action, the current plan and
    how many of its actions were executed."""

    latent: State
    action: torch.Tensor
    plan: PlanResult
    step: int


class LatCoAgent:
    def __init__(self, config: Config, spec: EnvSpec, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.action_dim = spec.action_dim
        self.world_model = WorldModel(config.model, spec, device)
        self._metrics: dict[str, list[float]] = defaultdict(list)

    def objective(self) -> Objective:
        """Eq. 8: the plan's predicted rewards, undiscounted."""
        return Objective(self.world_model.rssm.next_feature_mean, self.world_model.reward_of, self.action_dim)

    def plan(self, feature: torch.Tensor, previous: PlanResult | None) -> PlanResult:
        """Collocate from ``feature [1, D]`` (warm-started from ``previous`` when configured)."""
        config = self.config.planner
        init = None
        if config.init == "shift" and previous is not None:
            repeated = Plan(
                *(
                    t.repeat_interleave(config.plans, 0)
                    for t in (
                        previous.plan.features,
                        previous.plan.actions,
                        previous.plan.lam,
                        previous.plan.nu,
                    )
                )
            )
            init = shifted_plan(
                repeated, config.replan_every, feature.repeat_interleave(config.plans, 0), config
            )
        start = time.perf_counter()
        with frozen(self.world_model):
            result = collocate(self.objective(), feature, config, init=init)
        self._metrics["plan/ms"].append(1000 * (time.perf_counter() - start))
        for key, value in result.diagnostics.items():
            self._metrics[f"plan/{key}"].append(value)
        return result

    @torch.no_grad()
    def act(
        self, obs: np.ndarray, state: PlannerState | None, training: bool
    ) -> tuple[np.ndarray, PlannerState]:
        latent = self.world_model.filter(
            obs, state.latent if state else None, state.action if state else None
        )
        if state is None or state.step >= self.config.planner.replan_every:
            result = self.plan(self.world_model.rssm.feature(latent), state.plan if state else None)
            state = PlannerState(latent, torch.zeros(1, self.action_dim, device=self.device), result, 0)
        action = state.plan.actions[:, state.step]
        if training and self.config.expl_noise > 0:
            action = (action + self.config.expl_noise * torch.randn_like(action)).clamp(-1.0, 1.0)
        return action[0].cpu().numpy(), replace(state, latent=latent, action=action, step=state.step + 1)

    def train_step(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        _, metrics = self.world_model.train_step(to_torch(batch, self.device))
        return metrics

    def metrics(self) -> dict[str, float]:
        averages = {key: float(np.mean(values)) for key, values in self._metrics.items()}
        self._metrics.clear()
        return averages

    def state_dict(self) -> dict[str, Any]:
        return {"world_model": self.world_model.training_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.world_model.load_training_state(state["world_model"])
