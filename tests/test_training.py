"""End-to-end runs of the real CLI on real dm_control and Gymnasium tasks."""

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from collodreamer.config import ConfigError, make_config
from collodreamer.data import EpisodeStore
from collodreamer.training import Trainer, load_checkpoint, read_metrics
from collodreamer.training.checkpoint import HEADER

pytestmark = pytest.mark.slow  # trains on real dm_control

TINY = ["--preset", "tiny", "--agent", "random", "--task", "dmc:reacher_easy"]
TRAIN_STATE = ["train", *TINY, "--obs", "state", "--run-dir"]


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
    command = [
        "train",
        "--preset",
        "tiny",
        "--agent",
        "random",
        "--task",
        "dmc:cheetah_run",
        "--obs",
        "state",
    ]
    command += ["--run-dir", str(run)]
    result = cli(*command, check=False)
    assert result.returncode == 2
    assert (
        "start of another run (no checkpoint yet): env.task cannot change"
        in result.stderr.strip().splitlines()[-1]
    )
    assert (run / "config.yaml").read_bytes() == config
    # without its config, the episodes still tell the run apart
    (run / "config.yaml").unlink()
    result = cli(*command, check=False)
    assert result.returncode == 2 and "belongs to another run" in result.stderr.strip().splitlines()[-1]


def test_another_agent_in_a_started_run_without_checkpoint_is_refused_and_kept(tmp_path: Path, cli):
    run = tmp_path / "run"
    cli("train", *TINY, "--obs", "state", "--run-dir", str(run), "run.steps=200")
    (run / "checkpoint.pt").unlink()  # as if it had died before its first checkpoint
    config, metrics = (run / "config.yaml").read_bytes(), (run / "metrics.jsonl").read_bytes()
    result = cli("train", *TINY, "--obs", "state", "--agent", "latco", "--run-dir", str(run), check=False)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "holds the start of another run (no checkpoint yet): agent cannot change" in line
    assert (run / "config.yaml").read_bytes() == config and (run / "metrics.jsonl").read_bytes() == metrics
    # the same configuration starts again there, on the episodes it had (a sweep's restart)
    cli("train", *TINY, "--obs", "state", "--run-dir", str(run), "run.steps=200")
    assert (run / "checkpoint.pt").exists()


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
        store = EpisodeStore(run / "episodes", None, 2, 0)
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


# --- kept checkpoints, reports in TensorBoard, W&B, Gymnasium tasks --------------------------------

PLANNER = ["planner.horizon=6", "planner.iterations=5", "planner.replan_every=3"]


def test_kept_checkpoints_are_ordered_by_env_frames_past_the_padding(tmp_path: Path):
    from collodreamer.rundir import RunDir

    files = RunDir(tmp_path)
    files.checkpoints.mkdir()
    for frames in (100_000_000, 99_999_999, 5000):
        files.kept_checkpoint(frames).touch()
    (files.checkpoints / "checkpoint-latest.pt").touch()  # not a kept checkpoint: left out
    assert files.kept_checkpoints() == [files.kept_checkpoint(f) for f in (5000, 99_999_999, 100_000_000)]


def test_kept_checkpoints_are_the_last_tests_checksummed_and_evaluable(tmp_path: Path, cli):
    run = tmp_path / "run"
    cli(*TRAIN_STATE, str(run), "run.eval_every=100", "run.keep_checkpoints=2")
    kept = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert kept == ["checkpoint-00000300.pt", "checkpoint-00000400.pt"]  # tests at 0..400, the last 2
    early = run / "checkpoints" / kept[0]
    assert early.read_bytes().startswith(HEADER)  # the same checksummed writer as checkpoint.pt
    assert load_checkpoint(early)["counters"]["env_frames"] == 300
    result = cli("eval", str(run), "--episodes", "1", "--checkpoint", f"checkpoints/{kept[0]}")
    assert "test return over 1 episodes" in result.stdout
    early.write_bytes(early.read_bytes()[:-10])
    result = cli("eval", str(run), "--checkpoint", str(early), check=False)
    assert result.returncode == 2 and "checksum does not match" in result.stderr.strip().splitlines()[-1]


def tensorboard_of(run: Path) -> EventAccumulator:
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    return events


def comparable(run: Path) -> list[dict]:
    """The metrics of a run without its timings, which differ from run to run."""
    return [
        {
            k: v
            for k, v in record.items()
            if not (k == "elapsed_s" or k.startswith("perf/") or k.endswith("/ms"))
        }
        for record in read_metrics(run / "metrics.jsonl")
    ]


