"""collodreamer report on real tiny runs: open-loop predictions and plan traces."""

import json
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from collodreamer.analysis.prediction import CONTEXT, open_loop, open_loop_errors, trace_plan
from collodreamer.analysis.report import pixel_triptych, write_report
from collodreamer.config import make_config
from collodreamer.data import EpisodeStore
from collodreamer.envs import make_env
from collodreamer.training import Trainer, load_agent

pytestmark = pytest.mark.slow


def tiny_run(tmp_path: Path, agent: str, obs: str) -> Path:
    config = make_config(
        ["tiny"],
        [
            f"agent={agent}",
            "env.task=dmc:reacher_easy",
            f"env.obs={obs}",
            "run.steps=200",
            "planner.iterations=5",
        ],
    )
    Trainer(config, tmp_path / f"{agent}-{obs}").run()
    return tmp_path / f"{agent}-{obs}"


def test_state_report_predicts_open_loop_and_traces_a_plan(tmp_path):
    run = tiny_run(tmp_path, "collodreamer", "state")
    config, agent, _ = load_agent(run)
    store = EpisodeStore.read(run / "episodes", 2)
    episode = store.episodes[-1]
    prediction = open_loop(agent, episode, context=5)
    assert prediction.predicted_obs.shape == episode["obs"].shape
    assert np.array_equal(prediction.real_obs, episode["obs"])
    assert len(prediction.predicted_reward) == len(episode["reward"])
    # from a start step s, the errors a horizon ahead are open_loop's with s as its last filtered step
    horizon, stride = 4, 7
    torch.manual_seed(0)  # the same posterior samples for the steps both filter
    rewards, observations = open_loop_errors(agent, episode, horizon, stride)
    starts = range(CONTEXT - 1, len(episode["reward"]) - horizon, stride)
    assert rewards.shape == (len(starts), horizon) and observations.shape == (len(starts),)
    for row, start in enumerate(starts):
        torch.manual_seed(0)
        ahead = open_loop(agent, episode, context=start + 1)
        steps = slice(start + 1, start + 1 + horizon)
        expected = ahead.predicted_reward[steps] - ahead.real_reward[steps]
        np.testing.assert_allclose(rewards[row], expected, rtol=1e-4, atol=1e-5)
        last = start + horizon
        squared = (ahead.predicted_obs[last] - ahead.real_obs[last]) ** 2
        assert observations[row] == pytest.approx(squared.mean(), rel=1e-4, abs=1e-6)
    env = make_env(config.env, 123)
    trace = trace_plan(agent, env, warmup=3)
    env.close()
    horizon = config.planner.horizon
    assert trace.planned_obs.shape == trace.real_obs.shape == (horizon + 1, episode["obs"].shape[1])
    assert len(trace.lambda_mean) == len(trace.dynamics_violation) == config.planner.iterations
    files = write_report(run, tmp_path / "report", episodes=1, plans=1)
    assert sorted(p.name for p in files) == ["plan_0.png", "prediction_0.png", "promise.json", "promise.png"]
    assert all(p.stat().st_size > 0 for p in files)
    promise = json.loads((tmp_path / "report" / "promise.json").read_text())
    # tiny episodes of 50 agent steps, replanning every 15: three complete segments
    assert len(promise["segments"]["paid_reward"]) == len(promise["segments"]["value_real"]) == 3
    assert promise["promise_gap"] == pytest.approx(promise["promised_reward"] - promise["paid_reward"])


def test_pixel_report_writes_truth_prediction_and_error(tmp_path):
    run = tiny_run(tmp_path, "latco", "pixels")
    files = write_report(run, tmp_path / "report", episodes=1, plans=1)
    names = sorted(p.name for p in files)
    assert names == [
        "plan_0.png",
        "plan_0_frames.png",
        "prediction_0.gif",
        "prediction_0.png",
        "promise.json",
        "promise.png",
    ]
    gif = imageio.mimread(tmp_path / "report" / "prediction_0.gif")
    assert gif[0].shape[:2] == (64, 3 * 64)  # truth | prediction | error
    _, agent, _ = load_agent(run)
    store = EpisodeStore.read(run / "episodes", 2)
    frames = pixel_triptych(open_loop(agent, store.episodes[-1], context=5))
    assert np.array_equal(frames[:, :, :64], store.episodes[-1]["obs"])  # the left third is the truth
