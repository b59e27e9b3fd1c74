"""End-to-end runs of the real CLI on real dm_control tasks (random agent)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from collodreamer.data import EpisodeStore
from collodreamer.training import load_checkpoint, read_metrics

pytestmark = pytest.mark.slow  # trains on real dm_control

TINY = ["--preset", "tiny", "--agent", "random", "--task", "dmc:reacher_easy"]


def test_tiny_run_writes_metrics_checkpoint_video(tmp_path: Path, cli):
    run = tmp_path / "run"
    cli("train", *TINY, "--obs", "pixels", "--run-dir", str(run), "--video")
    records = read_metrics(run / "metrics.jsonl")
    tests = [r for r in records if "test/return" in r]
    assert [r["step"] for r in tests] == [0, 200, 400]  # every eval_every env frames, and the end
    assert sum("train/return" in r for r in records) == 4  # 400 frames / 100-frame episodes
    assert any("perf/env_frames_per_s" in r for r in records)
    assert load_checkpoint(run / "checkpoint.pt")["counters"]["env_frames"] == 400
    videos = sorted((run / "videos").glob("*.mp4"))
    assert len(videos) == 3 and all(v.stat().st_size > 1000 for v in videos)
    assert len(list((run / "episodes").glob("ep-*.npz"))) == 4
    assert list((run / "tensorboard").glob("events.*"))
    result = cli("eval", str(run), "--episodes", "2", "--video", str(tmp_path / "eval.mp4"))
    assert "test return over 2 episodes" in result.stdout
    assert (tmp_path / "eval.mp4").stat().st_size > 1000


def test_existing_run_is_not_overwritten(tmp_path: Path, cli):
    run = tmp_path / "run"
    cli("train", *TINY, "--obs", "state", "--run-dir", str(run), "run.steps=200")
    before = (run / "checkpoint.pt").read_bytes()
    result = cli("train", *TINY, "--obs", "state", "--run-dir", str(run), check=False)
    assert result.returncode == 2 and "already holds a run" in result.stderr
    assert (run / "checkpoint.pt").read_bytes() == before


def test_corrupt_checkpoint_is_a_clear_error_and_is_kept(tmp_path: Path, cli):
    run = tmp_path / "run"
    cli("train", *TINY, "--obs", "state", "--run-dir", str(run), "run.steps=200")
    checkpoint = run / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:300])
    damaged = checkpoint.read_bytes()
    episodes = sorted(p.name for p in (run / "episodes").iterdir())
    for command in (["train", "--resume", str(run)], ["eval", str(run)]):
        result = cli(*command, check=False)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert lines[-1].startswith("collodreamer: error: checkpoint") and "corrupt" in lines[-1]
    assert checkpoint.read_bytes() == damaged
    assert sorted(p.name for p in (run / "episodes").iterdir()) == episodes


def test_resume_that_does_not_fit_the_checkpoint_keeps_the_run(tmp_path: Path, cli):
    run = tmp_path / "run"
    cli("train", *TINY, "--obs", "state", "--run-dir", str(run), "run.steps=200")
    saved = {name: (run / name).read_bytes() for name in ("config.yaml", "checkpoint.pt")}
    result = cli("train", "--resume", str(run), "agent=dreamer", check=False)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("collodreamer: error: checkpoint")
        and "holds a random run, which cannot go on" in last
    )
    assert {name: (run / name).read_bytes() for name in saved} == saved
    result = cli("train", "--resume", str(run), "run.steps=300")  # a fitting change still resumes
    assert "settings changed since the checkpoint: run.steps: 200 -> 300" in result.stderr
    assert load_checkpoint(run / "checkpoint.pt")["counters"]["env_frames"] == 300


def test_run_dir_of_another_task_is_refused_and_kept(tmp_path: Path, cli):
    run = tmp_path / "run"
    cli("train", *TINY, "--obs", "state", "--run-dir", str(run), "run.steps=200")
    (run / "checkpoint.pt").unlink()  # as if it had died before its first checkpoint
    config = (run / "config.yaml").read_bytes()
    result = cli(
        "train",
        "--preset",
        "tiny",
        "--agent",
        "random",
        "--task",
        "dmc:cheetah_run",
        "--obs",
        "state",
        "--run-dir",
        str(run),
        check=False,
    )
    assert result.returncode == 2
    assert "belongs to another run" in result.stderr.strip().splitlines()[-1]
    assert (run / "config.yaml").read_bytes() == config


def test_bad_config_is_one_line_error(cli):
    result = cli("train", "--task", "dmc:cheetah_fly", check=False)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("collodreamer: error: unknown task 'dmc:cheetah_fly'")
    result = cli("train", "replay.batch_size=lots", check=False)
    assert result.stderr.strip() == (
        "collodreamer: error: replay.batch_size: expected an integer, got 'lots'"
    )


def _start(run: Path, steps: int) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "collodreamer",
        "train",
        *TINY,
        "--obs",
        "state",
        "--run-dir",
        str(run),
        f"run.steps={steps}",
        "run.eval_every=100000",
        "run.checkpoint_every=100",
    ]
    return subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "CI": "true"}
    )


def _wait_for_checkpoint(run: Path, process: subprocess.Popen, frames: int) -> None:
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        path = run / "checkpoint.pt"
        if path.exists() and load_checkpoint(path)["counters"]["env_frames"] >= frames:
            return
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared before the deadline")


def test_sigkill_then_resume_loses_nothing_checkpointed(tmp_path: Path, cli):
    run = tmp_path / "run"
    rng = np.random.default_rng(0)
    process = _start(run, steps=100_000)
    _wait_for_checkpoint(run, process, 300)
    for kill in range(3):  # kill at arbitrary moments, resume each time
        time.sleep(float(rng.uniform(0.0, 1.5)))
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        saved = load_checkpoint(run / "checkpoint.pt")["counters"]
        files = {p.name: p.read_bytes() for p in (run / "episodes").glob("ep-*.npz")}
        store = EpisodeStore(run / "episodes", 10**9, 2, 0)
        assert store.load()[0] >= saved["env_frames"]  # every checkpointed episode is on disk, whole
        assert store.num_episodes == len(files)
        if kill < 2:
            process = subprocess.Popen(
                [sys.executable, "-m", "collodreamer", "train", "--resume", str(run)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env={**os.environ, "CI": "1"},
            )
            _wait_for_checkpoint(run, process, saved["env_frames"] + 200)
            resumed = load_checkpoint(run / "checkpoint.pt")["counters"]
            assert resumed["updates"] >= saved["updates"]
            for name, data in files.items():  # episodes from before the kill are untouched
                assert (run / "episodes" / name).read_bytes() == data
    # A final resume with a finite budget runs to its end.
    cli("train", "--resume", str(run), f"run.steps={saved['env_frames'] + 400}")
    final = load_checkpoint(run / "checkpoint.pt")["counters"]
    assert final["env_frames"] >= saved["env_frames"] + 400
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "train/return" in r]
    assert max(steps) == final["env_frames"]


def test_a_run_in_use_is_refused(tmp_path: Path, cli):
    run = tmp_path / "run"
    process = _start(run, steps=100_000)
    _wait_for_checkpoint(run, process, 100)
    result = cli("train", "--resume", str(run), check=False)
    process.kill()
    process.wait()
    assert result.returncode == 2 and "in use by another collodreamer process" in result.stderr
