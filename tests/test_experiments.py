"""Sweeps (local and Ray), resuming interrupted sweeps, failures, figures and statistics."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from collodreamer.config import ConfigError, make_config, save_config
from collodreamer.experiments import (
    evaluate_runs,
    expand,
    find_runs,
    keep_records,
    load_spec,
    make_figures,
    run_sweep,
    runs_to_train,
    shared_sources,
)
from collodreamer.experiments.stats import aggregate, bootstrap_ci, iqm, probability_of_improvement
from collodreamer.experiments.sweep import RunSpec, check_memory, memory_needed, run_state
from collodreamer.training import load_checkpoint
from collodreamer.training.checkpoint import save_checkpoint

TINY_SPEC = {
    "name": "tiny",
    "agents": ["random", "dreamer"],
    "tasks": [{"task": "dmc:reacher_easy", "steps": 200}],
    "obs": "state",
    "seeds": 1,
    "presets": ["tiny"],
    "overrides": ["run.eval_every=100"],
}


def test_spec_expansion_is_the_exact_grid():
    spec = {
        "name": "grid",
        "agents": ["latco", "collodreamer"],
        "obs": "state",
        "seeds": [3, 5],
        "presets": ["tiny"],
        "tasks": [{"task": "dmc:cheetah_run", "steps": 300}, "dmc:reacher_easy"],
        "overrides": ["run.eval_start=100"],
        "variants": {"base": [], "gamma_095": ["value.gamma=0.95"]},
    }
    sweep = expand(spec)
    assert len(sweep.runs) == 2 * 2 * 2 * 2
    assert len({run.name for run in sweep.runs}) == 16
    assert [run.seed for run in sweep.runs] == [3] * 8 + [5] * 8  # whole seeds first
    run = next(r for r in sweep.runs if r.name == "gamma_095-collodreamer-cheetah_run-state-s5")
    assert (run.agent, run.task, run.seed, run.steps) == ("collodreamer", "dmc:cheetah_run", 5, 300)
    assert run.overrides == ("run.eval_start=100", "value.gamma=0.95")
    assert next(r for r in sweep.runs if r.task == "dmc:reacher_easy").steps == 400  # the tiny preset's
    # Presets for one agent's runs only: the paper's value settings for collodreamer, none for latco.
    paper = expand({**spec, "agent_presets": {"collodreamer": ["collodreamer_paper"]}})
    presets = {r.agent: r.presets for r in paper.runs}
    assert presets == {"latco": ("tiny",), "collodreamer": ("tiny", "collodreamer_paper")}
    with pytest.raises(Exception, match="unknown config key 'value.gama'"):
        expand({**spec, "variants": {"typo": ["value.gama=0.9"]}})
    with pytest.raises(Exception, match="unknown keys"):
        expand(load_spec_from({**spec, "agent": "x"}))
    malformed = [
        ({"seeds": 2.0}, "'seeds' is a positive count or a list of seeds, got 2.0"),
        ({"tasks": [{"steps": 100}]}, "a task is dmc:<domain>_<task>, gym:<id> or {task: ..., steps: N}"),
        ({"tasks": ["dmc:cheetah_fly"]}, "unknown task 'dmc:cheetah_fly'"),
        ({"tasks": "dmc:cheetah_run"}, "'tasks' is a list"),
        ({"variants": ["value.gamma=0.95"]}, "'variants' maps each variant name to a list"),
        ({"agent_presets": ["paper"]}, "'agent_presets' maps an agent to a list of presets"),
    ]
    for change, message in malformed:
        with pytest.raises(ConfigError) as error:
            expand({**spec, **change})
        assert message in str(error.value)


def load_spec_from(spec: dict) -> dict:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"spec-{os.getpid()}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_spec(path)


def test_paper_experiment_specs_expand():
    names = [p.stem for p in (Path(__file__).parents[1] / "configs" / "experiments").glob("*.yaml")]
    for figure in ("fig13", "fig5", "fig1", "fig2", "fig3", "fig6", "fig7", "fig12"):
        assert figure in names and f"{figure}_states" in names
    for name in names:
        assert expand(load_spec(Path(name))).runs
    # an ablation names the variant the others are compared to, and it must be one of them
    assert expand(load_spec(Path("fig6_states"))).baseline == "deter_300"
    spec = {**load_spec(Path("fig7_states")), "baseline": "gamma_0.999"}
    with pytest.raises(ConfigError, match="baseline 'gamma_0.999' is none of the variants: gamma_0.9,"):
        expand(spec)
    for plots in (["test/return"], [{"metric": "test/return", "file": "a.png"}]):
        with pytest.raises(ConfigError, match="'plots' is a list of {metric: NAME} entries"):
            expand({**load_spec(Path("fig7_states")), "plots": plots})


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", "ray"])
def test_tiny_sweep_end_to_end(tmp_path: Path, backend):
    sweep = expand(TINY_SPEC)
    if backend == "ray":
        ray = pytest.importorskip("ray")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        outcomes = run_sweep(sweep, tmp_path, backend=backend, workers=2)
    finally:
        if backend == "ray":
            ray.shutdown()
    assert outcomes == {run.name: "done" for run in sweep.runs}
    figures = make_figures([tmp_path], ["test/return", "train/return"], tmp_path / "out", "tiny")
    assert all(path.stat().st_size > 1000 for path in figures[:2])
    table = figures[-1].read_text()
    assert "| reacher_easy | dreamer | 1 | 200 |" in table and "| reacher_easy | random | 1 | 200 |" in table


@pytest.mark.slow
def test_a_failing_run_does_not_stop_the_sweep(tmp_path: Path):
    sweep = expand({**TINY_SPEC, "seeds": 2, "agents": ["random"]})
    run_sweep(sweep, tmp_path, workers=2)
    broken = tmp_path / sweep.runs[0].name / "checkpoint.pt"
    broken.write_bytes(b"garbage")  # the run looks unfinished, and resuming it fails
    longer = expand(
        {**TINY_SPEC, "seeds": 2, "agents": ["random"], "tasks": [{"task": "dmc:reacher_easy", "steps": 300}]}
    )
    outcomes = run_sweep(longer, tmp_path, workers=2)
    assert outcomes[sweep.runs[0].name].startswith("failed: collodreamer: error: checkpoint")
    assert outcomes[sweep.runs[1].name] == "done"
    assert load_checkpoint(tmp_path / sweep.runs[1].name / "checkpoint.pt")["counters"]["env_frames"] == 300
    assert broken.read_bytes() == b"garbage"


def dreamer_sweep(tmp_path: Path, seeds: int, steps: int) -> tuple[dict, Path, list[str]]:
    """A sweep of tiny Dreamer runs on one worker, checkpointing every 100 env frames (its updates make
    each run last seconds, long enough to be caught in the middle): the spec, root and command."""
    spec = {
        **TINY_SPEC,
        "agents": ["dreamer"],
        "seeds": seeds,
        "tasks": [{"task": "dmc:reacher_easy", "steps": steps}],
        "overrides": ["run.eval_every=100000", "run.checkpoint_every=100"],
    }
    spec_path, root = tmp_path / "spec.yaml", tmp_path / "sweep"
    spec_path.write_text(yaml.safe_dump(spec))
    command = [sys.executable, "-m", "collodreamer", "sweep", str(spec_path), "--root", str(root)]
    return spec, root, [*command, "--workers", "1"]


def test_a_run_is_done_only_after_its_final_test(tmp_path: Path):
    """A run stopped between its last update and its final test has a checkpoint at its budget; the
    sweep resumes it (the test runs then) rather than skipping it."""
    run = RunSpec("r", "dreamer", "dmc:reacher_easy", "state", 0, 800, "", ("tiny",), ())
    run_dir = tmp_path / "r"
    assert run_state(run, tmp_path) == "new"
    run_dir.mkdir()
    metrics = run_dir / "metrics.jsonl"
    for frames, tests, state in ((600, [0], "resume"), (800, [0], "resume"), (800, [0, 800], "done")):
        save_checkpoint(run_dir / "checkpoint.pt", {"counters": {"env_frames": frames}})
        metrics.write_text("".join(json.dumps({"step": t, "test/return": 1.0}) + "\n" for t in tests))
        assert run_state(run, tmp_path) == state, (frames, tests)
    metrics.unlink()
    assert run_state(run, tmp_path) == "resume"


@pytest.mark.slow
def test_killed_sweep_skips_finished_runs_and_resumes_the_rest(tmp_path: Path):
    spec, root, command = dreamer_sweep(tmp_path, seeds=3, steps=800)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    names = [run.name for run in expand(spec).runs]
    deadline = time.time() + 300
    while time.time() < deadline:  # the first run is done and the second has a checkpoint
        second = root / names[1] / "checkpoint.pt"
        if second.exists() and load_checkpoint(second)["counters"]["env_frames"] >= 100:
            break
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(2)  # the orphaned run gets SIGTERM from the kernel and lets go of its directory
    assert load_checkpoint(root / names[0] / "checkpoint.pt")["counters"]["env_frames"] == 800
    assert load_checkpoint(second)["counters"]["env_frames"] < 800
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"{names[0]}: skipped" in result.stdout
    assert f"{names[1]}: done" in result.stdout and f"{names[2]}: done" in result.stdout
    assert "--resume" in (root / names[1] / "train.log").read_text()
    assert "2 to run on local" in result.stderr and "finished (2 of 2)" in result.stderr  # progress
    assert "800 env frames: test return" in (root / names[2] / "train.log").read_text()
    for name in names:
        assert load_checkpoint(root / name / "checkpoint.pt")["counters"]["env_frames"] == 800


@pytest.mark.slow
def test_a_stopped_sweep_starts_no_more_runs_and_its_running_one_checkpoints(tmp_path: Path):
    spec, root, command = dreamer_sweep(tmp_path, seeds=2, steps=2000)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first, second = (root / run.name for run in expand(spec).runs)
    deadline = time.time() + 300
    while time.time() < deadline and not (first / "checkpoint.pt").exists():
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)  # not after every run of the sweep
    assert process.returncode == 143 and "stopped by SIGTERM" in stderr.strip().splitlines()[-1]
    assert load_checkpoint(first / "checkpoint.pt")["counters"]["env_frames"] < 2000
    assert not second.exists()


def test_iqm_and_bootstrap_by_hand():
    assert iqm(np.array([1, 2, 3, 4, 5, 6, 7, 100])) == pytest.approx(np.mean([3, 4, 5, 6]))
    assert iqm(np.array([1.0, 2.0, 9.0])) == pytest.approx(4.0)  # too few to trim: the mean
    low, high = bootstrap_ci(np.array([1.0, 2.0, 3.0, 4.0]))
    assert 1.0 <= low < 2.5 < high <= 4.0
    assert bootstrap_ci(np.array([5.0])) == (5.0, 5.0)


def test_table_compares_seeds_at_the_latest_test_point_they_all_reached():
    from collodreamer.experiments.plots import RunData, results_table

    def run(seed, tests):
        records = [{"step": s, "test/return": v} for s, v in tests] + [{"step": 30000, "train/return": 5.0}]
        return RunData(f"s{seed}", "latco", "dmc:reacher_easy", "state", seed, "", records)

    # seed 0 is ahead (tested at 20k), seed 1 was cut short after its 10k test
    ahead, behind = run(0, [(0, 1.0), (10000, 100.0), (20000, 900.0)]), run(1, [(0, 3.0), (10000, 300.0)])
    row = results_table([ahead, behind]).splitlines()[-1]
    assert row.startswith("| reacher_easy | latco | 2 | 30000 | 5.0 [5.0, 5.0] | 5.0 | 10000 | 200.0 [")
    assert row.endswith("| 200.0 |")


def test_paired_differences_by_hand(tmp_path: Path):
    from collodreamer.experiments.plots import RunData, paired_differences, write_differences

    def run(task, variant, seed, tests):
        records = [{"step": s, "test/return": v} for s, v in tests]
        return RunData(f"{variant}-{seed}", "collodreamer", task, "state", seed, variant, records)

    runs = [
        run("dmc:a", "on", 0, [(0, 1.0), (20000, 500.0)]),
        run("dmc:a", "on", 1, [(0, 1.0), (20000, 300.0)]),
        run("dmc:a", "off", 0, [(0, 1.0), (20000, 450.0)]),
        run("dmc:a", "off", 1, [(0, 1.0), (10000, 200.0)]),  # cut short: paired at 10k, which "on" lacks
        run("dmc:b", "on", 0, [(20000, 100.0)]),
        run("dmc:b", "off", 0, [(20000, 160.0)]),
        run("dmc:b", "off", 7, [(20000, 999.0)]),  # no seed 7 in the baseline: unpaired, left out
    ]
    rows = paired_differences(runs, "on")
    a, b, pooled = rows
    assert (a["task"], a["line"], a["seeds"], a["differences"]) == ("dmc:a", "off", [0, 1], [-50.0, 0.0])
    assert a["env_frames"] == [20000, 0]  # seed 1's latest test common to both runs is at 0
    assert a["mean"] == pytest.approx(-25.0) and a["ci"][0] <= -25.0 <= a["ci"][1]
    assert (b["seeds"], b["differences"]) == ([0], [60.0])
    assert pooled["task"] == "all" and pooled["pairs"] == 3 and pooled["mean"] == pytest.approx(10.0 / 3)
    # stratified: each resample draws task a's two pairs from {-50, 0} and keeps task b's one, so the
    # pooled mean is one of (-100 + 60) / 3, (-50 + 60) / 3, (0 + 60) / 3
    assert -40.0 / 3 - 1e-9 <= pooled["ci"][0] <= pooled["ci"][1] <= 20.0 + 1e-9
    table, data = write_differences(runs, "on", tmp_path, "fig")
    assert "| a | off | s0: -50.0 (at 20000), s1: +0.0 (at 0) | -25.0 [" in table.read_text()
    assert json.loads(data.read_text())["baseline"] == "on"
    with pytest.raises(ConfigError, match="baseline 'onn' is none of the lines: off, on"):
        paired_differences(runs, "onn")
    # any test metric pairs as the return does: at the latest test point both runs reached
    for r in runs:
        r.records = [{"step": x["step"], "test/plan/promise_gap": x["test/return"]} for x in r.records]
    assert paired_differences(runs, "on", "test/plan/promise_gap") == rows


def test_paired_differences_of_a_metrics_final_values(tmp_path: Path):
    from collodreamer.experiments.plots import FINAL_RECORDS, RunData, paired_differences, write_differences

    def run(agent, seed, losses):
        records = [{"step": 1000 * (i + 1), "model/reward_loss": v} for i, v in enumerate(losses)]
        records.append({"step": 1000 * len(losses), "test/return": 10.0 * seed})
        return RunData(f"{agent}-{seed}", agent, "dmc:a", "state", seed, "", records)

    old = [100.0] * 4  # older than the last FINAL_RECORDS records: they do not count
    runs = [
        run("latco", 0, old + [2.0] * FINAL_RECORDS),
        run("collodreamer", 0, old + [3.0] * (FINAL_RECORDS - 1) + [8.0]),  # final value 4.0
        run("latco", 1, [1.0] * FINAL_RECORDS),
        run("collodreamer", 1, [1.5] * FINAL_RECORDS),
        run("dreamer", 1, []),  # never logged the metric: left out of the pairs
    ]
    row, pooled = paired_differences(runs, "latco", "model/reward_loss")
    assert (row["line"], row["seeds"], row["differences"]) == ("collodreamer", [0, 1], [2.0, 0.5])
    assert row["env_frames"] == [1000 * (len(old) + FINAL_RECORDS), 1000 * FINAL_RECORDS]
    assert pooled["pairs"] == 2 and pooled["mean"] == pytest.approx(1.25)
    table, data = write_differences(runs, "latco", tmp_path, "fig", ("model/reward_loss",))
    late, early = row["env_frames"]
    assert f"| a | collodreamer | s0: +2 (at {late}), s1: +0.5 (at {early}) | +1.25 [" in table.read_text()
    final = json.loads(data.read_text())["final_values"]["model/reward_loss"]
    assert final[0]["differences"] == [2.0, 0.5]


def test_metrics_table_gives_each_runs_final_records_over_seeds():
    from collodreamer.experiments.plots import FINAL_RECORDS, RunData, metrics_table

    def run(seed, gaps):
        records = [{"step": 1000 * (i + 1), "plan/promise_gap": g} for i, g in enumerate(gaps)]
        return RunData(f"s{seed}", "latco", "dmc:reacher_easy", "state", seed, "", records)

    early = [9.0] * 3  # older records than the last FINAL_RECORDS do not count
    runs = [run(0, early + [0.1] * FINAL_RECORDS), run(1, early + [0.3] * FINAL_RECORDS)]
    row = metrics_table(runs, ["plan/promise_gap", "model/kl"]).splitlines()[-1]
    assert row.startswith("| reacher_easy | latco | 2 | 0.2 [0.1") and row.endswith("0.3] | - |")
    for seed, final_test in ((0, 0.5), (1, 0.7)):  # a test metric's final value is the final test's
        runs[seed].records += [{"step": 1000 * k, "test/plan/promise_gap": 9.0} for k in range(1, 5)]
        runs[seed].records.append({"step": 5000, "test/plan/promise_gap": final_test})
    row = metrics_table(runs, ["test/plan/promise_gap"]).splitlines()[-1]
    assert row.startswith("| reacher_easy | latco | 2 | 0.6 [0.5")


def test_probability_of_improvement_by_hand():
    x = {"a": np.array([3.0, 1.0]), "b": np.array([5.0])}
    y = {"a": np.array([2.0, 1.0]), "b": np.array([4.0, 6.0])}
    # task a: pairs (3>2, 3>1, 1<2, 1=1) -> (1 + 1 + 0 + 0.5) / 4; task b: (5>4, 5<6) -> 1/2
    assert probability_of_improvement(x, y) == pytest.approx((2.5 / 4 + 0.5) / 2)
    assert probability_of_improvement(y, x) == pytest.approx(1 - (2.5 / 4 + 0.5) / 2)


def test_aggregate_iqm_and_stratified_intervals():
    rng = np.random.default_rng(0)
    scores = {
        "good": {"t1": rng.normal(0.8, 0.05, 5), "t2": rng.normal(0.6, 0.05, 5)},
        "bad": {"t1": rng.normal(0.2, 0.05, 5), "t2": rng.normal(0.1, 0.05, 5)},
    }
    result = aggregate(scores, samples=500)
    good = result["agents"]["good"]
    assert good["iqm"] == pytest.approx(iqm(np.concatenate([scores["good"]["t1"], scores["good"]["t2"]])))
    assert good["ci"][0] <= good["iqm"] <= good["ci"][1] and good["runs"] == 10
    assert result["probability_of_improvement"]["good>bad"] == 1.0
    assert result["probability_of_improvement"]["bad>good"] == 0.0
    # A resample keeps each task's runs apart: the interval of a task-separated agent stays inside
    # the range its task means span.
    assert good["ci"][0] > 0.5 and good["ci"][1] < 0.85


def test_sweep_whose_runs_cannot_fit_in_memory_is_refused(tmp_path: Path):
    spec = {**TINY_SPEC, "obs": "pixels", "agents": ["random"], "seeds": 4}
    sweep = expand({**spec, "tasks": [{"task": "dmc:reacher_easy", "steps": 1_000_000}]})
    # a million env frames at action repeat 2, images held at most 1 / 2.4 of 12 KiB each, plus 1 GiB
    assert memory_needed(sweep.runs[0]) == int(500_000 * (64 * 64 * 3 / 2.4 + 1024)) + 2**30
    with pytest.raises(
        ConfigError, match=r"^4 runs at once may need 15\.4 GiB of memory, 8\.0 GiB are available"
    ):
        check_memory(sweep.runs, 4, 8 * 2**30)
    check_memory(sweep.runs, 2, 8 * 2**30)  # two at a time fit
    huge = expand(
        {
            **spec,
            "overrides": ["replay.capacity=1000000000"],
            "tasks": [{"task": "dmc:reacher_easy", "steps": 10**9}],
        }
    )
    with pytest.raises(ConfigError, match="lower --workers or replay.capacity"):
        run_sweep(huge, tmp_path / "sweep", workers=1)
    assert not (tmp_path / "sweep").exists()  # refused before anything was written


def test_the_learning_benchmark_is_a_sweep_spec():
    sweep = expand(load_spec("learning_states"))
    agents = ("collodreamer", "latco", "dreamer")
    names = [f"base-{agent}-reacher_easy-state-s{seed}" for agent in agents for seed in (0, 1)]
    assert sorted(run.name for run in sweep.runs) == sorted(names)
    assert {(run.steps, run.presets, run.obs) for run in sweep.runs} == {(100_000, ("cpu",), "state")}


@pytest.mark.slow
def test_runs_of_the_same_resolved_config_are_trained_once(tmp_path: Path):
    # variant b sets what the common overrides set already: the same resolved configuration as a
    spec = {**TINY_SPEC, "agents": ["random"], "variants": {"a": [], "b": ["run.eval_every=100"]}}
    first, second = tmp_path / "sweeps" / "first", tmp_path / "sweeps" / "second"
    sweep = expand(spec)
    a, b = (run.name for run in sweep.runs)
    assert shared_sources(sweep.runs, first) == {b: first / a}
    outcomes = run_sweep(sweep, first, workers=1, share_from=[tmp_path / "sweeps"])
    assert outcomes == {a: "done", b: f"shared: {first / a}"}
    assert (first / b).is_symlink() and (first / b).resolve() == (first / a).resolve()
    # Another sweep of the same configuration trains nothing; a third that differs trains its run.
    again = expand({**spec, "name": "again"})
    shared = shared_sources(again.runs, second, [tmp_path / "sweeps"])
    assert runs_to_train(again.runs, second, shared) == []
    outcomes = run_sweep(again, second, workers=1, share_from=[tmp_path / "sweeps"])
    assert set(outcomes.values()) == {f"shared: {first / a}"}
    assert len(find_runs([second])) == 2
    other = expand({**spec, "variants": {"c": ["run.eval_every=50"]}})
    assert runs_to_train(other.runs, tmp_path / "sweeps" / "third", {}) == other.runs
    assert run_sweep(other, tmp_path / "sweeps" / "third", workers=1, share_from=[tmp_path / "sweeps"]) == {
        other.runs[0].name: "done"
    }


@pytest.mark.slow
def test_kept_records_stand_in_for_finished_runs_on_a_new_machine(tmp_path: Path):
    sweep = expand({**TINY_SPEC, "agents": ["random"], "seeds": [0, 1]})
    first, results = tmp_path / "machine1" / "tiny", tmp_path / "results"
    run_sweep(sweep, first, workers=1)
    done, stopped = (first / run.name for run in sweep.runs)
    # The second run stopped before its final test: no checkpoint at its budget, no test at 200 frames.
    (stopped / "checkpoint.pt").unlink()
    records = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    early = [r for r in records if not ("test/return" in r and r["step"] >= 200)]
    (stopped / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in early))
    assert keep_records([first], results / "runs") == [results / "runs" / done.name]
    assert sorted(p.name for p in (results / "runs").iterdir()) == [done.name, "sweep.yaml"]
    kept = sorted(p.name for p in (results / "runs" / done.name).iterdir())
    assert kept == ["config.yaml", "metrics.jsonl"]  # no checkpoint, no replay
    # A new machine: the record is linked, not trained again; the stopped run trains from scratch.
    second = tmp_path / "machine2" / "tiny"
    outcomes = run_sweep(sweep, second, workers=1, share_from=[results])
    assert outcomes == {done.name: f"shared: {results / 'runs' / done.name}", stopped.name: "done"}
    assert (second / done.name).is_symlink() and len(find_runs([second])) == 2
    assert keep_records([second], results / "runs") == [results / "runs" / stopped.name]
    # The sweep run again there: the link to the record is finished, not trained into.
    record = sorted(p.name for p in (results / "runs" / done.name).iterdir())
    metrics = (results / "runs" / done.name / "metrics.jsonl").read_text()
    again = run_sweep(sweep, second, workers=1, share_from=[results])
    assert again == {done.name: "skipped", stopped.name: "skipped"}
    assert sorted(p.name for p in (results / "runs" / done.name).iterdir()) == record
    assert (results / "runs" / done.name / "metrics.jsonl").read_text() == metrics


def test_eval_of_reference_policies_over_runs_with_intervals(tmp_path: Path):
    for seed in (1, 2):
        config = make_config(["tiny"], ["env.task=dmc:reacher_easy", "env.obs=state", f"seed={seed}"])
        (tmp_path / f"run{seed}").mkdir()
        save_config(config, tmp_path / f"run{seed}" / "config.yaml")
    result = evaluate_runs([tmp_path], episodes=2, policy="zero")
    assert [row["run"] for row in result["runs"]] == ["run1", "run2"]
    for row in result["runs"]:
        assert len(row["returns"]) == 2 and row["ci"][0] <= row["mean"] <= row["ci"][1]
    group = result["groups"]["zero dmc:reacher_easy state"]
    assert group["seeds"] == ["1", "2"]
    assert group["mean"] == pytest.approx(np.mean([row["mean"] for row in result["runs"]]))
    with pytest.raises(ConfigError, match="no run with a trained checkpoint"):
        evaluate_runs([tmp_path], episodes=1)  # the agents were never trained
    with pytest.raises(ConfigError, match="--episodes must be at least 1"):
        evaluate_runs([tmp_path], episodes=0, policy="random")
