"""The Gauss-Newton primal step of LatCo: linearise the residuals, assemble the block-tridiagonal
normal equations, solve them by block Cholesky, pick a step size."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch.func import grad_and_value, jacrev, vmap

from collodreamer.planning.problem import (
    DualStep,
    Objective,
    Plan,
    action_excess,
    lagrangian,
    residual_scales,
    reward_weights,
    terminal_residual_scale,
)

Tensor = torch.Tensor
STEP_SIZES = (1.0, 0.3, 0.1, 0.03, 0.01, 0.003, 0.001, 0.0)


def block_tridiagonal_solve(diag: Tensor, upper: Tensor, rhs: Tensor) -> Tensor:
    """Solve ``A x = b`` for symmetric positive definite block-tridiagonal ``A`` by block Cholesky.

    ``diag [B, K, n, n]`` holds ``A_kk``, ``upper [B, K-1, n, n]`` holds ``A_{k,k+1}``, ``rhs [B, K, n]``.
    Cost is ``O(K n^3)``: linear in the number of blocks, where a dense solve is cubic in it. Where a
    factorisation fails in single precision (rounding can make a nearly singular block indefinite),
    that system is solved again in double precision.
    """
    x, failed = _block_cholesky_solve(diag, upper, rhs)
    if failed.any():  # one synchronisation per solve
        again, _ = _block_cholesky_solve(diag.double(), upper.double(), rhs.double())
        x = torch.where(failed[:, None, None], again.to(x.dtype), x)
    return x


def _block_cholesky_solve(diag: Tensor, upper: Tensor, rhs: Tensor) -> tuple[Tensor, Tensor]:
    """The solve of :func:`block_tridiagonal_solve` and, per system ``[B]``, whether a factorisation
    failed."""
    K = diag.shape[1]
    factor = torch.linalg.cholesky_ex(diag[:, 0])
    chol, failed = [factor.L], factor.info != 0
    coupling = [None]  # W_k = L_{k-1}^{-1} A_{k-1,k}; the factor's sub-diagonal block is W_k^T
    y = [torch.linalg.solve_triangular(chol[0], rhs[:, 0, :, None], upper=False)]
    for k in range(1, K):
        w = torch.linalg.solve_triangular(chol[k - 1], upper[:, k - 1], upper=False)
        factor = torch.linalg.cholesky_ex(diag[:, k] - w.transpose(-1, -2) @ w)
        chol.append(factor.L)
        failed = failed | (factor.info != 0)
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
    return torch.stack(x, 1).squeeze(-1), failed


def _dynamics_jacobian(objective: Objective, features: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
    """``mu(z, a)`` ``[N, D]`` and its Jacobian with respect to ``[z, a]`` ``[N, D, D+A]``."""
    if objective.dynamics_jacobian is not None:
        return objective.dynamics_jacobian(features, actions)

    def dynamics_twice(z: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        out = objective.dynamics(z, a)
        return out, out  # differentiated, and kept as the value

    (jac_z, jac_a), mean = vmap(jacrev(dynamics_twice, argnums=(0, 1), has_aux=True))(features, actions)
    return mean, torch.cat([jac_z, jac_a], -1)


def _reward_residual_grad(objective: Objective, features: Tensor) -> tuple[Tensor, Tensor]:
    """``softplus(-r(z))`` ``[N]`` and its gradient with respect to z ``[N, D]``."""
    gradient, value = vmap(grad_and_value(lambda z: F.softplus(-objective.reward(z))))(features)
    return value, gradient


def _value_residual_grad(objective: Objective, features: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
    """``softplus(-V(mu(z, a)) / c)`` ``[B]`` and its gradient with respect to ``[z, a]`` ``[B, D+A]``."""
    scale = objective.value_scale

    def value_residual(z: Tensor, a: Tensor) -> Tensor:
        return F.softplus(-objective.terminal_value(z[None], a[None])[0] / scale)

    (grad_z, grad_a), value = vmap(grad_and_value(value_residual, argnums=(0, 1)))(features, actions)
    return value, torch.cat([grad_z, grad_a], -1)


@dataclass
class Linearisation:
    """The residuals of a plan that need derivatives, linearised once per step: the dynamics
    ``mu(z_k, a_k)`` and its Jacobian ``G_k = d mu / d [z_k, a_k]``, the gaps ``z_{k+1} - mu``, the
    action-bound excess and its derivative, and the squared violations they give (for Eq. 7)."""

    mean: Tensor  # [B, H, D]
    jacobian: Tensor  # [B, H, D, D + A]
    gap: Tensor  # [B, H, D]
    excess: Tensor  # [B, K, A]
    excess_grad: Tensor  # [B, K, A]

    @property
    def violations(self) -> tuple[Tensor, Tensor]:
        """Squared dynamics ``[B, H]`` and action-bound ``[B, K]`` violations."""
        return self.gap.pow(2).sum(-1), self.excess.pow(2).sum(-1)


def linearise(objective: Objective, plan: Plan) -> Linearisation:
    B, K, D = plan.features.shape
    H, A = K - 1, plan.actions.shape[-1]
    mean, jac = _dynamics_jacobian(
        objective, plan.features[:, :-1].reshape(-1, D), plan.actions[:, :-1].reshape(-1, A)
    )
    mean, jac = mean.reshape(B, H, D), jac.reshape(B, H, D, D + A)
    excess, excess_grad = action_excess(plan.actions, objective.action_residual)
    return Linearisation(mean, jac, plan.features[:, 1:] - mean, excess, excess_grad)


def normal_equations(objective: Objective, plan: Plan, lin: Linearisation) -> tuple[Tensor, Tensor, Tensor]:
    """``J^T J`` and ``J^T r`` of the plan's residuals at its multipliers, block by block: the diagonal
    blocks ``[B, K, n, n]``, the blocks ``[B, H, n, n]`` coupling knots k and k+1, and ``[B, K, n]``
    (``n = D + A``); never a dense matrix. ``z_0`` is pinned: its rows and columns are zero.
    """
    B, K, D = plan.features.shape
    H, n, A = K - 1, lin.jacobian.shape[-1], plan.actions.shape[-1]
    s_dyn, s_act, s_rew = residual_scales(plan.lam, plan.nu)
    weights = reward_weights(H, objective.gamma, plan.features)
    dyn = s_dyn[..., None] * lin.gap  # [B, H, D]
    rew, rew_grad = _reward_residual_grad(objective, plan.features[:, 1:].reshape(-1, D))
    rew_scale = s_rew * weights.sqrt()  # [B, H]
    rew = rew_scale * rew.reshape(B, H)
    rew_grad = rew_scale[..., None] * rew_grad.reshape(B, H, D)  # d(reward residual)/dz_{k+1}
    act = s_act[..., None] * lin.excess  # [B, K, A]
    act_grad = s_act[..., None] * lin.excess_grad  # diagonal of d act / d a

    hessian = plan.features.new_zeros(B, K, n, n)
    gradient = plan.features.new_zeros(B, K, n)
    scaled_jac = s_dyn[..., None, None] * lin.jacobian  # d(dyn residual_k)/dx_k = -scaled_jac
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
    # Trust region around the anchor's actions (diagonal, constant curvature).
    if objective.trust_weight > 0 and plan.anchor is not None:
        trust = s_rew**2 * objective.trust_weight  # [B, 1]
        hessian[:, :, D:, D:] += trust[..., None, None] * torch.eye(A, dtype=dyn.dtype, device=dyn.device)
        gradient[:, :, D:] += trust[..., None] * (plan.actions - plan.anchor)
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
    return hessian, upper, gradient


def gauss_newton_direction(hessian: Tensor, upper: Tensor, gradient: Tensor, damping: float) -> Tensor:
    """The step ``dx [B, K, n]`` solving ``(2 J^T J + delta I) dx = 2 J^T r``."""
    n = hessian.shape[-1]
    system = 2.0 * hessian + damping * torch.eye(n, dtype=hessian.dtype, device=hessian.device)
    return block_tridiagonal_solve(system, 2.0 * upper, 2.0 * gradient)


def step_size(objective: Objective, plan: Plan, step: Tensor) -> Tensor:
    """Per plan, the size in ``STEP_SIZES`` (0 included) of ``x <- x - size * dx`` that lowers the
    objective most ``[B, 1, 1]``."""
    B, _, D = plan.features.shape
    sizes = torch.tensor(STEP_SIZES, dtype=step.dtype, device=step.device)[:, None, None, None]
    candidates = Plan(
        (plan.features - sizes * step[..., :D]).flatten(0, 1),
        (plan.actions - sizes * step[..., D:]).flatten(0, 1),
        plan.lam.repeat(len(STEP_SIZES), 1),
        plan.nu.repeat(len(STEP_SIZES), 1),
        None if plan.anchor is None else plan.anchor.repeat(len(STEP_SIZES), 1, 1),
    )
    best = lagrangian(objective, candidates).reshape(len(STEP_SIZES), B).nan_to_num(torch.inf).argmin(0)
    return sizes.flatten()[best][:, None, None]


def gauss_newton_step(
    objective: Objective,
    plan: Plan,
    damping: float,
    line_search: bool = True,
    dual: DualStep | None = None,
) -> tuple[Plan, Tensor, Tensor]:
    """One damped Gauss-Newton step: solve ``(2 J^T J + delta I) dx = 2 J^T r``, set ``x <- x - dx``.

    Returns the stepped plan and the violations of the plan it started from; ``dual`` (the pending
    update of Eq. 7, given those violations) is applied to the multipliers before the step is taken.

    The reward residual ``softplus(-r)`` can never reach zero, so the full step overshoots wherever
    ``grad r`` is small (near a reward maximum); with ``line_search`` each plan takes the step size
    from ``STEP_SIZES`` that lowers its objective most. LatCo's reference takes the full step
    (``line_search=False``).
    """
    lin = linearise(objective, plan)
    dynamics, actions = lin.violations
    if dual is not None:
        plan = dual(plan, dynamics, actions)
    step = gauss_newton_direction(*normal_equations(objective, plan, lin), damping)
    size = step_size(objective, plan, step) if line_search else 1.0
    D = plan.features.shape[-1]
    stepped = replace(
        plan, features=plan.features - size * step[..., :D], actions=plan.actions - size * step[..., D:]
    )
    return stepped, dynamics, actions
