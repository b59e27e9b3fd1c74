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
