"""The planner: initialise the knots, alternate primal and dual steps, keep the best plan (Eq. 6-7)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import torch

from collodreamer.planning.adam import AdamPrimal
from collodreamer.planning.gauss_newton import gauss_newton_step
from collodreamer.planning.problem import (
    DualStep,
    Objective,
    Plan,
    PlanResult,
    planned_return,
    rollout_features,
    rollout_return,
    sampled_return,
    violations,
)
from collodreamer.schema import PlannerConfig

log = logging.getLogger("collodreamer")
Tensor = torch.Tensor


def random_plan(start: Tensor, horizon: int, action_dim: int, config: PlannerConfig) -> Plan:
    """LatCo's initialisation: every knot N(0, 1) except ``z_0 = start``."""
    B, D = start.shape
    features = torch.randn(B, horizon + 1, D, dtype=start.dtype, device=start.device)
    features[:, 0] = start
    actions = torch.randn(B, horizon + 1, action_dim, dtype=start.dtype, device=start.device)
    return Plan(features, actions, *initial_multipliers(B, horizon, config, start))


def initial_multipliers(
    batch: int, horizon: int, config: PlannerConfig, like: Tensor
) -> tuple[Tensor, Tensor]:
    lam = torch.full((batch, horizon), config.init_lambda, dtype=like.dtype, device=like.device)
    nu = torch.full((batch, horizon + 1), config.init_nu, dtype=like.dtype, device=like.device)
    return lam, nu


def shifted_plan(previous: Plan, steps: int, start: Tensor, config: PlannerConfig) -> Plan:
    """Warm start: the previous plan advanced by the ``steps`` executed, a random tail, ``z_0 = start``
    and fresh multipliers (so the relax-then-tighten schedule runs again)."""
    fresh = random_plan(start, previous.horizon, previous.actions.shape[-1], config)
    keep = previous.horizon + 1 - steps
    features, actions = fresh.features.clone(), fresh.actions.clone()
    if keep > 0:
        features[:, 1:keep] = previous.features[:, steps + 1 :]
        actions[:, :keep] = previous.actions[:, steps:]
    features[:, 0] = start
    return replace(fresh, features=features, actions=actions)


def rollout_plan(objective: Objective, start: Tensor, actions: Tensor, config: PlannerConfig) -> Plan:
    """A plan that is feasible by construction: ``actions [B, H+1, A]`` and the knots their rollout
    from ``start [B, D]`` reaches under the dynamics, with fresh multipliers."""
    horizon = actions.shape[1] - 1
    features = torch.cat([start[:, None], rollout_features(objective.dynamics, start, actions[:, :-1])], 1)
    return Plan(features, actions, *initial_multipliers(start.shape[0], horizon, config, start))


def collocate(
    objective: Objective,
    start: Tensor,
    config: PlannerConfig,
    init: Plan | None = None,
    on_iteration: Callable[[Plan], None] | None = None,
    candidates: Plan | None = None,
    bias: float = 0.0,
) -> PlanResult:
    """Plan from each start feature ``[S, D]``: ``config.plans`` plans per start are optimised in
    parallel by ``config.iterations`` primal/dual steps; per start, the plan whose clipped actions
    score the best imagined return is kept, the ``candidates`` (``[S * C, ...]``, C per start, e.g.
    an actor's rollout) competing with them, the optimised plans' scores less ``bias``. ``init``
    (``[S * plans, ...]``) replaces the random initialisation; ``on_iteration`` sees the plans after
    every dual step."""
    starts = start.repeat_interleave(config.plans, 0)
    plan = init if init is not None else random_plan(starts, config.horizon, objective.action_dim, config)
    adam = AdamPrimal(plan, config.adam_lr, config.compile) if config.primal == "adam" else None
    dual = DualStep.of(config, start)
    previous_return, iterations = None, 0
    with torch.no_grad():
        for iterations in range(1, config.iterations + 1):
            # Each step first finds the violations of the previous step's result and applies that
            # step's dual update with them: the dynamics are evaluated once per iteration.
            pending = dual if iterations > 1 else None
            if adam is not None:
                plan, dynamics, actions = adam.step(objective, plan, pending)
            else:
                plan, dynamics, actions = gauss_newton_step(
                    objective, plan, config.damping, config.line_search, pending
                )
            if on_iteration is not None:
                on_iteration(plan)
            if config.tolerance > 0 and iterations > 1:  # violations of the plan before this step
                planned = planned_return(objective, plan)
                feasible = bool((dynamics <= config.eps_dyn).all() and (actions <= config.eps_act).all())
                change = (planned - previous_return).abs() if previous_return is not None else None
                if (
                    feasible
                    and change is not None
                    and (change <= config.tolerance * planned.abs().clamp(min=1.0)).all()
                ):
                    break
                previous_return = planned
        plan = dual(plan, *violations(objective, plan))
        plans = config.plans
        if candidates is not None:
            plan = with_candidates(plan, candidates, start.shape[0])
            plans += candidates.features.shape[0] // start.shape[0]
        return select_plans(
            objective,
            plan,
            start.repeat_interleave(plans, 0),
            plans,
            iterations,
            config.plans,
            config.candidate_margin,
            config.score_samples,
            bias,
        )


