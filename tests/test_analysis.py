"""The analysis of trained runs: screen specs, the screen's table, the value diagnostics' math, the
posture diagnostics, the latent probe."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from collodreamer.analysis.posture import diagnose_posture, overview, posture_summary
from collodreamer.analysis.probe import (
    design,
    diagnose_latent,
    leave_one_out,
    mlp_leave_one_out,
    r_squared,
    ridge,
    rmse,
    trained_on,
)
from collodreamer.analysis.screen import load_screen, screen, screen_report
from collodreamer.analysis.value import reward_to_go
from collodreamer.config import ConfigError, make_config, preset_dir
from collodreamer.training import Trainer


def test_reward_to_go_by_hand():
    rewards = torch.tensor([1.0, 0.0, 2.0])
    # G_2 = 2, G_1 = 0 + 0.5 * 2, G_0 = 1 + 0.5 * 1
    assert torch.allclose(reward_to_go(rewards, 0.5), torch.tensor([1.5, 1.0, 2.0]))


@pytest.mark.parametrize("name", sorted(p.stem for p in (preset_dir() / "screens").glob("*.yaml")))
def test_every_shipped_screen_variant_is_a_valid_config(name):
    spec = load_screen(name)
    assert spec["variants"]
    for source in spec.get("shares", {}).values():
        assert source in spec["variants"]
    for overrides in spec["variants"].values():
        make_config(["tiny"], [f"agent={spec.get('agent', 'collodreamer')}", *overrides])


@pytest.mark.parametrize(
    "text, message",
    [
        ("variants: {a: []}\nvalue_update: 10\n", "screen spec: unknown keys ['value_update']"),
        ("plans: 3\n", "screen spec: 'variants' maps each variant name to a list"),
        ("variants: {a: planner.iterations=3}\n", "screen spec: 'variants' maps each variant name to a list"),
        ("variants: {a: []}\nshares: {a: b}\n", "screen spec: 'shares' maps a variant to the variant"),
        ("variants: {a: []}\nwarmup: {b: 3}\n", "screen spec: 'warmup' maps a variant to how many episodes"),
        ("variants: {a: []}\nwarmup: {a: -1}\n", "screen spec: 'warmup' maps a variant to how many episodes"),
    ],
)
def test_a_bad_screen_spec_is_one_line_naming_it(tmp_path: Path, text, message):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_screen(str(path))


def test_screen_report_pairs_every_variant_with_the_first(tmp_path: Path):
    spec = {"variants": {"a": [], "b": ["planner.iterations=3"]}}
    for name, returns in (("a", [1.0, 2.0, 3.0]), ("b", [2.0, 4.0, 3.0])):
        row = {
            "variant": name,
            "returns": returns,
            "mean": sum(returns) / 3,
            "ci95": [0.0, 5.0],
            "plan_ms": 10.0,
            "plan_iterations": 3.0,
            "value_train_seconds": 0.0,
            "test_metrics": {"plan/promise_gap": 0.25, "plan/rollout_gap": 0.125},
        }
        (tmp_path / f"{name}.json").write_text(json.dumps(row))
    table = screen_report(spec, tmp_path)
    assert "| b | 3.0 [0.0, 5.0] | +1.0 " in table and "+0.250, +0.125" in table
    rows = json.loads((tmp_path / "screen.json").read_text())["rows"]
    assert rows[1]["paired_difference"] == pytest.approx(1.0)


@pytest.mark.slow
def test_a_warm_up_leaves_a_stateless_agents_test_as_it_was(tmp_path: Path):
    """A tiny latco run held fixed, screened twice: with 2 warm-up episodes first (from other start
    states) the test episodes return exactly what they return without, since latco keeps nothing
    across episodes; the warm-up's returns are recorded."""
    run = tmp_path / "run"
    overrides = ["agent=latco", "env.task=dmc:reacher_easy", "env.obs=state", "run.steps=200"]
    overrides += ["planner.horizon=6", "planner.iterations=5", "planner.replan_every=3"]
    Trainer(make_config(["tiny"], overrides), run).run()
    spec = {"agent": "latco", "variants": {"cold": [], "warm": []}, "warmup": {"warm": 2}}
    screen(run, spec, tmp_path / "screen", episodes=2)
    cold, warm = (json.loads((tmp_path / "screen" / f"{name}.json").read_text()) for name in ("cold", "warm"))
    assert cold["warmup_returns"] == [] and len(warm["warmup_returns"]) == 2
    assert warm["returns"] == cold["returns"]


