"""ColloDreamer (the paper): LatCo's planner whose objective adds a learned value of the state after
the last knot (Eq. 9/10), the value trained by Bellman targets from the plans (Algorithm 1, style
``inner``) or from the executed segments (style ``after``), optionally with the augmented latent
objective of Eq. 11 in the world-model loss."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from collodreamer.agents.latco import LatCoAgent, PlannerState
from collodreamer.config import Config, PlannerConfig
from collodreamer.envs import EnvSpec
from collodreamer.models import State, to_torch
from collodreamer.models.losses import bellman_targets, update_target
from collodreamer.models.networks import optimizer_step
from collodreamer.models.value import ValueNetwork
from collodreamer.planning import Objective, Plan, PlanResult
from collodreamer.timing import timed


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
        feature_dim = self.world_model.feature_dim
        self.value = ValueNetwork(feature_dim, config.value).to(device)
        self.target_value = copy.deepcopy(self.value).requires_grad_(False).eval()
        self.value_optimizer = torch.optim.Adam(self.value.parameters(), lr=config.value.lr, eps=1e-5)
        self.value_updates = 0
        self.model_updates = 0
        self.last_lambda = 1.0  # the planner's mean dynamics multiplier, for Eq. 11
        self.old_rssm = copy.deepcopy(self.world_model.rssm).requires_grad_(False)

    # --- planning ------------------------------------------------------------------------------
    def build_objective(self) -> Objective:
        """Eq. 10: discounted predicted rewards plus the discounted value after the last knot."""
        return replace(super().build_objective(), gamma=self.config.value.gamma, value=self.value)

    def planner_config(self) -> PlannerConfig:
        latent = self.config.latent_objective
        if not latent.enabled:
            return self.config.planner
        eps = linear_schedule(
            latent.eps_dyn_start, latent.eps_dyn_end, self.model_updates, latent.schedule_updates
        )
        return replace(self.config.planner, eps_dyn=eps)

    def plan(self, feature: torch.Tensor, previous: PlanResult | None, training: bool) -> PlanResult:
        self.value.eval()  # batch norm uses its running statistics and dropout is off while planning
        result = super().plan(feature, previous, training)
        self.last_lambda = result.diagnostics["lambda_mean"]
        return result

    def on_iteration(self, training: bool) -> Callable[[Plan], None] | None:
        if not training or self.config.value.style != "inner":
            return None
        # Algorithm 1: one value update on the current plan after every primal/dual step.
        return lambda plan: self.update_value(plan.features, plan.actions)

    def segment_done(self, state: PlannerState) -> None:
        if self.config.value.style != "after":
            return
        # Style "after": the encoded real latents of the executed segment, bootstrapped after its last.
        features, actions = torch.cat(state.visited)[None], torch.cat(state.executed)[None]
        for _ in range(self.config.value.after_updates):
            self.update_value(features, actions)

    # --- value learning ------------------------------------------------------------------------
    def value_targets(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Bellman targets of Eq. 10 for knots ``[B, K, D]`` with actions ``[B, K, A]``."""
        with torch.no_grad():
            rewards = self.world_model.reward_of(features)
            bootstrap = self.target_value(
                self.world_model.rssm.next_feature_mean(features[:, -1], actions[:, -1])
            )
            return bellman_targets(rewards, bootstrap, self.config.value.gamma)

    def update_value(self, features: torch.Tensor, actions: torch.Tensor) -> float:
        """One step on ``0.5 * (V(z_k) - T_k)^2`` over all knots; V' follows by tau every period."""
        config = self.config.value
        features, actions = features.detach(), actions.detach()
        with timed("value"), torch.enable_grad():
            targets = self.value_targets(features, actions)
            self.value.train()
            loss = 0.5 * (self.value(features) - targets).pow(2).mean()
            norm = optimizer_step(self.value_optimizer, loss, self.value, config.grad_clip)
            self.value.eval()
        self.value_updates += 1
        if self.value_updates % config.target_period == 0:
            update_target(self.target_value, self.value, config.target_tau)
        self.log({"value/loss": loss.item(), "value/grad_norm": norm, "value/target": targets.mean().item()})
        return loss.item()

    # --- world-model learning ------------------------------------------------------------------
    def train_step(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        latent = self.config.latent_objective
        if not latent.enabled:
            self.model_updates += 1
            return super().train_step(batch)
        data = to_torch(batch, self.device)
        model = self.world_model
        weight = linear_schedule(
            latent.weight_start, latent.weight_end, self.model_updates, latent.schedule_updates
        )
        with timed("model"):
            model.update_normaliser(data)
            loss, post, prior, metrics = model.loss(data)
            j_latent = self.augmented_objective(data, post, prior)
            metrics["model/grad_norm"] = optimizer_step(
                model.optimizer, loss - weight * j_latent, model, model.config.grad_clip
            )
        self.model_updates += 1
        if self.model_updates % latent.target_period == 0:
            self.old_rssm.load_state_dict(model.rssm.state_dict())
        metrics.update(
            {
                "latent/objective": j_latent.item(),
                "latent/weight": weight,
                "latent/eps_dyn": self.planner_config().eps_dyn,
                "latent/lambda": self.last_lambda,
            }
        )
        return metrics

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
            self.value.eval()
            following = rssm.next_feature_mean(feature[:, 2:-1], batch["action"][:, 3:])  # mu(z_t, a_t)
            advantage = (
                self.world_model.reward_of(feature[:, 2:-1])
                + self.value(following)
                - self.value(feature[:, 2:-1])
            )
        # Transitions across an episode start are resets, not dynamics: leave them out.
        first = batch["is_first"]
        valid = ~(first[:, 1:-2] | first[:, 2:-1] | first[:, 3:])
        return latent_objective(ratio[:, :-1] * valid, advantage, self.last_lambda)

    # --- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "value": self.value.state_dict(),
            "target_value": self.target_value.state_dict(),
            "value_optimizer": self.value_optimizer.state_dict(),
            "old_rssm": self.old_rssm.state_dict(),
            "counters": {
                "value_updates": self.value_updates,
                "model_updates": self.model_updates,
                "last_lambda": self.last_lambda,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.value.load_state_dict(state["value"])
        self.target_value.load_state_dict(state["target_value"])
        self.value_optimizer.load_state_dict(state["value_optimizer"])
        self.old_rssm.load_state_dict(state["old_rssm"])
        counters = state["counters"]
        self.value_updates, self.model_updates = counters["value_updates"], counters["model_updates"]
        self.last_lambda = counters["last_lambda"]
