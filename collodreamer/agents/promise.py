"""What a plan promised against what the environment paid, per executed segment.

A segment is the stretch of a plan an agent executes before it plans again (``planner.replan_every``
agent steps; Dreamer's actor is read the same way, its imagined rollout standing for the plan). When
the next segment starts, the one that ended is scored, per agent step:

- ``promised_reward``: the world model's reward at the knots the plan expected its executed actions
  to reach, ``r(z_1..z_n)`` of the plan;
- ``rollout_reward``: the same model's reward along a rollout of the actions actually executed
  (exploration noise included) from the segment's start, under the mean dynamics ``mu``;
- ``paid_reward``: the rewards the environment paid for those steps;
- ``promise_gap = promised - paid`` and ``rollout_gap = rollout - paid``: the reward part of the gap.

With a value (ColloDreamer, Dreamer), its part: ``V`` at the plan's knot ``z_n`` against ``V`` at the
rollout's last state and at the real state reached (the filtered posterior after the segment),
``value_gap = V(z_n plan) - V(z_n real)``, and ``value_grad = |dV/dz|`` at the plan's knot (how
steep a slope the planner can climb there). Only segments ended by a new plan are scored: an
episode's last, cut short by its end, is not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from collodreamer.models import WorldModel
from collodreamer.planning.problem import rollout_features

Tensor = torch.Tensor


@dataclass
class Segment:
    """One executed stretch of a plan: the knots ``[1, K+1, D]`` the plan expected (``planned[:, 0]``
    the filtered feature it started from), and per executed step the filtered feature it was taken
    from ``[1, D]``, the action ``[1, A]`` and the reward the environment paid for it."""

    planned: Tensor
    features: list[Tensor] = field(default_factory=list)
    actions: list[Tensor] = field(default_factory=list)
    paid: list[float] = field(default_factory=list)

    def executed(self, feature: Tensor, action: Tensor) -> None:
        self.features.append(feature)
        self.actions.append(action)


@torch.no_grad()
def promise_metrics(
    world_model: WorldModel,
    segment: Segment,
    reached: Tensor,
    value_of: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """``plan/*`` promise metrics of a segment whose every step was paid; ``reached [1, D]`` is the
    filtered feature after its last step."""
    steps = len(segment.paid)
    if steps == 0:
        return {}
    planned = segment.planned[:, 1 : steps + 1]
    rollout = rollout_features(
        world_model.rssm.next_feature_mean, segment.planned[:, 0], torch.cat(segment.actions)[None]
    )
    promised = world_model.reward_of(planned).mean().item()
    rolled = world_model.reward_of(rollout).mean().item()
    paid = sum(segment.paid) / steps
    metrics = {
        "plan/promised_reward": promised,
        "plan/rollout_reward": rolled,
        "plan/paid_reward": paid,
        "plan/promise_gap": promised - paid,
        "plan/rollout_gap": rolled - paid,
    }
    if value_of is None:
        return metrics
    knot = planned[:, -1].clone().requires_grad_(True)
    with torch.enable_grad():
        promised_value = value_of(knot)
        (gradient,) = torch.autograd.grad(promised_value.sum(), knot)
    real_value = value_of(reached).item()
    return {
        **metrics,
        "plan/value_promised": promised_value.item(),
        "plan/value_rollout": value_of(rollout[:, -1]).item(),
        "plan/value_real": real_value,
        "plan/value_gap": promised_value.item() - real_value,
        "plan/value_grad": gradient.norm().item(),
    }


def executed_kind(diagnostics: dict[str, float]) -> str | None:
    """The kind of plan executed, from the plan's ``candidate_share`` of its one start (1 where a
    candidate won): ``candidate`` or ``optimised``; None where no candidates competed."""
    share = diagnostics.get("candidate_share")
    if share is None:
        return None
    return "candidate" if share >= 0.5 else "optimised"


def by_kind(metrics: dict[str, float], kind: str | None) -> dict[str, float]:
    """A segment's promise ``metrics`` again under ``plan/<kind>/*`` (:func:`executed_kind`); nothing
    without a kind. Averaged over a test, each kind's gap is over its own segments: how far each kind's
    scores can be trusted."""
    if kind is None:
        return {}
    return {f"plan/{kind}/{key.removeprefix('plan/')}": value for key, value in metrics.items()}


def update_gap(gaps: dict[str, float], kind: str, gap: float, rate: float) -> None:
    """Fold a segment's rollout gap (reward per agent step) into ``gaps[kind]``: an exponential
    average at ``rate``, starting from the first segment of that kind."""
    gaps[kind] = gap if kind not in gaps else gaps[kind] + rate * (gap - gaps[kind])


def calibration_bias(gaps: dict[str, float], weights: float) -> float:
    """What an optimised plan's score loses against the candidates': the excess of the optimised plans'
    running rollout gap over the candidates' (reward per step) times ``weights``, the sum of the score's
    reward weights ``sum_k gamma^k``; 0 until both kinds have been executed."""
    if "optimised" not in gaps or "candidate" not in gaps:
        return 0.0
    return (gaps["optimised"] - gaps["candidate"]) * weights
