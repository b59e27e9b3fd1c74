"""LatCo (Rybkin et al. 2021): plan by latent collocation on the world model, execute the first
``replan_every`` actions while filtering the posterior with real observations, replan. The objective
is the predicted reward summed over the horizon (Eq. 8).

Beyond the paper, ``planner.init=policy`` warm-starts each plan from the rollout of an amortised
policy that is trained by behaviour cloning on the plans, and ``planner.feedback`` closes the loop
around a plan with that policy (or ColloDreamer's actor)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from collodreamer.agents.base import Sampler, explore
from collodreamer.agents.promise import (
    Segment,
    by_kind,
    calibration_bias,
    executed_kind,
    promise_metrics,
    update_gap,
)
from collodreamer.averages import Averages
from collodreamer.config import cloned_policy
from collodreamer.health import nonfinite
from collodreamer.models import MLP, State, WorldModel, to_torch
from collodreamer.models.ensemble import Ensemble, excess_disagreement
from collodreamer.models.optim import adam, load_optimizer, optimizer_step
from collodreamer.models.tensors import frozen
from collodreamer.models.world_model import ExtraLoss
from collodreamer.planning import (
    Objective,
    Plan,
    PlanResult,
    collocate,
    initial_multipliers,
    policy_rollout,
    reward_weights,
    rollout_plan,
    shifted_plan,
)
from collodreamer.schema import Config, PlannerConfig
from collodreamer.spec import EnvSpec
from collodreamer.timing import timed


def policy_feedback(
    planned: torch.Tensor,
    planned_feature: torch.Tensor,
    feature: torch.Tensor,
    policy: Callable[[torch.Tensor], torch.Tensor],
    gain: float,
) -> torch.Tensor:
    """The executed action ``clip(a_plan + k (pi(z) - pi(z_plan)), -1, 1)``: the plan's action corrected
    by the policy's response to where the real state ``z`` is against the plan's knot ``z_plan``
    (``planner.feedback``, beyond the paper: a time-varying feedback law around the open-loop plan)."""
    return (planned + gain * (policy(feature) - policy(planned_feature))).clamp(-1.0, 1.0)


@dataclass
class PlannerState:
    """An episode's memory: the filtered posterior, the last executed action, the current plan, how
    many of its actions were executed, and the segment they make (what was executed and paid)."""

    latent: State
    action: torch.Tensor
    plan: PlanResult
    segment: Segment
    step: int = 0


class LatCoAgent:
    def __init__(self, config: Config, spec: EnvSpec, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.action_dim = spec.action_dim
        self.world_model = WorldModel(config.model, spec, device)
        feature_dim = self.world_model.feature_dim
        self.policy: MLP | None = None
        self.last_multipliers: tuple[float, float] | None = None  # mean lambda, nu of the last plan
        self._objective: Objective | None = None
        if cloned_policy(config):
            self.policy = MLP(feature_dim, spec.action_dim, config.policy.units, config.policy.layers).to(
                device
            )
            self.policy_optimizer = adam(self.policy.parameters(), config.policy.lr)
        pessimism = config.pessimism
        self.reward_heads: Ensemble | None = None
        if pessimism.reward_heads:
            self.reward_heads = Ensemble(
                feature_dim, pessimism.reward_heads, pessimism.units, pessimism.layers
            )
            self.reward_heads.to(device)
            self.reward_heads_optimizer = adam(self.reward_heads.parameters(), pessimism.lr)
        self.state_heads: Ensemble | None = None
        self.state_level = 0.0  # the state heads' disagreement on replayed states (0: not yet known)
        if pessimism.state_heads:
            embed_dim = self.world_model.embed_dim
            self.state_heads = Ensemble(
                feature_dim, pessimism.state_heads, pessimism.units, pessimism.layers, embed_dim
            )
            self.state_heads.to(device)
            self.state_heads_optimizer = adam(self.state_heads.parameters(), pessimism.lr)
        self.gaps: dict[str, float] = {}  # running rollout gap of each kind of plan executed
        self._averages = Averages()

    def log(self, metrics: dict[str, float]) -> None:
        """Collect one value of each metric, averaged by the next :meth:`metrics`."""
        self._averages.add(metrics)

    # --- planning ------------------------------------------------------------------------------
    def objective(self) -> Objective:
        """The planner's objective, built once (a compiled planner keeps it as its cache key)."""
        if self._objective is None:
            self._objective = self.build_objective()
        return self._objective

    def build_objective(self) -> Objective:
        """Eq. 8: the plan's predicted rewards, undiscounted."""
        rssm = self.world_model.rssm
        return Objective(
            rssm.next_feature_mean,
            self.planning_reward,
            self.action_dim,
            dynamics_jacobian=rssm.next_feature_mean_jacobian,
            sample_dynamics=rssm.next_feature_sample,
            action_residual=self.config.planner.action_residual,
            trust_weight=self.config.planner.trust_weight,
        )

    def planning_reward(self, feature: torch.Tensor) -> torch.Tensor:
        """The reward plans are scored by: the world model's ``r(z)``, less ``pessimism.reward_kappa``
        times the std of the reward heads and the state heads' excess disagreement where there are
        heads."""
        reward, pessimism = self.world_model.reward_of(feature), self.config.pessimism
        if self.reward_heads is not None:
            reward = reward - pessimism.reward_kappa * self.reward_heads(feature).std(0, unbiased=False)
        if self.state_heads is not None:
            predictions = self.state_heads(feature)
            reward = reward - excess_disagreement(predictions, self.state_level, pessimism.state_kappa)
        return reward

    def initial_plan(self, feature: torch.Tensor, previous: PlanResult | None) -> Plan | None:
        """The knots to start from: None (random, LatCo's), the shifted previous plan, or the policy's
        rollout under the model; their actions are the anchor of the trust region."""
        config = self.config.planner
        starts = feature.repeat_interleave(config.plans, 0)
        init = None
        if config.init == "shift" and previous is not None:
            repeated = Plan(*(t.repeat_interleave(config.plans, 0) for t in previous.plan.knots()))
            init = shifted_plan(repeated, config.replan_every, starts, config)
        elif config.init == "policy" and self.warm_start_policy() is not None:
            init = self.policy_plan(starts)
            # The rollout is feasible already: start from the multipliers the last plan ended with
            # rather than relaxing the constraints again.
            if self.last_multipliers is not None:
                init.lam.fill_(self.last_multipliers[0])
                init.nu.fill_(self.last_multipliers[1])
        if init is not None and config.trust_weight > 0:
            init.anchor = init.actions.clone()
        return init

    def policy_plan(self, starts: torch.Tensor) -> Plan:
        """The warm-start policy's rollout under the model from each start ``[B, D]``, as a plan."""
        policy, config = self.warm_start_policy(), self.config.planner
        assert policy is not None
        dynamics = self.world_model.rssm.next_feature_mean
        features, actions = policy_rollout(dynamics, policy, starts, config.horizon)
        lam, nu = initial_multipliers(starts.shape[0], config.horizon, config, starts)
        return Plan(features, actions, lam, nu)

    def candidate_plans(self, feature: torch.Tensor, previous: PlanResult | None) -> Plan | None:
        """The ``planner.candidates`` from ``feature [1, D]`` that compete with the optimised plans."""
        config, plans = self.config.planner, []
        if "policy" in config.candidates and self.warm_start_policy() is not None:
            plans.append(self.policy_plan(feature))
        if "previous" in config.candidates and previous is not None:
            shifted = shifted_plan(previous.plan, config.replan_every, feature, config)
            plans.append(rollout_plan(self.objective(), feature, shifted.actions, config))
        if not plans:
            return None
        return Plan(*(torch.cat(parts) for parts in zip(*map(Plan.knots, plans), strict=True)))

    def warm_start_policy(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The policy (feature -> action in [-1, 1]) whose rollout initialises plans, if any: here the
        amortised policy cloned from the plans."""
        if self.policy is None:
            return None
        policy = self.policy
        return lambda feature: torch.tanh(policy(feature))

    def plan(self, feature: torch.Tensor, previous: PlanResult | None, training: bool) -> PlanResult:
        """Collocate from ``feature [1, D]``; log the plan's diagnostics and its cost."""
        start = time.perf_counter()
        with frozen(self.world_model), timed("plan"):
            result = collocate(
                self.objective(),
                feature,
                self.planner_config(),
                init=self.initial_plan(feature, previous),
                on_iteration=self.on_iteration(training),
                candidates=self.candidate_plans(feature, previous),
                bias=self.candidate_bias(),
            )
        self.log({"plan/ms": 1000 * (time.perf_counter() - start)})
        # A start whose plans all went non-finite acts with zeros (collocate replaces them); a run of
        # such plans in a row stops the run (run.max_nonfinite).
        nonfinite.count("planner", self.plan_is_finite(result))
        self.last_multipliers = (result.diagnostics["lambda_mean"], result.diagnostics["nu_mean"])
        self.log({f"plan/{key}": value for key, value in result.diagnostics.items()})
        if training and self.policy is not None:
            self.train_policy(result.plan)
        return result

    def candidate_bias(self) -> float:
        """What the optimised plans' scores lose against the candidates' (``planner.calibration_rate``):
        their kind's excess running rollout gap, summed over the horizon as the score sums rewards."""
        if not self.config.planner.calibration_rate:
            return 0.0
        objective = self.objective()
        horizon, float64 = self.config.planner.horizon, torch.empty(0, dtype=torch.float64)
        bias = calibration_bias(self.gaps, reward_weights(horizon, objective.gamma, float64).sum().item())
        self.log({"plan/calibration_bias": bias})
        return bias

    def plan_is_finite(self, result: PlanResult) -> bool:
        """Whether the plan chosen for the one start state of ``act`` is finite (at least one of its
        ``planner.plans`` parallel plans was)."""
        return result.diagnostics["nonfinite_plans"] < self.config.planner.plans

    def planner_config(self) -> PlannerConfig:
        return self.config.planner

    def on_iteration(self, training: bool) -> Callable[[Plan], None] | None:
        """What to run after every planner iteration (ColloDreamer trains its value there)."""
        return None

    def train_policy(self, plan: Plan) -> None:
        """Behaviour cloning: the amortised policy learns the planner's (clipped) actions at each knot."""
        assert self.policy is not None
        features, targets = plan.features[:, :-1].detach(), plan.actions[:, :-1].clamp(-1, 1).detach()
        for _ in range(self.config.policy.updates):
            with torch.enable_grad():
                loss = F.mse_loss(torch.tanh(self.policy(features)), targets)
                optimizer_step(
                    self.policy_optimizer, loss, self.policy, self.config.policy.grad_clip, "policy"
                )
        self.log({"policy/loss": loss.item()})

    # --- acting --------------------------------------------------------------------------------
    @torch.no_grad()
    def act(
        self, obs: np.ndarray, state: PlannerState | None, training: bool, reward: float = 0.0
    ) -> tuple[np.ndarray, PlannerState]:
        latent = self.world_model.filter(
            obs, state.latent if state else None, state.action if state else None
        )
        feature = self.world_model.rssm.feature(latent)
        if state is not None:
            state.segment.paid.append(reward)  # for the action executed last
        if state is None or state.step >= self.config.planner.replan_every:
            if state is not None:
                promise = promise_metrics(self.world_model, state.segment, feature, self.promise_value())
                kind, rate = executed_kind(state.plan.diagnostics), self.config.planner.calibration_rate
                self.log({**promise, **by_kind(promise, kind)})
                if rate and kind is not None:
                    update_gap(self.gaps, kind, promise["plan/rollout_gap"], rate)
                if training:
                    self.segment_done(state.segment)
            result = self.plan(feature, state.plan if state else None, training)
            zeros = torch.zeros(1, self.action_dim, device=self.device)
            state = PlannerState(latent, zeros, result, Segment(result.plan.features))
        action = state.plan.actions[:, state.step]
        policy = self.warm_start_policy()
        if self.config.planner.feedback and policy is not None:
            knot = state.plan.plan.features[:, state.step]
            action = policy_feedback(action, knot, feature, policy, self.config.planner.feedback)
        if training:
            action = explore(action, self.config.expl_noise)
        state.latent, state.action, state.step = latent, action, state.step + 1
        state.segment.executed(feature, action)
        return action[0].cpu().numpy(), state

    def promise_value(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The value whose promise is measured beside the rewards' (none for LatCo)."""
        return None

    def segment_done(self, segment: Segment) -> None:
        """Called with the executed segment of a plan before the next plan (training only)."""

    # --- learning ------------------------------------------------------------------------------
    def train_step(self, batch: dict[str, np.ndarray]) -> dict[str, float]:
        data = to_torch(batch, self.device)
        post, metrics = self.world_model.train_step(data, self.model_loss())
        return {**metrics, **self.learn(data, post)}

    def model_loss(self) -> ExtraLoss | None:
        """A term added to the world model's loss (none for LatCo)."""
        return None

    def learn(self, batch: dict[str, torch.Tensor], post: State) -> dict[str, float]:
        """What learns from a training batch besides the world model, given its posterior states:
        the pessimism heads."""
        return self.learn_pessimism(batch, post)

    def learn_pessimism(self, batch: dict[str, torch.Tensor], post: State) -> dict[str, float]:
        """One step of the reward heads (on the replayed rewards) and the state heads (on the
        observations' embeddings, ``batch["embed"]`` where given), at the posterior's mean features;
        the state heads' disagreement there folds into its level."""
        metrics: dict[str, float] = {}
        features = self.world_model.rssm.mean_feature(post).detach()
        grad_clip = self.config.model.grad_clip
        if self.reward_heads is not None:
            with torch.enable_grad():
                loss = 0.5 * (self.reward_heads(features) - batch["reward"].float()).pow(2).mean()
                heads, optimizer = self.reward_heads, self.reward_heads_optimizer
                optimizer_step(optimizer, loss, heads, grad_clip, "reward_heads")
            metrics["pessimism/reward_loss"] = loss.item()
        if self.state_heads is not None:
            with torch.no_grad():
                target = batch["embed"] if "embed" in batch else self.world_model.encode(batch["obs"])
            with torch.enable_grad():
                predictions = self.state_heads(features)
                loss = 0.5 * (predictions - target).pow(2).mean()
                optimizer_step(self.state_heads_optimizer, loss, self.state_heads, grad_clip, "state_heads")
            level = predictions.detach().std(0, unbiased=False).mean().item()
            self.state_level = level if self.state_level == 0 else 0.99 * self.state_level + 0.01 * level
            metrics["pessimism/state_loss"] = loss.item()
            metrics["pessimism/state_level"] = self.state_level
        return metrics

    def learn_held_fixed(self, sample: Sampler, updates: int, plans: int) -> None:
        """Learn what this agent learns besides the world model on a held-fixed model's replay
        (``sample(count, length)``: a batch and its posterior states), as much as a run would:
        ``updates`` training batches, ``plans`` plans where learning happens while planning."""
        replay = self.config.replay
        for _ in range(updates):
            self.learn(*sample(replay.batch_size, replay.batch_length))

    def metrics(self) -> dict[str, float]:
        return self._averages.take()

    def state_dict(self) -> dict[str, Any]:
        state = {"world_model": self.world_model.training_state()}
        if self.policy is not None:
            state["policy"] = self.policy.state_dict()
            state["policy_optimizer"] = self.policy_optimizer.state_dict()
        if self.reward_heads is not None:
            state["reward_heads"] = self.reward_heads.state_dict()
            state["reward_heads_optimizer"] = self.reward_heads_optimizer.state_dict()
        if self.state_heads is not None:
            state["state_heads"] = self.state_heads.state_dict()
            state["state_heads_optimizer"] = self.state_heads_optimizer.state_dict()
            state["state_level"] = self.state_level
        if self.config.planner.calibration_rate:
            state["gaps"] = dict(self.gaps)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.world_model.load_training_state(state["world_model"])
        if self.policy is not None:
            self.policy.load_state_dict(state["policy"])
            load_optimizer(self.policy_optimizer, state["policy_optimizer"], self.config.policy.lr)
        if self.reward_heads is not None:
            self.reward_heads.load_state_dict(state["reward_heads"])
            load_optimizer(
                self.reward_heads_optimizer, state["reward_heads_optimizer"], self.config.pessimism.lr
            )
        if self.state_heads is not None:
            self.state_heads.load_state_dict(state["state_heads"])
            lr = self.config.pessimism.lr
            load_optimizer(self.state_heads_optimizer, state["state_heads_optimizer"], lr)
            self.state_level = state["state_level"]
        if self.config.planner.calibration_rate:
            self.gaps = dict(state.get("gaps", {}))  # none in another config's checkpoint
