"""The collocation planner against Eq. 7, a dense solver, and a problem with a closed-form optimum."""

from dataclasses import replace

import pytest
import torch

from collodreamer.models.networks import MLP
from collodreamer.models.rssm import RSSM
from collodreamer.planning import collocate, dual_update, policy_rollout, random_plan, shifted_plan
from collodreamer.planning.adam import AdamPrimal
from collodreamer.planning.gauss_newton import (
    STEP_SIZES,
    block_tridiagonal_solve,
    gauss_newton_step,
    linearise,
    normal_equations,
    step_size,
)
from collodreamer.planning.problem import Objective, action_excess, lagrangian, residuals
from collodreamer.schema import ModelConfig, PlannerConfig

torch.set_default_dtype(torch.float32)


def test_action_excess_by_hand():
    actions = torch.tensor([-1.5, -0.5, 1.0, 1.2])
    excess, grad = action_excess(actions, "abs")
    assert torch.allclose(excess, torch.tensor([0.5, 0.0, 0.0, 0.2]))
    assert torch.allclose(grad, torch.tensor([-1.0, 0.0, 0.0, 1.0]))
    excess, grad = action_excess(actions, "square")
    assert torch.allclose(excess, torch.tensor([1.25, 0.0, 0.0, 0.44]))
    assert torch.allclose(grad, torch.tensor([-3.0, 0.0, 0.0, 2.4]))
    # At a squared violation of eps = 1e-2, abs allows an overshoot of 0.1, square about 0.049.
    assert action_excess(torch.tensor([1.1]), "abs")[0].pow(2).item() == pytest.approx(1e-2)
    assert action_excess(torch.tensor([1.0488]), "square")[0].pow(2).item() == pytest.approx(1e-2, rel=0.01)


def test_dual_update_matches_eq7():
    lam = torch.tensor([2.0, 2.0, 2.0, 2.0])
    eps = 1e-2
    violation = torch.tensor([0.9 * eps, 0.0, 10 * eps, 1000 * eps])
    updated = dual_update(lam, violation, eps, alpha=0.1, eta=0.1)
    assert updated[0].item() == pytest.approx(2.0)  # fixed point at v = 0.9 eps
    assert updated[1].item() == pytest.approx(2.0 * 0.9)  # shrinks by 10% at v = 0
    expected = 2.0 * (1 + 0.1 * torch.log10(torch.tensor([10.1, 1000.1])))
    assert torch.allclose(updated[2:], expected)


def test_block_tridiagonal_solve_equals_dense_solve():
    torch.manual_seed(0)
    B, K, n = 3, 6, 5
    dense = torch.zeros(B, K * n, K * n, dtype=torch.float64)
    factor = torch.randn(B, K * n, K * n, dtype=torch.float64)
    for k in range(K):  # a random SPD matrix restricted to a block-tridiagonal pattern
        for j in (k - 1, k, k + 1):
            if 0 <= j < K:
                dense[:, k * n : (k + 1) * n, j * n : (j + 1) * n] = 1.0
    matrix = (factor @ factor.transpose(1, 2)) * dense
    matrix = matrix + K * n * torch.eye(K * n, dtype=torch.float64)  # diagonally dominant: SPD
    diag = torch.stack([matrix[:, k * n : (k + 1) * n, k * n : (k + 1) * n] for k in range(K)], 1)
    upper = torch.stack([matrix[:, k * n : (k + 1) * n, (k + 1) * n : (k + 2) * n] for k in range(K - 1)], 1)
    rhs = torch.randn(B, K, n, dtype=torch.float64)
    expected = torch.linalg.solve(matrix, rhs.reshape(B, K * n)).reshape(B, K, n)
    assert torch.allclose(block_tridiagonal_solve(diag, upper, rhs), expected, atol=1e-10)


GOAL = torch.tensor([0.2, 0.4])
START = torch.tensor([[0.5, -0.3]])


