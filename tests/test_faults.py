"""What a run keeps under faults (issue 17), on real tiny runs of dm_control: non-finite training,
overrides on resume, damaged files, signals, a full disk and a second writer."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from collodreamer.agents import make_agent
from collodreamer.config import ConfigError, load_config, make_config
from collodreamer.data import EpisodeStore
from collodreamer.health import nonfinite
from collodreamer.models.optim import optimizer_step
from collodreamer.seeds import MAX_SEED
from collodreamer.spec import EnvSpec
from collodreamer.training import (
    CheckpointError,
    DivergenceError,
    Trainer,
    load_checkpoint,
    read_metrics,
)
from collodreamer.training.checkpoint import nonfinite_tensors, save_checkpoint

pytestmark = pytest.mark.slow  # trains tiny runs on real dm_control

STATE = ["--preset", "tiny", "--task", "dmc:reacher_easy", "--obs", "state"]
PLANNER = ["planner.horizon=6", "planner.iterations=5", "planner.replan_every=3"]


def config_of(agent: str, *overrides: str):
    return make_config(
        ["tiny"], [f"agent={agent}", "env.task=dmc:reacher_easy", "env.obs=state", *PLANNER, *overrides]
    )


def dreamer_command(run: Path) -> list[str]:
    """``collodreamer train`` of a tiny Dreamer run from states into ``run``, as a subprocess's arguments."""
    return [
        sys.executable,
        "-m",
        "collodreamer",
        "train",
        *STATE,
        "--agent",
        "dreamer",
        "--run-dir",
        str(run),
    ]


def resumed(run: Path, *overrides: str) -> Trainer:
    return Trainer(make_config(overrides=overrides, base=load_config(run / "config.yaml")), run, resume=True)


