"""Latent collocation (LatCo, Rybkin et al. 2021): plan latent states and actions together.

Decision variables are the knots ``x_k = [z_k, a_k]``, ``k = 0..H``, with ``z_0`` pinned to the current
posterior feature. The learned dynamics ``z_{k+1} = mu(z_k, a_k)`` and the bounds ``|a_k| <= 1`` are
constraints, enforced through multipliers ``lambda_k`` (one per transition) and ``nu_k`` (one per
knot) that the dual step of Eq. 7 tightens after every primal step. The primal problem is LatCo's
least-squares form of the Lagrangian of Eq. 6: minimise ``sum ||residual||^2`` with residuals

    dynamics   s * sqrt(lambda_k) * (z_{k+1} - mu(z_k, a_k))                  k = 0..H-1
    actions    s * sqrt(nu_k) * max(|a_k| - 1, 0)   (or max(a_k^2 - 1, 0))     k = 0..H
    reward     s * sqrt(gamma^k) * softplus(-r(z_k))                            k = 1..H
    value      s * sqrt(w * gamma^(H+1) * c) * softplus(-V(mu(z_H, a_H)) / c)   (ColloDreamer only)

where ``s = 1 / (mean sqrt(lambda) + mean sqrt(nu) + 1)`` is LatCo's per-plan normaliser and gamma
the discount of Eq. 10 (``gamma = 1``: the plain reward sum of Eq. 8). The terminal value enters like
the reward: divided by ``c = 1 / (1 - gamma)`` it is on the scale of one step's reward, and it
weighs as the ``c`` steps it stands for, times ``w`` (``value.weight``). V counts the reward of its
own state (``V(z) = r(z) + gamma V(z')``, the targets of ``models.losses.value_targets``), so the
state ``mu(z_H, a_H)`` one step after the last knot is discounted by ``gamma^(H+1)``: Eq. 10 as
printed writes ``gamma^H``, which counts that state's reward at the last knot's discount.

Every residual couples at most two adjacent knots, so ``J^T J`` is block tridiagonal over time and
the Gauss-Newton step is a block-banded Cholesky solve, linear in H.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch.func import grad_and_value, jacrev, vmap

from collodreamer.config import PlannerConfig

log = logging.getLogger("collodreamer")
Tensor = torch.Tensor


@dataclass
class Objective:
    """What a plan is scored by: dynamics ``mu(z, a)`` and reward ``r(z)``, batched over leading
    dimensions, and the discount of Eq. 10. ``dynamics_jacobian`` (``[N, D], [N, A] -> mu [N, D],
    d mu / d [z, a] [N, D, D + A]``) replaces autograd's Jacobian where a faster one is known."""

    dynamics: Callable[[Tensor, Tensor], Tensor]
    reward: Callable[[Tensor], Tensor]
    action_dim: int
    gamma: float = 1.0
    dynamics_jacobian: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None
    value: Callable[[Tensor], Tensor] | None = None  # V(z) of the state after the last knot
    value_weight: float = 1.0  # w: scales the terminal value term
    action_residual: str = "abs"  # "abs": max(|a| - 1, 0); "square": max(a^2 - 1, 0)

    @property
    def value_scale(self) -> float:
        """c: the number of steps of reward the terminal value stands for, 1 / (1 - gamma)."""
        return 1.0 / (1.0 - self.gamma) if self.gamma < 1.0 else 1.0

    def terminal_discount(self, horizon: int) -> float:
        """``w * gamma^(H+1)``: the weight of ``V(mu(z_H, a_H))`` in Eq. 10."""
        return self.value_weight * self.gamma ** (horizon + 1)

    def terminal_value(self, features: Tensor, actions: Tensor) -> Tensor:
        """``V(mu(z_H, a_H))`` of the last knots ``[B, D]``, ``[B, A]`` (zeros without a value)."""
        if self.value is None:
            return features.new_zeros(features.shape[0])
        return self.value(self.dynamics(features, actions))


@dataclass
class Plan:
    """Knots of a batch of plans: features ``[B, H+1, D]`` (``features[:, 0]`` is z_0), actions
    ``[B, H+1, A]`` (unclipped), and their multipliers ``lam [B, H]`` and ``nu [B, H+1]``."""

    features: Tensor
    actions: Tensor
    lam: Tensor
    nu: Tensor

    @property
    def horizon(self) -> int:
        return self.features.shape[1] - 1


