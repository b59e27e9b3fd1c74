"""ColloDreamer (the paper): LatCo's planner whose objective adds a learned value of the state after
the last knot (Eq. 9/10), optionally with the augmented latent objective of Eq. 11 in the world-model
loss. The value learns in one of four styles (``value.style``):

- ``inner``: Bellman targets from the current plan after every planner iteration (Algorithm 1);
- ``after``: from the executed segment's posterior states after each plan (Fig. 2);
- ``replay``: TD(lambda) targets of real rewards on the posterior sequences of every training batch;
- ``imagination``: Dreamer's critic on imagined rollouts of Dreamer's actor, whose rollout also
  initialises the plans when ``planner.init=policy``.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from collodreamer.agents.dreamer import ImaginedBehaviour
from collodreamer.agents.latco import LatCoAgent, PlannerState
from collodreamer.config import Config, PlannerConfig
from collodreamer.models import State, to_torch
from collodreamer.models.losses import value_targets
from collodreamer.models.value import Critic
from collodreamer.planning import Objective, Plan, PlanResult
from collodreamer.spec import EnvSpec
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
        style = config.value.style
        self.behaviour: ImaginedBehaviour | None = None
        if style == "imagination":
            self.behaviour = ImaginedBehaviour(config, self.world_model, spec.action_dim)
            self.critic = self.behaviour.critic
            self.policy = None  # Dreamer's actor warm-starts the plans, not a cloned policy
        else:
            self.critic = Critic(self.world_model.feature_dim, config.value, device, config.model.amp)
        # inner/after: the latest plans (or segments) besides the current one in each value batch
        self.recent: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=config.value.plan_batch - 1)
        self.iterations = 0  # planner iterations while training, for value.update_every
        self.model_updates = 0
        self.last_lambda = 1.0  # the planner's mean dynamics multiplier, for Eq. 11
        self.old_rssm = copy.deepcopy(self.world_model.rssm).requires_grad_(False)

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
        """V(z) counting the reward of z itself, as the planner's terminal term needs it. Dreamer's
        critic (the imagination style) predicts the rewards from the next state on, so its reward is
        added: ``r(z) + gamma V_dreamer(z)``."""
        value = self.critic.value(feature)
        if self.behaviour is None:
            return value
        return self.world_model.reward_of(feature) + self.config.value.gamma * value

    def warm_start_policy(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if self.behaviour is not None:
            return self.behaviour.actor.mode
        return super().warm_start_policy()

    def planner_config(self) -> PlannerConfig:
        latent = self.config.latent_objective
        if not latent.enabled:
            return self.config.planner
        eps = linear_schedule(
            latent.eps_dyn_start, latent.eps_dyn_end, self.model_updates, latent.schedule_updates
        )
        return replace(self.config.planner, eps_dyn=eps)

    def plan(self, feature: torch.Tensor, previous: PlanResult | None, training: bool) -> PlanResult:
        result = super().plan(feature, previous, training)
        self.last_lambda = result.diagnostics["lambda_mean"]
        if training and self.config.value.style == "inner" and self.plan_is_finite(result):
            self.recent.append((result.plan.features.detach(), result.plan.actions.detach()))
        return result

    def on_iteration(self, training: bool) -> Callable[[Plan], None] | None:
        if not training or self.config.value.style != "inner":
            return None

        def update(plan: Plan) -> None:
            # Algorithm 1: a value update on the current plan after every update_every-th iteration.
            self.iterations += 1
            if self.iterations % self.config.value.update_every == 0:
                self.update_value(plan.features, plan.actions)

        return update

    def segment_done(self, state: PlannerState) -> None:
        if self.config.value.style != "after":
            return
        # Style "after": the encoded real latents of the executed segment, bootstrapped after its last.
        features, actions = torch.cat(state.visited)[None], torch.cat(state.executed)[None]
        for _ in range(self.config.value.after_updates):
            self.update_value(features, actions)
        self.recent.append((features, actions))

    # --- value learning from plans and segments -------------------------------------------------
    def value_targets(self, features: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Bellman targets of Eq. 10 for knots ``[B, K, D]`` with actions ``[B, K, A]``:
        ``T_k = r(z_k) + gamma T_{k+1}``, ``T_{K-1} = r(z_{K-1}) + gamma V'(mu(z_{K-1}, a_{K-1}))``."""
        with torch.no_grad():
            rewards = self.world_model.reward_of(features)
            after = self.world_model.rssm.next_feature_mean(features[:, -1], actions[:, -1])
            bootstrap = self.critic.target(after)
            # The state after the last knot only bootstraps: its reward is never read, and with
            # lam = 1 only the last value enters.
            rewards = torch.cat([rewards, torch.zeros_like(bootstrap)[:, None]], 1)
            values = torch.cat([torch.zeros_like(rewards[:, :-1]), bootstrap[:, None]], 1)
            return value_targets(rewards, values, self.config.value.gamma, 1.0)[0]

    def update_value(self, features: torch.Tensor, actions: torch.Tensor) -> float:
        """One step on ``0.5 * (V(z_k) - T_k)^2`` over the knots of this plan and of up to
        ``plan_batch - 1`` recent ones (all of one length); V' follows by tau every period."""
        features, actions = features.detach(), actions.detach()
        if self.recent:
            features = torch.cat([features, *(f for f, _ in self.recent)])
            actions = torch.cat([actions, *(a for _, a in self.recent)])
        with timed("value"):
            targets = self.value_targets(features, actions)
            metrics = self.critic.update(features.flatten(0, 1), targets.flatten())
        self.log({**metrics, "value/target": targets[0].mean().item()})
        return metrics["value/loss"]

    # --- value learning from replay and imagination ---------------------------------------------
    def train_value_on_replay(self, batch: dict[str, torch.Tensor], post: State) -> dict[str, float]:
        """TD(lambda) targets of the real rewards along the replayed sequences, bootstrapped by V' at
        the posterior's mean features (the kind of feature the planner's knots are)."""
        with timed("value"):
            features = self.world_model.rssm.mean_feature(post).detach()
            with torch.no_grad():
                values = self.critic.target(features)
            targets, valid = value_targets(
                batch["reward"].float(),
                values,
                self.config.value.gamma,
                self.config.value.lam,
                batch["is_first"],
                batch["is_terminal"],
            )
            weights = valid.float() / valid.float().mean().clamp(min=1e-6)
            metrics = self.critic.update(features[:, :-1], targets, weights)
        return {**metrics, "value/target": targets[valid].mean().item() if valid.any() else 0.0}

    # --- world-model learning ------------------------------------------------------------------
    def train_step(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        data = to_torch(batch, self.device)
        latent = self.config.latent_objective
        post, metrics = self.world_model.train_step(data, self.latent_loss if latent.enabled else None)
        self.model_updates += 1
        if latent.enabled and self.model_updates % latent.target_period == 0:
            self.old_rssm.load_state_dict(self.world_model.rssm.state_dict())
        if self.config.value.style == "replay":
            metrics.update(self.train_value_on_replay(data, post))
        elif self.behaviour is not None:
            metrics.update(self.behaviour.train(post))
        return metrics

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
        learner = self.behaviour if self.behaviour is not None else self.critic
        return {
            **super().state_dict(),
            **learner.state_dict(),
            "old_rssm": self.old_rssm.state_dict(),
            "counters": {
                "iterations": self.iterations,
                "model_updates": self.model_updates,
                "last_lambda": self.last_lambda,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        learner = self.behaviour if self.behaviour is not None else self.critic
        learner.load_state_dict(state)
        self.old_rssm.load_state_dict(state["old_rssm"])
        counters = state["counters"]
        self.iterations, self.model_updates = counters["iterations"], counters["model_updates"]
        self.last_lambda = counters["last_lambda"]