def test_posture_summary_by_hand():
    # Upright at the start, over at step 2, righted at step 4, over again at step 5.
    summary = posture_summary(np.array([0.9, 0.5, -0.2, -1.0, 0.3, -0.1]), 12.0)
    assert summary == {
        "return": 12.0,
        "upright_start": 0.9,
        "upright_end": -0.1,
        "upright_mean": pytest.approx((0.5 - 0.2 - 1.0 + 0.3 - 0.1) / 5),
        "upright_share": 2 / 5,
        "turned_over_at": 2,
        "righted_at": 4,
    }
    assert posture_summary(np.array([-0.5, -0.6]), 0.0)["turned_over_at"] is None
    # Standing starts are those above 0.5: the first turned over; of the others one ends upright.
    rows = [
        posture_summary(np.array(upright), 1.0)
        for upright in ([0.9, -0.5], [0.8, 0.9], [0.3, -0.2], [-0.4, 0.2, 0.6])
    ]
    assert overview(rows) == {
        "mean_return": 1.0,
        "upright_share": pytest.approx((0 + 1 + 0 + 1) / 4),
        "standing_starts": 2,
        "of_those_turned_over": 1,
        "other_starts": 2,
        "of_those_ending_upright": 1,
    }


def test_posture_of_agent_and_random_actions_from_the_same_starts(tmp_path: Path, dreamer_run: Path):
    run = tmp_path / "quadruped"
    overrides = ["agent=dreamer", "env.task=dmc:quadruped_walk", "env.obs=state", "env.time_limit=40"]
    Trainer(make_config(["tiny"], [*overrides, "run.steps=80", "run.prefill=40"]), run).run()
    result = diagnose_posture(run, episodes=3)
    agent, random = result["agent"], result["random"]
    starts = [row["upright_start"] for row in agent["episodes"]]
    assert starts == [row["upright_start"] for row in random["episodes"]]  # the same start states
    assert len(set(starts)) == 3 and all(-1 <= s <= 1 for s in starts)  # fresh random orientations
    assert agent["standing_starts"] + agent["other_starts"] == 3
    with pytest.raises(ConfigError, match="dmc:reacher_easy has no torso uprightness"):
        diagnose_posture(dreamer_run, episodes=1)


def test_r_squared_by_hand():
    y = np.array([[1.0], [2.0], [3.0]])
    assert r_squared(y, np.array([[1.0], [2.0], [4.0]])) == 0.5  # 1 - 1 / 2
    assert r_squared(y, np.full_like(y, 2.0)) == 0.0  # the mean
    assert r_squared(y, np.array([[3.0], [2.0], [1.0]])) == -3.0  # 1 - 8 / 2
    assert r_squared(np.ones((3, 1)), y) is None  # nothing to explain
    assert rmse(np.zeros((2, 2)), np.array([[3.0, 0.0], [0.0, -1.0]])) == 1.5811  # sqrt(10 / 4), 4 decimals


def test_ridge_is_the_penalised_normal_equations_with_the_bias_free():
    rng = np.random.default_rng(0)
    x = design(rng.normal(size=(50, 3)), np.zeros(3), np.ones(3))
    y = rng.normal(size=(50, 2))
    weights = ridge(x.T @ x, x.T @ y, 2.0)
    # the gradient of |x W - y|^2 + 2 |W without its bias row|^2 vanishes
    gradient = 2 * x.T @ (x @ weights - y) + 2 * 2.0 * np.vstack([weights[:-1], np.zeros((1, 2))])
    np.testing.assert_allclose(gradient, 0.0, atol=1e-9)
    flat = ridge(x.T @ x, x.T @ y, 1e12)  # only the bias is left: the mean
    np.testing.assert_allclose(x @ flat, np.broadcast_to(y.mean(0), y.shape), atol=1e-6)


def test_leave_one_out_reads_a_linear_map_and_falls_back_to_the_mean_on_noise():
    rng = np.random.default_rng(0)
    raw = [rng.normal(size=(200, 4)) * [1.0, 10.0, 0.1, 3.0] + 5.0 for _ in range(5)]
    every = np.concatenate(raw)
    designs = [design(x, every.mean(0), every.std(0)) for x in raw]
    mapping = rng.normal(size=(4, 2))
    exact = [x @ mapping + [1.0, -2.0] for x in raw]
    predicted = leave_one_out(designs, exact, designs)
    for y, (filtered, extra) in zip(exact, predicted, strict=True):
        assert r_squared(y, filtered) > 0.999 and np.array_equal(filtered, extra)
    noise = [rng.normal(size=(200, 1)) for _ in raw]  # nothing to read: the penalty goes to the top
    predicted = leave_one_out(designs, noise, designs)
    assert r_squared(np.concatenate(noise), np.concatenate([p for p, _ in predicted])) > -0.05


