"""LatCo and ColloDreamer train end to end on real dm_control (tiny settings), pixels and states."""

from pathlib import Path

import numpy as np
import pytest

from collodreamer.config import make_config
from collodreamer.training import Trainer, load_checkpoint, read_metrics

pytestmark = pytest.mark.slow  # trains on real dm_control

PLANNER = ["planner.horizon=6", "planner.iterations=5", "planner.replan_every=3"]


@pytest.mark.parametrize("agent", ["latco", "collodreamer"])
@pytest.mark.parametrize("obs", ["state", "pixels"])
def test_planning_agent_trains_logs_plans_and_resumes(tmp_path: Path, agent, obs):
    overrides = [f"agent={agent}", "env.task=dmc:reacher_easy", f"env.obs={obs}", "run.steps=300", *PLANNER]
    config = make_config(["tiny"], overrides)
    Trainer(config, tmp_path / "run").run()
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    plans = [r for r in records if "plan/dynamics_violation" in r]
    assert plans, "per-plan diagnostics are logged"
    for key in (
        "plan/action_violation",
        "plan/lambda_mean",
        "plan/nu_mean",
        "plan/planned_return",
        "plan/ms",
    ):
        assert all(np.isfinite(r[key]) for r in plans), key
    assert any("test/plan/dynamics_violation" in r for r in records)
    if agent == "collodreamer":
        assert any("value/loss" in r for r in records)
    counters = load_checkpoint(tmp_path / "run" / "checkpoint.pt")["counters"]
    assert counters["env_frames"] == 300 and counters["updates"] > 0
    resumed = Trainer(make_config(overrides=["run.steps=400"], base=config), tmp_path / "run", resume=True)
    assert resumed.counters.updates == counters["updates"]
    resumed.run()
    assert resumed.counters.env_frames == 400