def test_report_pictures_go_to_tensorboard_and_leave_training_as_it_was(tmp_path: Path, cli):
    common = ["--preset", "tiny", "--agent", "latco", "--task", "dmc:reacher_easy"]
    settings = [*PLANNER, "run.steps=200"]
    report = [*settings, "run.report=true"]
    cli("train", *common, "--obs", "state", "--run-dir", str(tmp_path / "plain"), *settings)
    cli("train", *common, "--obs", "state", "--run-dir", str(tmp_path / "state"), *report)
    assert comparable(tmp_path / "state") == comparable(tmp_path / "plain")
    events = tensorboard_of(tmp_path / "state")
    assert sorted(events.Tags()["images"]) == ["report/plan", "report/prediction"]
    assert [image.step for image in events.Images("report/prediction")] == [200]  # no episode at 0 yet
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "agent: latco" in config and "report: true" in config
    cli("train", *common, "--obs", "pixels", "--run-dir", str(tmp_path / "pixels"), *report)
    events = tensorboard_of(tmp_path / "pixels")
    tags = ["report/plan", "report/plan_frames", "report/prediction", "report/prediction_video"]
    assert sorted(events.Tags()["images"]) == tags
    grid = events.Images("report/prediction")[0]
    assert (grid.width, grid.height) == (3 * 64, 8 * 64)  # 8 rows of truth | prediction | error
    assert events.Images("report/prediction_video")[0].encoded_image_string.startswith(b"GIF")


def wandb_records(run: Path) -> list:
    """The protobuf records of the run's offline W&B log: blocks of 32 KiB holding records cut into
    pieces of a 7-byte header (checksum, length, kind: 1 whole, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = run.glob("wandb/offline-run-*/run-*.wandb")
    data, position, piece, records = path.read_bytes(), 7, b"", []  # after the file's own header
    while position + 7 <= len(data):
        left = 32768 - position % 32768
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if left < 7 or (length == 0 and kind == 0):  # the padded end of a block
            position += left
            continue
        piece += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(piece)
            records.append(record)
            piece = b""
    return records


def test_wandb_tracks_the_metrics_config_and_test_videos_offline(tmp_path: Path, monkeypatch):
    pytest.importorskip("wandb", reason="W&B tracking is an extra: pip install 'collodreamer[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    result = run_cli(*TRAIN_STATE, str(run), "run.steps=200", "run.wandb=true", "--video")
    assert "wandb sync" in result.stderr  # offline: the run waits to be synced
    records = wandb_records(run)
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        for record in records
        if record.history.item
    ]
    videos = [row for row in history if "test/video/_type" in row]
    logged = [
        {"step": row["env_frames"], **{k: v for k, v in row.items() if not k.startswith(("_", "env_frames"))}}
        for row in history
        if row not in videos
    ]
    assert logged == read_metrics(run / "metrics.jsonl")
    (start,) = [record.run for record in records if record.HasField("run")]
    config = {item.key: json.loads(item.value_json) for item in start.config.update}
    assert config["agent"] == "random" and config["run"]["wandb"] is True
    assert [row["env_frames"] for row in videos] == [0, 200]
    assert len(list(run.glob("wandb/offline-run-*/files/media/videos/test/*.mp4"))) == 2


def test_wandb_missing_is_a_one_line_error_before_anything_is_written(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed: importing it fails
    config = make_config(["tiny"], ["agent=random", "env.obs=state", "run.wandb=true"])
    with pytest.raises(ConfigError) as error:
        Trainer(config, tmp_path / "run")
    assert str(error.value) == "run.wandb=true needs Weights & Biases: pip install 'collodreamer[wandb]'"
    assert not (tmp_path / "run").exists()


def test_dreamer_learns_on_gymnasium_pendulum(tmp_path: Path, cli):
    run = tmp_path / "run"
    task = ["--preset", "tiny", "--agent", "dreamer", "--task", "gym:Pendulum-v1", "--obs", "state"]
    cli("train", *task, "--run-dir", str(run), "run.steps=800", "run.train_steps=25", "run.eval_every=400")
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records if "test/return" in r] == [0, 400, 800]
    assert all(r["test/episode_length"] == 100 for r in records if "test/return" in r)  # env.time_limit
    assert all(r["train/return"] < 0 for r in records if "train/return" in r)  # Pendulum's costs
    losses = [r["model/reward_loss"] for r in records if "model/reward_loss" in r]
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0]  # the model learns Pendulum's rewards
    episode = np.load(sorted((run / "episodes").glob("ep-*.npz"))[0])
    assert episode["obs"].shape == (51, 3) and episode["action"].shape == (51, 1)
    cli("train", "--resume", str(run), "run.steps=900")
    assert load_checkpoint(run / "checkpoint.pt")["counters"]["env_frames"] == 900
    assert "test return over 1 episodes" in cli("eval", str(run), "--episodes", "1").stdout