def with_candidates(plan: Plan, candidates: Plan, count: int) -> Plan:
    """The optimised plans ``[S * P, ...]`` and the candidates ``[S * C, ...]`` as one batch grouped by
    start, ``[S * (P + C), ...]``, the candidates last in each group."""

    def join(ours: Tensor, theirs: Tensor) -> Tensor:
        grouped = ours.reshape(count, -1, *ours.shape[1:]), theirs.reshape(count, -1, *theirs.shape[1:])
        return torch.cat(grouped, 1).flatten(0, 1)

    return Plan(*(join(ours, theirs) for ours, theirs in zip(plan.knots(), candidates.knots(), strict=True)))


def select_plans(
    objective: Objective,
    plan: Plan,
    starts: Tensor,
    plans: int,
    iterations: int,
    optimised: int,
    margin: float = 0.0,
    samples: int = 0,
    bias: float = 0.0,
) -> PlanResult:
    """Per start state, the plan of its ``plans`` whose clipped actions score the best imagined
    return; non-finite plans never win, their actions are zeros. The first ``optimised`` of each
    start's plans were optimised, the rest are candidates (``candidate_share``: how often one of them
    won); an optimised plan, its return less ``bias``, wins only where that beats the best candidate's
    ``R_c`` by more than ``margin * |R_c|``. With ``samples`` > 0 the returns are means over that many
    rollouts of the sampled dynamics (:func:`sampled_return`) instead of one under mu. Diagnostics of
    the chosen plans."""
    count = starts.shape[0] // plans
    finite = torch.isfinite(plan.features).flatten(1).all(1) & torch.isfinite(plan.actions).flatten(1).all(1)
    bad = int((~finite).sum())
    if bad:
        log.warning(
            "collocation: %d of %d plans went non-finite; their actions are replaced by zeros",
            bad,
            finite.numel(),
        )
        keep = finite[:, None, None]
        plan = replace(
            plan, features=torch.where(keep, plan.features, 0.0), actions=torch.where(keep, plan.actions, 0.0)
        )
    clipped = plan.actions.clamp(-1.0, 1.0)
    if samples > 0:
        scores = sampled_return(objective, starts, clipped, samples).reshape(count, plans)
    else:
        scores = rollout_return(objective, starts, clipped).reshape(count, plans)
    scores = torch.where(finite.reshape(count, plans), scores, -torch.inf)
    best = scores.argmax(1)
    if optimised < plans and (margin > 0 or bias != 0):
        ours, theirs = scores[:, :optimised] - bias, scores[:, optimised:]
        candidate = theirs.max(1).values
        beats = ours.max(1).values > candidate + margin * candidate.abs()
        best = torch.where(beats, ours.argmax(1), optimised + theirs.argmax(1))
    index = torch.arange(count, device=starts.device) * plans + best
    chosen = Plan(*(t[index] for t in plan.knots()))
    dynamics, actions = violations(objective, chosen)
    diagnostics = {
        "dynamics_violation": dynamics.mean().item(),
        "action_violation": actions.mean().item(),
        "lambda_mean": chosen.lam.mean().item(),
        "nu_mean": chosen.nu.mean().item(),
        "planned_return": planned_return(objective, chosen).mean().item(),
        "rollout_return": scores.gather(1, best[:, None]).mean().item(),
        "iterations": float(iterations),
        "nonfinite_plans": float(bad),
    }
    if optimised < plans:
        diagnostics["candidate_share"] = (best >= optimised).float().mean().item()
    return PlanResult(chosen, chosen.actions.clamp(-1.0, 1.0), diagnostics)
