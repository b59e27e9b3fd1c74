"""ColloDreamer (the paper): LatCo's planner whose objective adds a learned value of the state after
the last knot (Eq. 9/10), optionally with the augmented latent objective of Eq. 11 in the world-model
loss. How the value learns is its style (``value.style``, :mod:`collodreamer.agents.values`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from collodreamer.agents.base import Sampler
from collodreamer.agents.latco import LatCoAgent
from collodreamer.agents.promise import Segment
from collodreamer.agents.values import ImaginationValue, make_value_style
from collodreamer.models import State
from collodreamer.models.value import Critic
from collodreamer.models.world_model import ExtraLoss
from collodreamer.planning import Objective, Plan, PlanResult
from collodreamer.schema import Config, PlannerConfig
from collodreamer.spec import EnvSpec


def linear_schedule(start: float, end: float, step: int, steps: int) -> float:
    """``start`` at step 0, ``end`` from ``steps`` on, linear in between."""
    fraction = min(max(step / steps, 0.0), 1.0) if steps > 0 else 1.0
    return (1.0 - fraction) * start + fraction * end


def transition_log_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor) -> torch.Tensor:
    """``log m(t)`` of Eq. 11: the log-likelihood ratio of the two transitions into ``z_{t-1}`` and
    ``z_t`` under the current vs the old dynamics; inputs ``[B, T]``, output ``[B, T-1]`` (t = 1..T-1).
    Clamped to +-10 so one unlikely transition cannot overflow the exponential."""
    step = log_prob - old_log_prob
    return (step[:, 1:] + step[:, :-1]).clamp(-10.0, 10.0)


def latent_objective(ratio: torch.Tensor, advantage: torch.Tensor, multiplier: float) -> torch.Tensor:
    """Eq. 11: ``J_latent = (1 / lambda) m(t) A(t)``, averaged; the advantage is a constant (only the
    likelihood ratio ``m`` carries gradient into the dynamics, as in PPO)."""
    return (ratio * advantage.detach()).mean() / multiplier


class ColloDreamerAgent(LatCoAgent):
    def __init__(self, config: Config, spec: EnvSpec, device: torch.device) -> None:
        super().__init__(config, spec, device)
        self.value = make_value_style(config, self.world_model, self.log, self.planning_reward)
        self.model_updates = 0
        self.last_lambda = 1.0  # the planner's mean dynamics multiplier, for Eq. 11
        self.old_rssm = copy.deepcopy(self.world_model.rssm).requires_grad_(False)

    @property
    def critic(self) -> Critic:
        return self.value.critic

    # --- planning ------------------------------------------------------------------------------
    def build_objective(self) -> Objective:
        """Eq. 10: discounted predicted rewards plus the weighted, discounted value after the last knot."""
        return replace(
            super().build_objective(),
            gamma=self.config.value.gamma,
            value=self.value_of,
            value_weight=self.config.value.weight,
        )

    def value_of(self, feature: torch.Tensor) -> torch.Tensor:
        """V(z) counting the reward of z itself, as the planner's terminal term needs it."""
        return self.value.value_of(feature)

    def warm_start_policy(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return self.value.warm_start_policy() or super().warm_start_policy()

    def planner_config(self) -> PlannerConfig:
        latent = self.config.latent_objective
        if not latent.enabled:
            return self.config.planner
        eps = linear_schedule(
            latent.eps_dyn_start, latent.eps_dyn_end, self.model_updates, latent.schedule_updates
        )
        return replace(self.config.planner, eps_dyn=eps)

    def act(self, obs: np.ndarray, state: Any, training: bool, reward: float = 0.0) -> tuple[np.ndarray, Any]:
        """A plan's action (see :class:`LatCoAgent`), or, while training with
        ``planner.train_acting=actor``, the actor's as Dreamer acts."""
        if training and self.config.planner.train_acting == "actor":
            assert isinstance(self.value, ImaginationValue)
            return self.value.behaviour.act(obs, state, training, reward, self.log)
        return super().act(obs, state, training, reward)

    def plan(self, feature: torch.Tensor, previous: PlanResult | None, training: bool) -> PlanResult:
        result = super().plan(feature, previous, training)
        self.last_lambda = result.diagnostics["lambda_mean"]
        if training and self.plan_is_finite(result):
            self.value.on_plan(result)
        return result

    def on_iteration(self, training: bool) -> Callable[[Plan], None] | None:
        return self.value.on_iteration if training else None

    def promise_value(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return self.value_of

    def segment_done(self, segment: Segment) -> None:
        self.value.on_segment(torch.cat(segment.features)[None], torch.cat(segment.actions)[None])

    # --- learning ------------------------------------------------------------------------------
    def model_loss(self) -> ExtraLoss | None:
        return self.latent_loss if self.config.latent_objective.enabled else None

    def learn(self, batch: dict[str, torch.Tensor], post: State) -> dict[str, float]:
        latent = self.config.latent_objective
        self.model_updates += 1
        if latent.enabled and self.model_updates % latent.target_period == 0:
            self.old_rssm.load_state_dict(self.world_model.rssm.state_dict())
        return {**super().learn(batch, post), **self.value.on_batch(batch, post)}

    def learn_held_fixed(self, sample: Sampler, updates: int, plans: int) -> None:
        super().learn_held_fixed(sample, updates, plans)
        self.value.learn_held_fixed(sample, lambda feature: self.plan(feature, None, True), plans)

    def latent_loss(
        self, batch: dict[str, torch.Tensor], post: State, prior: State
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The world-model loss term of Eq. 11: minus the augmented latent objective, weighted by
        a weight that decays over training."""
        latent = self.config.latent_objective
        weight = linear_schedule(
            latent.weight_start, latent.weight_end, self.model_updates, latent.schedule_updates
        )
        j_latent = self.augmented_objective(batch, post, prior)
        metrics = {
            "latent/objective": j_latent.item(),
            "latent/weight": weight,
            "latent/eps_dyn": self.planner_config().eps_dyn,
            "latent/lambda": self.last_lambda,
        }
        return -weight * j_latent, metrics

    def augmented_objective(self, batch: dict[str, torch.Tensor], post: State, prior: State) -> torch.Tensor:
        """Eq. 11 on a replay batch: m(t) from the transitions into ``z_{t-1}`` and ``z_t`` under the
        current prior (from ``observe``) and the old dynamics, and the advantage
        ``A(t) = r(z_t) + V(mu(z_t, a_t)) - V(z_t)``."""
        rssm, old = self.world_model.rssm, self.old_rssm
        stoch = post["stoch"].detach()
        previous = {"deter": post["deter"][:, :-1].detach(), "stoch": stoch[:, :-1]}
        old_prior = old.img_step(previous, batch["action"][:, 1:], sample=False)
        log_prob = rssm.log_prob(prior, stoch)[:, 1:]  # transitions into z_1..z_{T-1}
        old_log_prob = old.log_prob(old_prior, stoch[:, 1:])
        ratio = transition_log_ratio(log_prob, old_log_prob).exp()  # m(t) for t = 2..T-1
        feature = rssm.feature(post).detach()
        with torch.no_grad():
            following = rssm.next_feature_mean(feature[:, 2:-1], batch["action"][:, 3:])  # mu(z_t, a_t)
            advantage = (
                self.world_model.reward_of(feature[:, 2:-1])
                + self.value_of(following)
                - self.value_of(feature[:, 2:-1])
            )
        # Transitions across an episode start are resets, not dynamics: leave them out.
        first = batch["is_first"]
        valid = ~(first[:, 1:-2] | first[:, 2:-1] | first[:, 3:])
        return latent_objective(ratio[:, :-1] * valid, advantage, self.last_lambda)

    # --- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            **self.value.state_dict(),
            "old_rssm": self.old_rssm.state_dict(),
            "counters": {"model_updates": self.model_updates, "last_lambda": self.last_lambda},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.value.load_state_dict(state)
        self.old_rssm.load_state_dict(state["old_rssm"])
        counters = state["counters"]
        self.model_updates, self.last_lambda = counters["model_updates"], counters["last_lambda"]
