"""The first-order primal step (Algorithm 1 of the paper): Adam on the same objective as Gauss-Newton."""

from __future__ import annotations

from collections.abc import Callable

import torch

from collodreamer.planning.problem import DualStep, Objective, Plan, action_excess, residuals

Tensor = torch.Tensor


def adam_objective(
    objective: Objective,
    first: Tensor,
    free: Tensor,
    actions: Tensor,
    lam: Tensor,
    nu: Tensor,
    dual: DualStep | None,
    anchor: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The primal objective of the plan ``[first, free]`` and its violations from one forward pass.

    With ``dual`` the multipliers first take the dual step of Eq. 7 with those violations. Returns
    (objective, lam, nu, dynamics and action violations). A pure function of tensors, so that
    ``torch.compile`` can fuse it and its backward pass."""
    features = torch.cat([first, free], 1)
    gap = features[:, 1:] - objective.dynamics(features[:, :-1], actions[:, :-1])
    dyn_violation = gap.detach().pow(2).sum(-1)
    act_violation = action_excess(actions.detach(), objective.action_residual)[0].pow(2).sum(-1)
    if dual is not None:
        lam, nu = dual.multipliers(lam, nu, dyn_violation, act_violation)
    value = residuals(objective, Plan(features, actions, lam, nu, anchor), gap).pow(2).sum()
    return value, lam, nu, dyn_violation, act_violation


_compiled_adam_objective: Callable | None = None


class AdamPrimal:
    """First-order primal steps (Algorithm 1 of the paper): Adam on the same objective. With
    ``compiled`` the objective and its gradient run through ``torch.compile`` (compiled once per
    process and objective; worth it for the many iterations of a run, not for a single plan)."""

    def __init__(self, plan: Plan, lr: float, compiled: bool = False) -> None:
        global _compiled_adam_objective
        self.free_features = plan.features[:, 1:].detach().clone().requires_grad_(True)
        self.actions = plan.actions.detach().clone().requires_grad_(True)
        self.first = plan.features[:, :1].detach()
        self.optimizer = torch.optim.Adam([self.free_features, self.actions], lr=lr, fused=True)
        if compiled and _compiled_adam_objective is None:
            _compiled_adam_objective = torch.compile(adam_objective, dynamic=False)
        self.function = _compiled_adam_objective if compiled else adam_objective

    def step(
        self, objective: Objective, plan: Plan, dual: DualStep | None = None
    ) -> tuple[Plan, Tensor, Tensor]:
        """One Adam step; like the Gauss-Newton step it returns the violations of the plan it started
        from and takes the pending dual step before stepping."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            value, lam, nu, dyn_violation, act_violation = self.function(
                objective, self.first, self.free_features, self.actions, plan.lam, plan.nu, dual, plan.anchor
            )
            value.backward()
        self.optimizer.step()
        stepped = Plan(
            torch.cat([self.first, self.free_features.detach()], 1),
            self.actions.detach(),
            lam,
            nu,
            plan.anchor,
        )
        return stepped, dyn_violation, act_violation