@dataclass
class PlanResult:
    """The plan chosen for each of ``E`` start states: its knots, its actions clipped to [-1, 1]
    and diagnostics (Fig. 10-11)."""

    plan: Plan
    actions: Tensor
    diagnostics: dict[str, float]


# --- pure pieces of the math ---------------------------------------------------------------------


def dual_update(
    multiplier: Tensor,
    violation: Tensor,
    eps: float | Tensor,
    alpha: float | Tensor,
    eta: float | Tensor,
    bounds: tuple[float | Tensor, float | Tensor] = (0.0, float("inf")),
) -> Tensor:
    """Eq. 7: ``lambda <- lambda * (1 + alpha * log10(v / eps + eta))``, kept within ``bounds``.

    Grows while the squared violation ``v`` exceeds ``(1 - eta) * eps``, shrinks below it (by the
    factor ``1 + alpha * log10(eta)``, i.e. 10% for alpha = eta = 0.1, at v = 0).
    """
    return (multiplier * (1.0 + alpha * torch.log10(violation / eps + eta))).clamp(*bounds)


def reward_weights(horizon: int, gamma: float, like: Tensor) -> Tensor:
    """``gamma^k`` for the rewards of ``z_1..z_H`` (Eq. 10; all ones for Eq. 8)."""
    return gamma ** torch.arange(1, horizon + 1, dtype=like.dtype, device=like.device)


