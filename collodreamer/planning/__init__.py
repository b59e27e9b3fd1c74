"""Collocation planning (LatCo): the problem and its residuals, Gauss-Newton and Adam primal steps,
dual multiplier updates, and the planner that alternates them."""

from collodreamer.planning.planner import (
    collocate,
    initial_multipliers,
    random_plan,
    rollout_plan,
    shifted_plan,
)
from collodreamer.planning.problem import (
    DualStep,
    Objective,
    Plan,
    PlanResult,
    dual_update,
    policy_rollout,
    reward_weights,
)

__all__ = [
    "DualStep",
    "Objective",
    "Plan",
    "PlanResult",
    "collocate",
    "dual_update",
    "initial_multipliers",
    "policy_rollout",
    "random_plan",
    "reward_weights",
    "rollout_plan",
    "shifted_plan",
]
