"""Shared fixtures. Tests run on real dm_control tasks, rendered headless."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("CI", "true")  # quiet progress bars in subprocesses


def run_cli(
    *args: str, cwd: Path | None = None, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run ``python -m collodreamer ARGS`` as a real subprocess."""
    result = subprocess.run(
        [sys.executable, "-m", "collodreamer", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"collodreamer {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="module")
def dreamer_run(tmp_path_factory) -> Path:
    """A finished tiny Dreamer run from states: 200 env frames, 2 episodes, 4 updates."""
    from collodreamer.config import make_config
    from collodreamer.training import Trainer

    run = tmp_path_factory.mktemp("dreamer") / "run"
    overrides = ["agent=dreamer", "env.task=dmc:reacher_easy", "env.obs=state", "run.steps=200"]
    overrides += ["planner.horizon=6", "planner.iterations=5", "planner.replan_every=3"]  # as test_faults
    Trainer(make_config(["tiny"], overrides), run).run()
    return run


def assert_dense_gauss_newton_step(objective, plan) -> None:
    """One Gauss-Newton step without line search (damping 1e-3) on ``plan`` (one plan, horizon 3, 2-d
    features and actions) equals the dense solve of the linearised problem,
    ``(2 J^T J + 1e-3 I) dx = 2 J^T r``."""
    from dataclasses import replace

    import torch

    from collodreamer.planning.gauss_newton import gauss_newton_step
    from collodreamer.planning.problem import residuals

    stepped = gauss_newton_step(objective, plan, damping=1e-3, line_search=False)[0]
    x0 = torch.cat([plan.features[0, 1:].flatten(), plan.actions[0].flatten()])

    def res(x):
        features = torch.cat([plan.features[:, :1], x[:6].reshape(1, 3, 2)], 1)
        return residuals(objective, replace(plan, features=features, actions=x[6:].reshape(1, 4, 2)))[0]

    J = torch.autograd.functional.jacobian(res, x0)
    dx = torch.linalg.solve(2 * J.T @ J + 1e-3 * torch.eye(len(x0)), 2 * J.T @ res(x0))
    got = torch.cat([stepped.features[0, 1:].flatten(), stepped.actions[0].flatten()])
    assert torch.allclose(got, x0 - dx, rtol=1e-4, atol=1e-4)