def linear_objective() -> Objective:
    """z' = 0.9 z + a, r(z) = 1 - ||z - g||^2: the best plan jumps to g and stays there."""
    return Objective(
        dynamics=lambda z, a: 0.9 * z + a, reward=lambda z: 1.0 - (z - GOAL).pow(2).sum(-1), action_dim=2
    )


def test_planner_reaches_closed_form_optimum():
    torch.manual_seed(0)
    # The dual step settles violations near 0.9 eps, so a tight eps makes the dynamics hold closely.
    config = PlannerConfig(horizon=10, iterations=100, eps_dyn=1e-4)
    result = collocate(linear_objective(), START, config)
    atol = 1e-2
    features, actions = result.plan.features[0], result.plan.actions[0]
    assert torch.allclose(features[0], START[0])  # z_0 is pinned
    assert torch.allclose(features[1:], GOAL.expand(10, 2), atol=atol)
    assert torch.allclose(actions[0], GOAL - 0.9 * START[0], atol=atol)  # a_0 = g - 0.9 z_0
    assert torch.allclose(actions[1:-1], (0.1 * GOAL).expand(9, 2), atol=atol)  # then hold: a = 0.1 g
    assert result.diagnostics["dynamics_violation"] < config.eps_dyn
    assert result.diagnostics["planned_return"] == pytest.approx(10.0, abs=0.05)


def test_adam_primal_gets_close_to_the_optimum():
    """First-order steps (Algorithm 1) are slower and noisier, but feasible and near-optimal."""
    torch.manual_seed(0)
    config = PlannerConfig(horizon=10, iterations=1000, primal="adam", adam_lr=0.02)
    result = collocate(linear_objective(), START, config)
    assert result.diagnostics["dynamics_violation"] < config.eps_dyn
    assert result.diagnostics["planned_return"] > 9.9
    assert torch.allclose(result.plan.features[0, 1:], GOAL.expand(10, 2), atol=0.15)  # ~sqrt(eps) per step


def test_multipliers_stay_bounded():
    lam = dual_update(torch.tensor([1e6, 1e-6]), torch.tensor([1e9, 0.0]), 1e-2, 0.1, 0.1, (1e-6, 1e6))
    assert lam.tolist() == pytest.approx([1e6, 1e-6])


@pytest.mark.parametrize("action_residual", ["abs", "square"])
def test_action_bounds_hold_after_planning(action_residual):
    """A goal 3 units away tempts actions beyond the bounds; the multipliers nu push them back."""
    torch.manual_seed(0)
    far = torch.tensor([3.0, -3.0])
    objective = Objective(
        dynamics=lambda z, a: z + a,
        reward=lambda z: 1.0 - (z - far).pow(2).sum(-1),
        action_dim=2,
        action_residual=action_residual,
    )
    config = PlannerConfig(horizon=8, iterations=150)
    result = collocate(objective, torch.zeros(1, 2), config)
    assert result.diagnostics["action_violation"] < config.eps_act
    assert result.plan.nu.max() > 1.0  # the action multipliers had to grow
    assert result.actions.abs().max() <= 1.0
    # It still heads for the goal as fast as the bounds allow.
    assert result.actions[0, :3].sign().tolist() == [[1.0, -1.0]] * 3


def tiny_world_objective(latent: str) -> tuple[Objective, int]:
    torch.manual_seed(0)
    config = ModelConfig(latent=latent, deter=12, stoch=4, classes=3, hidden=16)
    rssm = RSSM(config, action_dim=2, embed_dim=5).requires_grad_(False)
    reward = MLP(rssm.feature_dim, 1, 16, 2).requires_grad_(False)
    objective = Objective(rssm.next_feature_mean, lambda z: reward(z).squeeze(-1), action_dim=2, gamma=0.99)
    return objective, rssm.feature_dim


