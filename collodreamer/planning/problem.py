"""The collocation problem (LatCo, Rybkin et al. 2021): knots, residuals, Lagrangian, dual step.

Decision variables are the knots ``x_k = [z_k, a_k]``, ``k = 0..H``, with ``z_0`` pinned to the current
posterior feature. The learned dynamics ``z_{k+1} = mu(z_k, a_k)`` and the bounds ``|a_k| <= 1`` are
constraints, enforced through multipliers ``lambda_k`` (one per transition) and ``nu_k`` (one per
knot) that the dual step of Eq. 7 tightens after every primal step. The primal problem is LatCo's
least-squares form of the Lagrangian of Eq. 6: minimise ``sum ||residual||^2`` with residuals

    dynamics   s * sqrt(lambda_k) * (z_{k+1} - mu(z_k, a_k))                  k = 0..H-1
    actions    s * sqrt(nu_k) * max(|a_k| - 1, 0)   (or max(a_k^2 - 1, 0))     k = 0..H
    reward     s * sqrt(gamma^k) * softplus(-r(z_k))                            k = 1..H
    value      s * sqrt(w * gamma^(H+1) * c) * softplus(-V(mu(z_H, a_H)) / c)   (ColloDreamer only)
    trust      s * sqrt(beta) * (a_k - anchor_k)                                k = 0..H (beta > 0)

where ``s = 1 / (mean sqrt(lambda) + mean sqrt(nu) + 1)`` is LatCo's per-plan normaliser and gamma
the discount of Eq. 10 (``gamma = 1``: the plain reward sum of Eq. 8). The terminal value enters like
the reward: divided by ``c = 1 / (1 - gamma)`` it is on the scale of one step's reward, and it
weighs as the ``c`` steps it stands for, times ``w`` (``value.weight``). V counts the reward of its
own state (``V(z) = r(z) + gamma V(z')``, the targets of ``models.losses.value_targets``), so the
state ``mu(z_H, a_H)`` one step after the last knot is discounted by ``gamma^(H+1)``: Eq. 10 as
printed writes ``gamma^H``, which counts that state's reward at the last knot's discount.

The trust region (beyond LatCo) holds the plan's actions near those of an anchor, e.g. the rollout
of an actor the plan started from, with weight ``beta`` (``planner.trust_weight``).

Every residual couples at most two adjacent knots, so ``J^T J`` is block tridiagonal over time
(:mod:`collodreamer.planning.gauss_newton`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F

from collodreamer.schema import PlannerConfig

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
    sample_dynamics: Callable[[Tensor, Tensor], Tensor] | None = None  # a draw of z' ~ q(z' | z, a)
    value: Callable[[Tensor], Tensor] | None = None  # V(z) of the state after the last knot
    value_weight: float = 1.0  # w: scales the terminal value term
    trust_weight: float = 0.0  # beta: holds the actions near the plan's anchor (0: off)
    action_residual: str = "square"  # "square": max(a^2 - 1, 0); "abs": max(|a| - 1, 0)

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
    ``[B, H+1, A]`` (unclipped), their multipliers ``lam [B, H]`` and ``nu [B, H+1]``, and the actions
    ``[B, H+1, A]`` a trust region holds them near (None: the plan has no anchor)."""

    features: Tensor
    actions: Tensor
    lam: Tensor
    nu: Tensor
    anchor: Tensor | None = None

    @property
    def horizon(self) -> int:
        return self.features.shape[1] - 1

    def knots(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The features, actions and multipliers, the anchor left out."""
        return self.features, self.actions, self.lam, self.nu


@dataclass
class PlanResult:
    """The plan chosen for each of ``E`` start states: its knots, its actions clipped to [-1, 1]
    and diagnostics (Fig. 10-11)."""

    plan: Plan
    actions: Tensor
    diagnostics: dict[str, float]


class DualStep(NamedTuple):
    """The settings of Eq. 7 for both kinds of multiplier, as tensors so that a compiled primal step
    takes them as inputs; calling it applies the step to a plan."""

    eps_dyn: Tensor
    eps_act: Tensor
    alpha: Tensor
    eta: Tensor
    low: Tensor
    high: Tensor

    @classmethod
    def of(cls, config: PlannerConfig, like: Tensor) -> DualStep:
        values = (config.eps_dyn, config.eps_act, config.dual_alpha, config.dual_eta)
        bounds = (config.min_multiplier, config.max_multiplier)
        return cls(*(torch.tensor(x, dtype=like.dtype, device=like.device) for x in (*values, *bounds)))

    def multipliers(
        self, lam: Tensor, nu: Tensor, dynamics: Tensor, actions: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``lambda`` and ``nu`` after Eq. 7, given the squared dynamics and action violations."""
        bounds = (self.low, self.high)
        return (
            dual_update(lam, dynamics, self.eps_dyn, self.alpha, self.eta, bounds),
            dual_update(nu, actions, self.eps_act, self.alpha, self.eta, bounds),
        )

    def __call__(self, plan: Plan, dynamics: Tensor, actions: Tensor) -> Plan:
        lam, nu = self.multipliers(plan.lam, plan.nu, dynamics, actions)
        return replace(plan, lam=lam, nu=nu)


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
    """Per-plan scales of the dynamics ``[B, H]``, action ``[B, H+1]`` and reward ``[B, 1]`` residuals of
    the least-squares Lagrangian (Eq. 6, as LatCo's code writes it): square roots of the multipliers
    times LatCo's normaliser ``1 / (mean sqrt(lam) + mean sqrt(nu) + 1)``."""
    sqrt_lam, sqrt_nu = lam.sqrt(), nu.sqrt()
    normaliser = 1.0 / (sqrt_lam.mean(1, keepdim=True) + sqrt_nu.mean(1, keepdim=True) + 1.0)
    return normaliser * sqrt_lam, normaliser * sqrt_nu, normaliser


def action_excess(actions: Tensor, kind: str) -> tuple[Tensor, Tensor]:
    """The action-bound constraint of Eq. 6: how far each action component lies outside [-1, 1],
    ``max(|a| - 1, 0)`` (``abs``) or
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
    if objective.trust_weight > 0 and plan.anchor is not None:
        trust = s_rew[..., None] * objective.trust_weight**0.5 * (plan.actions - plan.anchor)
        parts.append(trust.flatten(1))
    if objective.value is not None:
        value = objective.terminal_value(plan.features[:, -1], plan.actions[:, -1]) / objective.value_scale
        parts.append(s_rew * terminal_residual_scale(objective, plan.horizon) * F.softplus(-value)[:, None])
    return torch.cat(parts, 1)


def lagrangian(objective: Objective, plan: Plan) -> Tensor:
    """The primal objective ``||residuals||^2`` of each plan ``[B]`` at fixed multipliers."""
    return residuals(objective, plan).pow(2).sum(1)


def path_return(objective: Objective, features: Tensor, last_action: Tensor) -> Tensor:
    """Eq. 10 of a path of features ``[B, H+1, D]`` (``z_0`` first) whose last action is ``a_H``:
    ``sum_{k=1..H} gamma^k r(z_k) + w gamma^(H+1) V(mu(z_H, a_H))`` ``[B]`` (the constant ``r(z_0)``
    left out; Eq. 8 without a value)."""
    horizon = features.shape[1] - 1
    weights = reward_weights(horizon, objective.gamma, features)
    rewards = (weights * objective.reward(features[:, 1:])).sum(1)
    return rewards + objective.terminal_discount(horizon) * objective.terminal_value(
        features[:, -1], last_action
    )


def planned_return(objective: Objective, plan: Plan) -> Tensor:
    """The plan's own Eq. 10 objective ``[B]``, at its knots."""
    return path_return(objective, plan.features, plan.actions[:, -1])


def rollout_features(dynamics: Callable[[Tensor, Tensor], Tensor], start: Tensor, actions: Tensor) -> Tensor:
    """The features ``[B, K, D]`` reached by executing ``actions [B, K, A]`` from ``start [B, D]``
    under the dynamics ``mu``."""
    features, feature = [], start
    for k in range(actions.shape[1]):
        feature = dynamics(feature, actions[:, k])
        features.append(feature)
    return torch.stack(features, 1)


Policy = Callable[[Tensor], Tensor]


def policy_rollout(
    dynamics: Callable[[Tensor, Tensor], Tensor], policy: Policy, start: Tensor, steps: int
) -> tuple[Tensor, Tensor]:
    """Following ``policy`` from ``start [B, D]`` under the dynamics ``mu`` for ``steps`` steps: the
    features ``[B, steps+1, D]`` (``start`` first) and the policy's action at each ``[B, steps+1, A]``."""
    features, actions = [start], [policy(start)]
    for _ in range(steps):
        features.append(dynamics(features[-1], actions[-1]))
        actions.append(policy(features[-1]))
    return torch.stack(features, 1), torch.stack(actions, 1)


def rollout_return(
    objective: Objective,
    start: Tensor,
    actions: Tensor,
    dynamics: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """Eq. 10 for executing ``actions [B, H+1, A]`` from ``start`` under mu (or ``dynamics``)."""
    features = rollout_features(dynamics or objective.dynamics, start, actions[:, :-1])
    return path_return(objective, torch.cat([start[:, None], features], 1), actions[:, -1])


def sampled_return(objective: Objective, start: Tensor, actions: Tensor, samples: int) -> Tensor:
    """The mean of Eq. 10 over ``samples`` rollouts of ``actions [B, H+1, A]`` from ``start [B, D]``
    under the model's sampled dynamics (PETS-style trajectory sampling): a plan that scores well only
    under the mean dynamics, on a ridge of the model's errors, scores less here."""
    assert objective.sample_dynamics is not None, "sampled scores need the objective's sample_dynamics"
    starts, repeated = start.repeat(samples, 1), actions.repeat(samples, 1, 1)
    return rollout_return(objective, starts, repeated, objective.sample_dynamics).reshape(samples, -1).mean(0)
