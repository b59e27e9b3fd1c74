"""Collocation planning: residuals, Gauss-Newton and Adam primal steps, dual multiplier updates."""

from collodreamer.planning.collocation import (
    Objective,
    Plan,
    PlanResult,
    collocate,
    dual_update,
    shifted_plan,
)

__all__ = ["Objective", "Plan", "PlanResult", "collocate", "dual_update", "shifted_plan"]