@pytest.mark.parametrize("latent", ["gaussian", "categorical"])
def test_both_primal_steps_reduce_the_lagrangian(latent):
    objective, dim = tiny_world_objective(latent)
    plan = random_plan(torch.randn(4, dim), horizon=6, action_dim=2, config=PlannerConfig())
    plan = replace(plan, lam=torch.rand_like(plan.lam) * 5, nu=torch.rand_like(plan.nu) * 5)
    before = lagrangian(objective, plan)
    after_gn = lagrangian(objective, gauss_newton_step(objective, plan, damping=1e-3)[0])
    assert torch.all(after_gn < before)
    adam = AdamPrimal(plan, lr=0.01)
    stepped = plan
    for _ in range(5):
        stepped = adam.step(objective, stepped)[0]
    assert torch.all(lagrangian(objective, stepped) < before)
    assert torch.equal(stepped.features[:, 0], plan.features[:, 0])


@pytest.mark.parametrize("action_residual", ["abs", "square"])
def test_gauss_newton_solves_the_linearised_least_squares_problem(action_residual):
    """The block assembly equals the dense normal equations built from autograd's full Jacobian."""
    objective, dim = tiny_world_objective("gaussian")
    objective = replace(objective, action_residual=action_residual)
    torch.manual_seed(1)
    plan = random_plan(torch.randn(2, dim), horizon=4, action_dim=2, config=PlannerConfig())
    plan = replace(
        plan, lam=torch.rand_like(plan.lam) * 3, nu=torch.rand_like(plan.nu) * 3, actions=plan.actions * 2
    )  # some actions out of bounds
    stepped = gauss_newton_step(objective, plan, damping=1e-3)[0]
    for b in range(2):
        single = replace(
            plan, **{k: getattr(plan, k)[b : b + 1] for k in ("features", "actions", "lam", "nu")}
        )
        x0 = torch.cat([single.features[0, 1:].flatten(), single.actions[0].flatten()])
        n_z = single.features[0, 1:].numel()

        def res(x, single=single, n_z=n_z):
            features = torch.cat([single.features[:, :1], x[:n_z].reshape(1, -1, dim)], 1)
            return residuals(
                objective, replace(single, features=features, actions=x[n_z:].reshape(1, -1, 2))
            )[0]

        J = torch.autograd.functional.jacobian(res, x0)
        r = res(x0)
        dx = torch.linalg.solve(2 * J.T @ J + 1e-3 * torch.eye(len(x0)), 2 * J.T @ r)
        expected = x0 - dx
        got = torch.cat([stepped.features[b, 1:].flatten(), stepped.actions[b].flatten()])
        assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()


def test_batched_plans_pick_the_best_and_nan_plans_are_zeroed(caplog):
    objective = linear_objective()
    config = PlannerConfig(horizon=5, iterations=30, plans=3)
    result = collocate(objective, torch.cat([START, START]), config)
    assert result.actions.shape == (2, 6, 2) and result.plan.features.shape == (2, 6, 2)
    nan_objective = Objective(
        dynamics=lambda z, a: z + a * float("nan"), reward=lambda z: -z.pow(2).sum(-1), action_dim=2
    )
    result = collocate(nan_objective, START, replace(config, plans=1, iterations=2))
    assert torch.equal(result.actions, torch.zeros_like(result.actions))
    assert "went non-finite" in caplog.text and result.diagnostics["nonfinite_plans"] == 1


def test_shifted_plan_warm_start():
    torch.manual_seed(0)
    config = PlannerConfig(horizon=6)
    previous = random_plan(torch.zeros(1, 3), 6, 2, config)
    previous = replace(previous, lam=previous.lam * 7)
    start = torch.ones(1, 3)
    init = shifted_plan(previous, 2, start, config)
    assert torch.equal(init.features[:, 0], start)
    assert torch.equal(init.features[:, 1:5], previous.features[:, 3:])
    assert torch.equal(init.actions[:, :5], previous.actions[:, 2:])
    assert torch.all(init.lam == config.init_lambda)


def test_early_stop_reports_iterations():
    config = PlannerConfig(horizon=10, iterations=200, tolerance=1e-4)
    result = collocate(linear_objective(), START, config)
    assert result.diagnostics["iterations"] < 200
    assert result.diagnostics["dynamics_violation"] < config.eps_dyn