def copy_of(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def files_of(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in run.rglob("*") if p.is_file()}


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one line of a failed command's error output, checked to be the only one."""
    lines = [line for line in result.stderr.splitlines() if not line.startswith(("INFO", "WARNING"))]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def flip_bit(data: bytes, rng: np.random.Generator) -> bytes:
    damaged = bytearray(data)
    position = int(rng.integers(len(damaged) * 8))
    damaged[position // 8] ^= 1 << (position % 8)
    return bytes(damaged)


# --- 1, 2: non-finite training -------------------------------------------------------------------


def test_optimizer_step_never_lets_a_nonfinite_update_reach_the_weights():
    torch.manual_seed(0)
    module = nn.Linear(3, 1)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    x = torch.randn(8, 3)
    nonfinite.clear()
    optimizer_step(optimizer, module(x).pow(2).mean(), module, 100.0, "net")
    before = ({k: v.clone() for k, v in module.state_dict().items()}, str(optimizer.state_dict()))
    for loss in (module(x).mean() * float("nan"), module(x * float("inf")).mean(), module(x).mean() + np.inf):
        optimizer_step(optimizer, loss, module, 100.0, "net")
        assert all(torch.equal(before[0][k], v) for k, v in module.state_dict().items())
        assert str(optimizer.state_dict()) == before[1]
    assert nonfinite.failing() == {"net": 3}
    optimizer_step(optimizer, module(x).pow(2).mean(), module, 100.0, "net")
    assert nonfinite.failing() == {} and nonfinite.take() == ({"net": 3}, {"net": 3})


@pytest.mark.parametrize("agent", ["dreamer", "latco", "collodreamer"])
def test_injected_nan_is_skipped_counted_and_stops_the_run(tmp_path: Path, agent):
    config = config_of(agent, "run.steps=200", "run.max_nonfinite=3")
    run = tmp_path / "run"
    Trainer(config, run).run()
    for path in (run / "episodes").glob("ep-*.npz"):  # NaN rewards: every world-model loss on them is NaN
        episode = dict(np.load(path))
        np.savez_compressed(path, **{**episode, "reward": np.full_like(episode["reward"], np.nan)})
    trainer = resumed(run, "run.steps=400")
    with pytest.raises(DivergenceError, match=r"^training diverged at 400 env frames: 3 world_model updates"):
        trainer.run()
    assert trainer.counters.skipped["world_model"] >= 3
    assert any(r.get("train/skipped/world_model", 0) >= 2 for r in read_metrics(run / "metrics.jsonl"))
    assert nonfinite_tensors(trainer.agent.state_dict())[0] == []  # no NaN reached the weights
    assert load_checkpoint(run / "checkpoint.pt")["counters"]["env_frames"] == 300  # before the streak


@pytest.mark.parametrize(
    "agent, override",
    [("dreamer", "model.lr=1e6"), ("latco", "model.lr=1e6"), ("collodreamer", "value.lr=1e6")],
)
def test_diverging_run_stops_with_one_line_and_is_rescued_by_a_smaller_rate(
    tmp_path: Path, cli, agent, override
):
    run = tmp_path / "run"
    result = cli(
        "train",
        *STATE,
        "--agent",
        agent,
        "--run-dir",
        str(run),
        *PLANNER,
        override,
        "run.max_nonfinite=3",
        check=False,
    )
    line = error_line(result)
    assert line.startswith("collodreamer: error: training diverged at") and "Traceback" not in result.stderr
    assert f"{run / 'checkpoint.pt'} holds the last finite state" in line
    counters = load_checkpoint(run / "checkpoint.pt")["counters"]  # finite, or loading would refuse it
    if agent == "dreamer":  # the rate that diverged, replaced on resume, lets the run finish
        cli("train", "--resume", str(run), override.split("=")[0] + "=1e-4")
        assert (
            load_checkpoint(run / "checkpoint.pt")["counters"]["env_frames"] == 400 > counters["env_frames"]
        )


def test_nonfinite_plans_never_train_the_value():
    config = config_of("collodreamer", "value.style=inner", "value.norm=before", "value.plan_batch=2")
    torch.manual_seed(0)
    agent = make_agent(config, EnvSpec((6,), 2))
    critic = agent.critic
    assert config.value.norm == "before"  # batch norm: its statistics must not see NaN either
    before = {k: v.clone() for k, v in critic.value.state_dict().items()}
    with torch.no_grad():
        next(agent.world_model.reward.parameters())[0, 0] = float("nan")
    nonfinite.clear()
    agent.plan(torch.randn(1, agent.world_model.feature_dim, device=agent.device), None, training=True)
    assert all(torch.equal(before[k], v) for k, v in critic.value.state_dict().items())
    assert not agent.value.recent  # the zeroed plan is no target for later value batches either
    skipped, _ = nonfinite.take()
    assert skipped["planner"] == 1 and skipped["value"] == config.planner.iterations


def test_checkpoint_with_nonfinite_weights_is_refused(tmp_path: Path, cli, dreamer_run):
    run = copy_of(dreamer_run, tmp_path)
    path = run / "checkpoint.pt"
    payload = load_checkpoint(path)
    payload["agent"]["world_model"]["params"]["reward.net.0.weight"][0, 0] = float("nan")
    torch.save(payload, path)  # as an older version saved diverged runs: no checksum
    for command in (["train", "--resume", str(run)], ["eval", str(run)]):
        line = error_line(cli(*command, check=False))
        assert line.startswith(f"collodreamer: error: checkpoint {path} holds non-finite weights, 1 of")
    with pytest.raises(
        DivergenceError, match=r"^1 of \d+ tensors \(agent.world_model.params.reward.net.0.weight\)"
    ):
        save_checkpoint(tmp_path / "new.pt", payload)
    assert not (tmp_path / "new.pt").exists()


# --- 3, 4: overrides on resume -------------------------------------------------------------------


def optimizer_rates(agent) -> dict[str, float]:
    rates = {"model.lr": agent.world_model.optimizer.param_groups[0]["lr"]}
    if hasattr(agent, "behaviour"):
        rates["actor.lr"] = agent.behaviour.actor_optimizer.param_groups[0]["lr"]
        rates["value.lr"] = agent.behaviour.critic.optimizer.param_groups[0]["lr"]
    if getattr(agent, "policy", None) is not None:
        rates["policy.lr"] = agent.policy_optimizer.param_groups[0]["lr"]
    return rates


@pytest.fixture(scope="module")
def latco_policy_run(tmp_path_factory) -> Path:
    """A finished tiny LatCo run whose plans start from an amortised policy (an extra optimiser)."""
    run = tmp_path_factory.mktemp("latco") / "run"
    Trainer(config_of("latco", "run.steps=200", "planner.init=policy", "policy.updates=2"), run).run()
    return run


@pytest.mark.parametrize("name", ["dreamer", "latco"])
def test_learning_rates_changed_on_resume_are_used(tmp_path: Path, name, request):
    run = copy_of(
        request.getfixturevalue({"dreamer": "dreamer_run", "latco": "latco_policy_run"}[name]), tmp_path
    )
    wanted = {"model.lr": 0.01, "actor.lr": 0.001, "value.lr": 0.002, "policy.lr": 0.003}
    trainer = resumed(run, "run.steps=300", *(f"{k}={v}" for k, v in wanted.items()))
    rates = optimizer_rates(trainer.agent)
    assert len(rates) == (3 if name == "dreamer" else 2)
    assert rates == {k: wanted[k] for k in rates}
    trainer.run()
    payload = load_checkpoint(run / "checkpoint.pt")["agent"]
    assert payload["world_model"]["optimizer"]["param_groups"][0]["lr"] == 0.01


def test_another_agent_or_a_dropped_part_on_resume_is_refused_before_writing(
    tmp_path: Path, cli, dreamer_run, latco_policy_run
):
    run = copy_of(dreamer_run, tmp_path)
    before = files_of(run)
    line = error_line(cli("train", "--resume", str(run), "agent=latco", check=False))
    assert line == (
        f"collodreamer: error: checkpoint {run / 'checkpoint.pt'} holds a dreamer run, which cannot go on "
        "as latco (the checkpoint would lose its state); start a new run instead"
    )
    assert files_of(run) == before
    other = copy_of(latco_policy_run, tmp_path / "latco")
    before = files_of(other)
    with pytest.raises(ConfigError, match=r"^planner.init cannot change on resume \(policy -> random\)"):
        resumed(other, "planner.init=random")
    assert files_of(other) == before


# --- 5: damaged and odd episode files ------------------------------------------------------------


def test_episode_bit_flips_are_reported_by_name_and_skipped(tmp_path: Path, dreamer_run, caplog):
    """Fuzz: 300 single-bit flips (fixed seed) of a real episode file. Each loads whole and equal, or
    is skipped with a warning naming it; none raises (zlib.error among them, before)."""
    original_path = sorted((dreamer_run / "episodes").glob("ep-*.npz"))[0]
    original = dict(np.load(original_path))
    rng = np.random.default_rng(0)
    skipped = 0
    for trial in range(300):
        directory = tmp_path / f"t{trial}"
        directory.mkdir()
        path = directory / original_path.name
        path.write_bytes(flip_bit(original_path.read_bytes(), rng))
        caplog.clear()
        store = EpisodeStore(directory, None, 2, 0)
        _, episodes = store.load()
        if episodes:
            for key, value in original.items():
                np.testing.assert_array_equal(store.episodes[0][key], value)
        else:
            skipped += 1
            assert str(path) in caplog.text
    assert skipped > 200


def test_damaged_and_odd_episodes_do_not_block_a_resume(tmp_path: Path, cli, dreamer_run):
    run = copy_of(dreamer_run, tmp_path)
    first = sorted((run / "episodes").glob("ep-*.npz"))[0]
    data, rng = first.read_bytes(), np.random.default_rng(1)
    while True:  # a flip in the compressed stream that makes zlib itself fail
        damaged = flip_bit(data, rng)
        first.write_bytes(damaged)
        try:
            dict(np.load(first))
        except zlib.error:
            break
        except Exception:
            continue
    odd = dict(np.load(sorted((run / "episodes").glob("ep-*.npz"))[1]))
    odd["obs"] = np.concatenate([odd["obs"], odd["obs"]], 1)  # another shape, after a good episode
    odd_path = run / "episodes" / "ep-000002-51.npz"
    np.savez_compressed(odd_path, **odd)
    result = cli("train", "--resume", str(run), "run.steps=300")
    assert f"skipping corrupt episode file {first}: error:" in result.stderr
    assert f"skipping malformed episode file {odd_path}: obs steps are ((12,)" in result.stderr
    assert load_checkpoint(run / "checkpoint.pt")["counters"]["env_frames"] == 300
    assert first.read_bytes() == damaged and odd_path.exists()  # reported, never deleted


# --- 6: signals, and a resume before the first checkpoint ---------------------------------------


def wait_for_episode(run: Path, process: subprocess.Popen, count: int) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        path = run / "metrics.jsonl"
        if path.exists() and sum("train/return" in r for r in read_metrics(path)) >= count:
            return
        time.sleep(0.05)
    raise AssertionError("no episode was written before the deadline")


def test_sigint_and_sigterm_finish_the_step_save_and_resume(tmp_path: Path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "collodreamer", "train"]
    start = [*command, *STATE, "--agent", "dreamer", "--run-dir", str(run), "run.steps=100000"]
    never = "run.checkpoint_every=1000000"  # only a stop writes a checkpoint
    for signum, args, episodes in (
        (signal.SIGINT, [*start, never], 1),
        (signal.SIGTERM, [*command, "--resume", str(run)], 2),
    ):
        # an episode past those on disk: the new process's loop (its handlers set) wrote it, not a stop
        # that recorded one more, nor a resume that records again what a stop left unrecorded
        on_disk = len(list((run / "episodes").glob("*.npz"))) if (run / "episodes").exists() else 0
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for_episode(run, process, max(episodes, on_disk + 1))
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 128 + signum, stderr[-2000:]
        last = stderr.strip().splitlines()[-1]
        assert last.startswith(f"collodreamer: stopped by {signal.Signals(signum).name} at ")
        assert last.endswith(f"checkpoint saved; continue with: collodreamer train --resume {run}")
        counters = load_checkpoint(run / "checkpoint.pt")["counters"]
        assert counters["env_frames"] >= 100 * episodes and counters["updates"] > 0


def test_resume_before_the_first_checkpoint_trains_on_the_episodes(tmp_path: Path, cli, dreamer_run):
    run = copy_of(dreamer_run, tmp_path)
    (run / "checkpoint.pt").unlink()  # killed before its first checkpoint
    episodes = {p.name: p.read_bytes() for p in (run / "episodes").iterdir()}
    result = cli("train", "--resume", str(run), "run.steps=300")
    assert "has no checkpoint: training starts anew on the episodes on disk" in result.stderr
    counters = load_checkpoint(run / "checkpoint.pt")["counters"]
    assert counters["env_frames"] == 300 and counters["updates"] == 6  # owed for all 300 env frames
    assert all((run / "episodes" / name).read_bytes() == data for name, data in episodes.items())


# --- 7, 8: tests and updates across resumes ------------------------------------------------------


def test_each_test_runs_once_across_resumes(tmp_path: Path):
    config = make_config(
        ["tiny"], ["agent=random", "env.task=dmc:reacher_easy", "env.obs=state", "run.steps=200"]
    )
    run = tmp_path / "run"
    Trainer(config, run).run()
    early = (run / "checkpoint.pt").read_bytes()
    for steps in (400, 400):  # the second resume finds the run finished
        resumed(run, f"run.steps={steps}").run()
    (run / "checkpoint.pt").write_bytes(early)  # killed after 400 env frames, before their checkpoint
    resumed(run, "run.steps=600").run()
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records if "test/return" in r] == [0, 200, 400, 600]
    steps = [r["step"] for r in records]
    assert steps == sorted(steps)


def test_a_kill_before_the_final_checkpoint_loses_no_updates(tmp_path: Path, dreamer_run):
    run = copy_of(dreamer_run, tmp_path)
    early = (run / "checkpoint.pt").read_bytes()  # 200 env frames, 4 updates
    resumed(run, "run.steps=300").run()
    (run / "checkpoint.pt").write_bytes(early)  # the last episode is on disk, its checkpoint is not
    resumed(run, "run.steps=300").run()
    assert load_checkpoint(run / "checkpoint.pt")["counters"]["updates"] == 6


def test_temp_files_of_cut_writes_are_removed_on_resume_but_not_a_live_writers(tmp_path: Path, dreamer_run):
    run = copy_of(dreamer_run, tmp_path)
    stale = run / ".checkpoint.pt.999999999.tmp"  # of a process that no longer runs
    stale.write_bytes(b"half a checkpoint")
    live = run / "episodes" / f".ep-000009-51.npz.{os.getpid()}.tmp"
    live.write_bytes(b"an episode being written")
    resumed(run)
    assert not stale.exists() and live.exists()


# --- 9: damaged checkpoints ----------------------------------------------------------------------


def test_checkpoint_bit_flips_are_refused(tmp_path: Path, cli, dreamer_run):
    """Fuzz: 200 single-bit flips (fixed seed) of a real checkpoint; every one is a one-line error."""
    data = (dreamer_run / "checkpoint.pt").read_bytes()
    path = tmp_path / "checkpoint.pt"
    rng = np.random.default_rng(0)
    for _ in range(200):
        path.write_bytes(flip_bit(data, rng))
        with pytest.raises(CheckpointError, match=f"^checkpoint {path} is corrupt or truncated: [^\n]*$"):
            load_checkpoint(path)
    run = copy_of(dreamer_run, tmp_path)
    damaged = flip_bit(data, rng)
    (run / "checkpoint.pt").write_bytes(damaged)
    line = error_line(cli("train", "--resume", str(run), check=False))
    assert line.endswith("is corrupt or truncated: its checksum does not match")
    assert (run / "checkpoint.pt").read_bytes() == damaged


# --- 10: a full disk ------------------------------------------------------------------------------


def limit_file_size() -> None:
    """In the child: files may not grow past 50 kB (a checkpoint does), as on a nearly full disk."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails rather than kills


def test_full_disk_is_one_line_leaves_no_temp_files_and_resumes(tmp_path: Path, cli):
    run = tmp_path / "run"
    args = dreamer_command(run)
    result = subprocess.run(args, capture_output=True, text=True, preexec_fn=limit_file_size, timeout=300)
    assert error_line(result) == f"collodreamer: error: File too large: {run / 'checkpoint.pt'}"
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    with open(run / "metrics.jsonl", "ab") as handle:  # a record cut short by the full disk
        handle.write(b'{"step": 100, "train/ret')
    cli("train", "--resume", str(run), "run.steps=300")
    lines = (run / "metrics.jsonl").read_bytes().splitlines()
    assert len(read_metrics(run / "metrics.jsonl")) == len(lines)  # no record swallowed
    assert load_checkpoint(run / "checkpoint.pt")["counters"]["env_frames"] == 300


# --- 11: a second writer --------------------------------------------------------------------------


def test_a_second_writer_never_overwrites_an_episode(tmp_path: Path, dreamer_run):
    episodes = [dict(np.load(p)) for p in sorted((dreamer_run / "episodes").glob("ep-*.npz"))]
    writers = [EpisodeStore(tmp_path, None, 2, seed) for seed in (0, 1)]  # both start at index 0
    written = {}
    for index in range(4):
        episode = {k: v.copy() for k, v in episodes[index % 2].items()}
        episode["reward"] = episode["reward"] + index  # tell them apart
        path = writers[index % 2].add(episode)
        written[path] = episode["reward"]
    assert len(written) == 4
    for path, reward in written.items():
        np.testing.assert_array_equal(np.load(path)["reward"], reward)


# --- 12: what cannot be written or read ----------------------------------------------------------


def test_unwritable_run_directory_and_odd_metrics_lines(tmp_path: Path, cli, dreamer_run):
    line = error_line(cli("train", *STATE, "seed=-1", check=False))
    assert line == f"collodreamer: error: seed must be in [0, {MAX_SEED}], got -1"
    run = copy_of(dreamer_run, tmp_path)
    config = (run / "config.yaml").read_bytes()
    if os.geteuid() == 0:  # root writes into read-only directories: a config that cannot be replaced
        (run / "config.yaml").unlink()
        (run / "config.yaml").mkdir()
        expected = f"collodreamer: error: Is a directory: {run / 'config.yaml'}"
    else:
        run.chmod(0o555)
        expected = f"collodreamer: error: Permission denied: {run / 'config.yaml'}"
    assert error_line(cli("train", "--resume", str(run), check=False)) == expected
    run.chmod(0o755)
    if (run / "config.yaml").is_dir():
        (run / "config.yaml").rmdir()
        (run / "config.yaml").write_bytes(config)
    with open(run / "metrics.jsonl", "ab") as handle:
        handle.write(b'42\n{"train/return": 1.0}\n\xff\xfe\x00 binary\n{"step": "soon"}\n')
    records = read_metrics(run / "metrics.jsonl")
    assert records and all(isinstance(r, dict) and isinstance(r["step"], int) for r in records)
    cli("plot", str(run), "--out", str(tmp_path / "plots"))
    assert list((tmp_path / "plots").glob("*.png"))