def residual_scales(lam: Tensor, nu: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-plan scales of the dynamics ``[B, H]``, action ``[B, H+1]`` and reward ``[B, 1]`` residuals:
    square roots of the multipliers times LatCo's normaliser ``1 / (mean sqrt(lam) + mean sqrt(nu) + 1)``."""
    sqrt_lam, sqrt_nu = lam.sqrt(), nu.sqrt()
    normaliser = 1.0 / (sqrt_lam.mean(1, keepdim=True) + sqrt_nu.mean(1, keepdim=True) + 1.0)
    return normaliser * sqrt_lam, normaliser * sqrt_nu, normaliser


def action_excess(actions: Tensor, kind: str = "abs") -> tuple[Tensor, Tensor]:
    """How far each action component lies outside [-1, 1], ``max(|a| - 1, 0)`` (``abs``) or
    ``max(a^2 - 1, 0)`` (``square``, LatCo's code: at the same tolerance it allows about half the
    overshoot, 0.049 against 0.1 at a squared violation of 1e-2), and its derivative."""
    if kind == "square":
        excess = (actions.pow(2) - 1.0).clamp(min=0.0)
        return excess, 2.0 * actions * (excess > 0)
    excess = (actions.abs() - 1.0).clamp(min=0.0)
    return excess, torch.sign(actions) * (excess > 0)


def violations(objective: Objective, plan: Plan) -> tuple[Tensor, Tensor]:
    """Squared dynamics violations ``||z_{k+1} - mu(z_k, a_k)||^2`` ``[B, H]`` and squared action-bound
    violations ``||action_excess(a_k)||^2`` ``[B, H+1]``."""
    predicted = objective.dynamics(plan.features[:, :-1], plan.actions[:, :-1])
    dynamics = (plan.features[:, 1:] - predicted).pow(2).sum(-1)
    return dynamics, action_excess(plan.actions, objective.action_residual)[0].pow(2).sum(-1)


def terminal_residual_scale(objective: Objective, horizon: int) -> float:
    """Square root of the terminal value residual's weight, ``sqrt(w * gamma^(H+1) * c)``."""
    return (objective.terminal_discount(horizon) * objective.value_scale) ** 0.5


def residuals(objective: Objective, plan: Plan, gap: Tensor | None = None) -> Tensor:
    """All residuals of each plan, concatenated ``[B, R]``; the primal objective is their squared norm.

    ``gap`` is ``z_{k+1} - mu(z_k, a_k)`` where the caller has it already."""
    s_dyn, s_act, s_rew = residual_scales(plan.lam, plan.nu)
    if gap is None:
        gap = plan.features[:, 1:] - objective.dynamics(plan.features[:, :-1], plan.actions[:, :-1])
    dynamics = s_dyn[..., None] * gap
    actions = s_act[..., None] * action_excess(plan.actions, objective.action_residual)[0]
    weights = reward_weights(plan.horizon, objective.gamma, plan.features).sqrt()
    rewards = s_rew * weights * F.softplus(-objective.reward(plan.features[:, 1:]))
    parts = [dynamics.flatten(1), actions.flatten(1), rewards]
    if objective.value is not None:
        value = objective.terminal_value(plan.features[:, -1], plan.actions[:, -1]) / objective.value_scale
        parts.append(s_rew * terminal_residual_scale(objective, plan.horizon) * F.softplus(-value)[:, None])
    return torch.cat(parts, 1)


def lagrangian(objective: Objective, plan: Plan) -> Tensor:
    """The primal objective ``||residuals||^2`` of each plan ``[B]`` at fixed multipliers."""
    return residuals(objective, plan).pow(2).sum(1)


def block_tridiagonal_solve(diag: Tensor, upper: Tensor, rhs: Tensor) -> Tensor:
    """Solve ``A x = b`` for symmetric positive definite block-tridiagonal ``A`` by block Cholesky.

    ``diag [B, K, n, n]`` holds ``A_kk``, ``upper [B, K-1, n, n]`` holds ``A_{k,k+1}``, ``rhs [B, K, n]``.
    Cost is ``O(K n^3)``: linear in the number of blocks, where a dense solve is cubic in it.
    """
    K = diag.shape[1]
    chol = [torch.linalg.cholesky_ex(diag[:, 0]).L]
    coupling = [None]  # W_k = L_{k-1}^{-1} A_{k-1,k}; the factor's sub-diagonal block is W_k^T
    y = [torch.linalg.solve_triangular(chol[0], rhs[:, 0, :, None], upper=False)]
    for k in range(1, K):
        w = torch.linalg.solve_triangular(chol[k - 1], upper[:, k - 1], upper=False)
        chol.append(torch.linalg.cholesky_ex(diag[:, k] - w.transpose(-1, -2) @ w).L)
        coupling.append(w)
        y.append(
            torch.linalg.solve_triangular(
                chol[k], rhs[:, k, :, None] - w.transpose(-1, -2) @ y[k - 1], upper=False
            )
        )
    x = [None] * K
    x[K - 1] = torch.linalg.solve_triangular(chol[K - 1].transpose(-1, -2), y[K - 1], upper=True)
    for k in range(K - 2, -1, -1):
        x[k] = torch.linalg.solve_triangular(
            chol[k].transpose(-1, -2), y[k] - coupling[k + 1] @ x[k + 1], upper=True
        )
    return torch.stack(x, 1).squeeze(-1)


# --- primal steps --------------------------------------------------------------------------------


def _dynamics_jacobian(objective: Objective, features: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
    """``mu(z, a)`` ``[N, D]`` and its Jacobian with respect to ``[z, a]`` ``[N, D, D+A]``."""
    if objective.dynamics_jacobian is not None:
        return objective.dynamics_jacobian(features, actions)

    def single(z: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        out = objective.dynamics(z, a)
        return out, out

    (jac_z, jac_a), mean = vmap(jacrev(single, argnums=(0, 1), has_aux=True))(features, actions)
    return mean, torch.cat([jac_z, jac_a], -1)


def _reward_residual_grad(objective: Objective, features: Tensor) -> tuple[Tensor, Tensor]:
    """``softplus(-r(z))`` ``[N]`` and its gradient with respect to z ``[N, D]``."""
    gradient, value = vmap(grad_and_value(lambda z: F.softplus(-objective.reward(z))))(features)
    return value, gradient


STEP_SIZES = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0)


def _value_residual_grad(objective: Objective, features: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
    """``softplus(-V(mu(z, a)) / c)`` ``[B]`` and its gradient with respect to ``[z, a]`` ``[B, D+A]``."""
    scale = objective.value_scale

    def single(z: Tensor, a: Tensor) -> Tensor:
        return F.softplus(-objective.terminal_value(z[None], a[None])[0] / scale)

    (grad_z, grad_a), value = vmap(grad_and_value(single, argnums=(0, 1)))(features, actions)
    return value, torch.cat([grad_z, grad_a], -1)


Dual = Callable[[Plan, Tensor, Tensor], Plan]


def gauss_newton_step(
    objective: Objective, plan: Plan, damping: float, line_search: bool = True, dual: Dual | None = None
) -> tuple[Plan, Tensor, Tensor]:
    """One damped Gauss-Newton step: solve ``(2 J^T J + delta I) dx = 2 J^T r``, set ``x <- x - dx``.

    Returns the stepped plan and the violations of the plan it started from; ``dual`` (the update of
    Eq. 7 given those violations) is applied to the multipliers before the step is taken.

    ``J^T J`` is assembled block by block from the dynamics Jacobians ``G_k = d mu / d x_k`` and the
    reward gradients, never as a dense matrix; ``z_0`` is pinned by zeroing its rows and columns.

    The reward residual ``softplus(-r)`` can never reach zero, so the full step overshoots wherever
    ``grad r`` is small (near a reward maximum); with ``line_search`` each plan takes the step size
    from ``STEP_SIZES`` (0 included) that lowers its objective most. LatCo's reference takes the full
    step (``line_search=False``).
    """
    B, K, D = plan.features.shape
    H, A = K - 1, plan.actions.shape[-1]
    n = D + A
    mean, jac = _dynamics_jacobian(
        objective, plan.features[:, :-1].reshape(-1, D), plan.actions[:, :-1].reshape(-1, A)
    )
    mean, jac = mean.reshape(B, H, D), jac.reshape(B, H, D, n)
    gap = plan.features[:, 1:] - mean
    excess, excess_grad = action_excess(plan.actions, objective.action_residual)
    dyn_violation, act_violation = gap.pow(2).sum(-1), excess.pow(2).sum(-1)
    if dual is not None:
        plan = dual(plan, dyn_violation, act_violation)
    s_dyn, s_act, s_rew = residual_scales(plan.lam, plan.nu)
    weights = reward_weights(H, objective.gamma, plan.features)
    dyn = s_dyn[..., None] * gap  # [B, H, D]
    rew, rew_grad = _reward_residual_grad(objective, plan.features[:, 1:].reshape(-1, D))
    rew_scale = s_rew * weights.sqrt()  # [B, H]
    rew = rew_scale * rew.reshape(B, H)
    rew_grad = rew_scale[..., None] * rew_grad.reshape(B, H, D)  # d(reward residual)/dz_{k+1}
    act = s_act[..., None] * excess  # [B, K, A]
    act_grad = s_act[..., None] * excess_grad  # diagonal of d act / d a

    hessian = plan.features.new_zeros(B, K, n, n)
    gradient = plan.features.new_zeros(B, K, n)
    scaled_jac = s_dyn[..., None, None] * jac  # d(dyn residual_k)/dx_k = -scaled_jac
    # Transition k as the "from" knot: -s G_k.
    hessian[:, :-1] += scaled_jac.transpose(-1, -2) @ scaled_jac
    gradient[:, :-1] -= (scaled_jac.transpose(-1, -2) @ dyn[..., None]).squeeze(-1)
    # Transition k-1 as the "to" knot: s * I on z_k, and the reward residual of z_k.
    eye = torch.eye(D, dtype=plan.features.dtype, device=plan.features.device)
    hessian[:, 1:, :D, :D] += (
        s_dyn[..., None, None] ** 2 * eye + rew_grad[..., :, None] * rew_grad[..., None, :]
    )
    gradient[:, 1:, :D] += s_dyn[..., None] * dyn + rew_grad * rew[..., None]
    # Action bounds (diagonal).
    hessian[:, :, D:, D:] += torch.diag_embed(act_grad**2)
    gradient[:, :, D:] += act_grad * act
    # Terminal value of the last knot (ColloDreamer).
    if objective.value is not None:
        value, value_grad = _value_residual_grad(objective, plan.features[:, -1], plan.actions[:, -1])
        scale = s_rew[:, 0] * terminal_residual_scale(objective, H)
        value, value_grad = scale * value, scale[:, None] * value_grad
        hessian[:, -1] += value_grad[:, :, None] * value_grad[:, None, :]
        gradient[:, -1] += value_grad * value[:, None]
    # Coupling of knots k and k+1 through transition k: (-s G_k)^T (s [I, 0]).
    upper = plan.features.new_zeros(B, H, n, n)
    upper[..., :D] = -s_dyn[..., None, None] * scaled_jac.transpose(-1, -2)
    # Pin z_0: no curvature, gradient or coupling on it, so the damped solve leaves it unchanged.
    hessian[:, 0, :D, :] = 0.0
    hessian[:, 0, :, :D] = 0.0
    gradient[:, 0, :D] = 0.0
    upper[:, 0, :D, :] = 0.0
    system = 2.0 * hessian + damping * torch.eye(n, dtype=hessian.dtype, device=hessian.device)
    step = block_tridiagonal_solve(system, 2.0 * upper, 2.0 * gradient)
    if not line_search:
        stepped = replace(plan, features=plan.features - step[..., :D], actions=plan.actions - step[..., D:])
        return stepped, dyn_violation, act_violation
    sizes = torch.tensor(STEP_SIZES, dtype=step.dtype, device=step.device)[:, None, None, None]
    candidates = Plan(
        (plan.features - sizes * step[..., :D]).flatten(0, 1),
        (plan.actions - sizes * step[..., D:]).flatten(0, 1),
        plan.lam.repeat(len(STEP_SIZES), 1),
        plan.nu.repeat(len(STEP_SIZES), 1),
    )
    best = lagrangian(objective, candidates).reshape(len(STEP_SIZES), B).nan_to_num(torch.inf).argmin(0)
    size = sizes.flatten()[best][:, None, None]
    stepped = replace(
        plan, features=plan.features - size * step[..., :D], actions=plan.actions - size * step[..., D:]
    )
    return stepped, dyn_violation, act_violation


def adam_objective(
    objective: Objective,
    first: Tensor,
    free: Tensor,
    actions: Tensor,
    lam: Tensor,
    nu: Tensor,
    dual: tuple[Tensor, ...] | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The primal objective of the plan ``[first, free]`` and its violations from one forward pass.

    With ``dual = (eps_dyn, eps_act, alpha, eta, low, high)`` the multipliers first take the dual
    step of Eq. 7 with those violations. Returns (objective, lam, nu, dynamics and action violations).
    A pure function of tensors, so that ``torch.compile`` can fuse it and its backward pass."""
    features = torch.cat([first, free], 1)
    gap = features[:, 1:] - objective.dynamics(features[:, :-1], actions[:, :-1])
    dyn_violation = gap.detach().pow(2).sum(-1)
    act_violation = action_excess(actions.detach(), objective.action_residual)[0].pow(2).sum(-1)
    if dual is not None:
        eps_dyn, eps_act, alpha, eta, low, high = dual
        lam = dual_update(lam, dyn_violation, eps_dyn, alpha, eta, (low, high))
        nu = dual_update(nu, act_violation, eps_act, alpha, eta, (low, high))
    value = residuals(objective, Plan(features, actions, lam, nu), gap).pow(2).sum()
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
        self, objective: Objective, plan: Plan, dual: tuple[Tensor, ...] | None = None
    ) -> tuple[Plan, Tensor, Tensor]:
        """One Adam step; like :func:`gauss_newton_step` it returns the violations of the plan it
        started from and takes the pending dual step (``dual``: the hyperparameters of Eq. 7 as
        tensors) before stepping."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.enable_grad():
            value, lam, nu, dyn_violation, act_violation = self.function(
                objective, self.first, self.free_features, self.actions, plan.lam, plan.nu, dual
            )
            value.backward()
        self.optimizer.step()
        stepped = Plan(
            torch.cat([self.first, self.free_features.detach()], 1), self.actions.detach(), lam, nu
        )
        return stepped, dyn_violation, act_violation


# --- the planner ---------------------------------------------------------------------------------


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


def rollout_return(objective: Objective, start: Tensor, actions: Tensor) -> Tensor:
    """Eq. 10 for executing ``actions [B, H+1, A]`` from ``start`` under mu: discounted predicted
    rewards plus the discounted terminal value."""
    feature, total = start, torch.zeros(start.shape[0], dtype=start.dtype, device=start.device)
    horizon = actions.shape[1] - 1
    for k in range(horizon):
        feature = objective.dynamics(feature, actions[:, k])
        total = total + objective.gamma ** (k + 1) * objective.reward(feature)
    return total + objective.terminal_discount(horizon) * objective.terminal_value(feature, actions[:, -1])


def collocate(
    objective: Objective,
    start: Tensor,
    config: PlannerConfig,
    init: Plan | None = None,
    on_iteration: Callable[[Plan], None] | None = None,
) -> PlanResult:
    """Plan from each start feature ``[E, D]``: ``config.plans`` plans per start are optimised in
    parallel by ``config.iterations`` primal/dual steps; per start, the plan whose clipped actions
    score the best imagined return is kept. ``init`` (``[E * plans, ...]``) replaces the random
    initialisation; ``on_iteration`` sees the plans after every dual step."""
    E, P, H = start.shape[0], config.plans, config.horizon
    starts = start.repeat_interleave(P, 0)
    plan = init if init is not None else random_plan(starts, H, objective.action_dim, config)
    adam = AdamPrimal(plan, config.adam_lr, config.compile) if config.primal == "adam" else None
    bounds = (config.min_multiplier, config.max_multiplier)
    dual_terms = tuple(
        torch.tensor(x, dtype=start.dtype, device=start.device)
        for x in (config.eps_dyn, config.eps_act, config.dual_alpha, config.dual_eta, *bounds)
    )

    def dual(plan: Plan, dynamics: Tensor, actions: Tensor) -> Plan:
        """Eq. 7 after every primal step, given the violations of the plan that step produced."""
        return replace(
            plan,
            lam=dual_update(plan.lam, dynamics, config.eps_dyn, config.dual_alpha, config.dual_eta, bounds),
            nu=dual_update(plan.nu, actions, config.eps_act, config.dual_alpha, config.dual_eta, bounds),
        )

    previous_return, iterations = None, 0
    with torch.no_grad():
        for iterations in range(1, config.iterations + 1):
            # Each step first finds the violations of the previous step's result and applies that
            # step's dual update with them: the dynamics are evaluated once per iteration.
            later = dual if iterations > 1 else None
            if adam is not None:
                plan, dynamics, actions = adam.step(objective, plan, dual_terms if later else None)
            else:
                plan, dynamics, actions = gauss_newton_step(
                    objective, plan, config.damping, config.line_search, later
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
        return _choose(objective, plan, starts, E, P, iterations)


def planned_return(objective: Objective, plan: Plan) -> Tensor:
    """The plan's own Eq. 10 objective ``sum_{k=1..H} gamma^k r(z_k) + w gamma^(H+1) V(mu(z_H, a_H))``
    ``[B]`` (the constant ``r(z_0)`` left out; Eq. 8 without a value)."""
    weights = reward_weights(plan.horizon, objective.gamma, plan.features)
    terminal = objective.terminal_value(plan.features[:, -1], plan.actions[:, -1])
    rewards = (weights * objective.reward(plan.features[:, 1:])).sum(1)
    return rewards + objective.terminal_discount(plan.horizon) * terminal


def _choose(objective: Objective, plan: Plan, starts: Tensor, E: int, P: int, iterations: int) -> PlanResult:
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
    scores = rollout_return(objective, starts, clipped).reshape(E, P)
    scores = torch.where(finite.reshape(E, P), scores, -torch.inf)
    index = torch.arange(E, device=starts.device) * P + scores.argmax(1)
    chosen = Plan(*(t[index] for t in (plan.features, plan.actions, plan.lam, plan.nu)))
    dynamics, actions = violations(objective, chosen)
    diagnostics = {
        "dynamics_violation": dynamics.mean().item(),
        "action_violation": actions.mean().item(),
        "lambda_mean": chosen.lam.mean().item(),
        "nu_mean": chosen.nu.mean().item(),
        "planned_return": planned_return(objective, chosen).mean().item(),
        "rollout_return": scores.max(1).values.mean().item(),
        "iterations": float(iterations),
        "nonfinite_plans": float(bad),
    }
    return PlanResult(chosen, chosen.actions.clamp(-1.0, 1.0), diagnostics)