def test_normal_equations_are_the_dense_jtj_and_jtr_block_by_block():
    objective, dim = tiny_world_objective("gaussian")
    torch.manual_seed(2)
    plan = random_plan(torch.randn(1, dim), horizon=3, action_dim=2, config=PlannerConfig())
    plan = replace(
        plan, lam=torch.rand_like(plan.lam) * 3, nu=torch.rand_like(plan.nu) * 3, actions=plan.actions * 2
    )
    hessian, upper, gradient = normal_equations(objective, plan, linearise(objective, plan))
    n = dim + 2

    def res(x):  # all knots' [z, a] as one vector, z_0 included
        knots = x.reshape(1, 4, n)
        return residuals(objective, replace(plan, features=knots[..., :dim], actions=knots[..., dim:]))[0]

    x0 = torch.cat([plan.features, plan.actions], -1).flatten()
    J = torch.autograd.functional.jacobian(res, x0)
    J[:, :dim] = 0.0  # z_0 is pinned
    jtj, jtr = J.T @ J, J.T @ res(x0)
    for k in range(4):
        block = slice(k * n, (k + 1) * n)
        assert torch.allclose(hessian[0, k], jtj[block, block], atol=1e-5)
        assert torch.allclose(gradient[0, k], jtr[block], atol=1e-5)
        if k < 3:
            assert torch.allclose(upper[0, k], jtj[block, slice((k + 1) * n, (k + 2) * n)], atol=1e-5)


def test_step_size_takes_the_candidate_with_the_lowest_objective():
    objective, dim = tiny_world_objective("gaussian")
    torch.manual_seed(3)
    plan = random_plan(torch.randn(2, dim), horizon=3, action_dim=2, config=PlannerConfig())
    step = torch.randn(2, 4, dim + 2)
    step[:, 0, :dim] = 0.0
    chosen = step_size(objective, plan, step)
    for b in range(2):
        single = replace(
            plan, **{k: getattr(plan, k)[b : b + 1] for k in ("features", "actions", "lam", "nu")}
        )
        values = [
            lagrangian(
                objective,
                replace(
                    single,
                    features=single.features - size * step[b : b + 1, ..., :dim],
                    actions=single.actions - size * step[b : b + 1, ..., dim:],
                ),
            ).item()
            for size in STEP_SIZES
        ]
        assert chosen[b].item() == pytest.approx(STEP_SIZES[values.index(min(values))])


def test_block_solve_falls_back_to_double_precision_where_single_fails():
    """A Hilbert block of size 9 is positive definite, but its single-precision Cholesky fails."""
    n = 9
    hilbert = torch.tensor([[1.0 / (i + j + 1) for j in range(n)] for i in range(n)])
    assert torch.linalg.cholesky_ex(hilbert).info.item() != 0
    assert torch.linalg.cholesky_ex(hilbert.double()).info.item() == 0
    diag = torch.stack([hilbert, torch.eye(n) * 2.0])[None].repeat(2, 1, 1, 1)
    diag[1, 0] = torch.eye(n) * 3.0  # the second system factorises in single precision
    upper = torch.full((2, 1, n, n), 1e-4)
    rhs = torch.randn(2, 2, n)
    x = block_tridiagonal_solve(diag, upper, rhs)
    for b in range(2):
        dense = torch.zeros(2 * n, 2 * n, dtype=torch.float64)
        dense[:n, :n], dense[n:, n:] = diag[b, 0], diag[b, 1]
        dense[:n, n:], dense[n:, :n] = upper[b, 0], upper[b, 0].T
        expected = torch.linalg.solve(dense, rhs[b].flatten().double()).reshape(2, n)
        assert torch.allclose(x[b].double(), expected, rtol=1e-2, atol=1e-2 * expected.abs().max().item())


def test_policy_rollout_by_hand():
    # z' = z + a under a = -z / 2 halves z each step; the last action is the policy's at the last z
    features, actions = policy_rollout(lambda z, a: z + a, lambda z: -0.5 * z, torch.ones(1, 1), 2)
    assert features.flatten().tolist() == [1.0, 0.5, 0.25]
    assert actions.flatten().tolist() == [-0.5, -0.25, -0.125]