def test_mlp_probe_reads_an_angle_drawn_as_a_position_where_the_linear_one_cannot():
    # features hold an angle as a point on a circle (as an image holds the arm's angle); the target is
    # the square of its cosine, nonlinear in the features (a linear probe reads it no better than the mean)
    rng = np.random.default_rng(0)
    angles = [rng.uniform(-np.pi, np.pi, size=(200, 1)) for _ in range(5)]
    raw = [np.concatenate([np.cos(a), np.sin(a), rng.normal(size=(200, 2))], 1) for a in angles]
    every = np.concatenate(raw)
    designs = [design(x, every.mean(0), every.std(0)) for x in raw]
    targets = [np.cos(a) ** 2 for a in angles]
    truth = np.concatenate(targets)
    linear = np.concatenate([p for p, _ in leave_one_out(designs, targets, designs)])
    mlp = mlp_leave_one_out(designs, targets, [x[:7] for x in designs], max_steps=800)
    assert r_squared(truth, linear) < 0.05
    assert r_squared(truth, np.concatenate([p for p, _ in mlp])) > 0.9
    for filtered, extra in mlp:  # the extra rows go through the same fit
        assert filtered.shape == (200, 1) and np.allclose(extra, filtered[:7], atol=1e-5)


def test_latent_probe_of_a_trained_run(dreamer_run: Path, cli, tmp_path: Path):
    result = diagnose_latent(dreamer_run, episodes=3, horizon=4, stride=5)
    assert result["env_frames"] == 200
    # reacher's state observation, then the bodies that move (the arm's base is fixed)
    assert list(result["parts"]) == ["position", "to_target", "velocity", "body:hand", "body:finger"]
    assert list(result["filtered"]) == [*result["parts"], "reward"]
    assert list(result["open_loop"]) == list(result["filtered"])
    assert all(len(row["r2"]) == len(row["rmse"]) == 4 for row in result["open_loop"].values())
    ahead = [v for row in result["open_loop"].values() for v in row["r2"]]
    scored = [v for v in [*(row["r2"] for row in result["filtered"].values()), *ahead] if v is not None]
    assert scored and all(np.isfinite(v) and v <= 1 for v in scored)
    assert all(row["rmse"] >= 0 for row in result["filtered"].values())
    replay = result["reward_on_replay"]
    assert replay["episodes"] == 2 and len(replay["open_loop"]["rmse"]) == 4  # the run has only two
    for name in result["parts"]:  # R^2 = 1 - (RMSE / spread)^2
        r2, error, spread = (
            result["filtered"][name]["r2"],
            result["filtered"][name]["rmse"],
            result["spread"][name],
        )
        assert spread > 0 and r2 == pytest.approx(1 - (error / spread) ** 2, rel=0.05, abs=0.01)
    with pytest.raises(ConfigError, match="at least 3"):
        diagnose_latent(dreamer_run, episodes=2)
    with pytest.raises(ConfigError, match="--probe must be one of linear, mlp"):
        diagnose_latent(dreamer_run, probe="quadratic")
    nonlinear = diagnose_latent(dreamer_run, episodes=3, horizon=4, stride=5, probe="mlp")
    assert nonlinear["probe"] == "mlp" and result["probe"] == "linear"
    assert list(nonlinear["filtered"]) == list(result["filtered"])
    assert nonlinear["filtered"]["reward"] == result["filtered"]["reward"]  # the same episodes, no probe
    # the run's two episodes of 100 env frames: what a checkpoint at 100 and at 200 frames had seen
    first, second = (np.load(path)["reward"] for path in sorted((dreamer_run / "episodes").glob("*.npz")))
    assert [len(e["reward"]) for e in trained_on(dreamer_run, 100, 2, 5)] == [len(first)]
    newest = trained_on(dreamer_run, 200, 2, 5)
    assert len(newest) == 2 and np.array_equal(newest[0]["reward"], second)  # newest first
    out = tmp_path / "latent.json"
    cli("diagnose", "latent", str(dreamer_run), "--episodes", "3", "--out", str(out))
    assert json.loads(out.read_text())["parts"] == result["parts"]
    refused = cli("diagnose", "value", str(dreamer_run), "--checkpoint", "x.pt", check=False)
    assert refused.returncode != 0 and "only diagnose latent reads a kept checkpoint" in refused.stderr
    refused = cli("diagnose", "actor", str(dreamer_run), "--probe", "mlp", check=False)
    assert refused.returncode != 0 and "only diagnose latent probes the latent" in refused.stderr
