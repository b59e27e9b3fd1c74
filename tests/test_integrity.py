"""Nothing silently lost or changed on resume (issue 29), on real tiny runs of dm_control: missing
episodes, the run's identity, finite blow-ups, the lock, a damaged config.yaml, code in a checkpoint,
a full disk, bad input and signals at the edges."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_faults import PLANNER, STATE, copy_of, dreamer_command, error_line, files_of, resumed

from collodreamer.cli import main as cli_main
from collodreamer.config import ConfigError, load_config
from collodreamer.data import EpisodeStore
from collodreamer.training import (
    CheckpointError,
    Trainer,
    evaluation,
    load_agent,
    load_checkpoint,
    read_metrics,
)
from collodreamer.training.checkpoint import HEADER, save_checkpoint

pytestmark = pytest.mark.slow  # trains tiny runs on real dm_control


# --- 6: code in a checkpoint ----------------------------------------------------------------------


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused_unrun(tmp_path: Path, cli, dreamer_run):
    run = copy_of(dreamer_run, tmp_path)
    marker = tmp_path / "ran"
    payload = load_checkpoint(run / "checkpoint.pt")  # numpy RNG states load under weights_only
    buffer = io.BytesIO()
    torch.save({**payload, "extra": RunsCode(marker)}, buffer)
    data = buffer.getvalue()  # with a valid checksum: the checksum stops damage, not tampering
    (run / "checkpoint.pt").write_bytes(HEADER + hashlib.sha256(data).hexdigest().encode() + b"\n" + data)
    with pytest.raises(CheckpointError, match=r"holds posix.system, which no checkpoint holds"):
        load_checkpoint(run / "checkpoint.pt")
    line = error_line(cli("train", "--resume", str(run), check=False))
    assert "which no checkpoint holds: refused, as loading it could run code" in line
    assert not marker.exists()


def test_a_runs_agent_loads_without_a_simulator_and_from_a_checkpoint_without_its_spec(
    tmp_path: Path, monkeypatch, dreamer_run
):
    run = copy_of(dreamer_run, tmp_path)
    with monkeypatch.context() as patched:
        patched.setattr(evaluation, "make_env", lambda *args: pytest.fail("a simulator was made"))
        _, agent, counters = load_agent(run)
    assert counters["env_frames"] == 200
    payload = load_checkpoint(run / "checkpoint.pt")
    assert payload["spec"] == {"obs_shape": [6], "action_dim": 2}  # reacher_easy from states
    del payload["spec"]  # as checkpoints were before specs were saved: the task is asked
    save_checkpoint(run / "checkpoint.pt", payload)
    _, older, _ = load_agent(run)
    weights, older_weights = agent.world_model.state_dict(), older.world_model.state_dict()
    assert weights.keys() == older_weights.keys()
    assert all(torch.equal(weights[key], older_weights[key]) for key in weights)


# --- 8: bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "dmc:cheetah_fly"], "unknown task 'dmc:cheetah_fly'; valid tasks:"),
        (["--task", "gym:NoSuchTask-v0"], "unknown task 'gym:NoSuchTask-v0':"),
        (["--task", "gym:CartPole-v1"], "task 'gym:CartPole-v1' has Discrete(2) actions"),
        (["device=tpu"], "device: 'tpu' is not a torch device"),
        (["--obs", "pixels", "env.camera=99"], "env.camera: dmc:reacher_easy has cameras 0 to 1"),
        (["value.dropout=[1.5,1.5,1.5]"], "value.dropout[0] must be in [0, 1), got 1.5"),
        (["actor.layers=-1"], "actor.layers must be positive, got -1"),
        (["value.clip_low=300"], "value.clip_low (300.0) must be below value.clip_high (200.0)"),
        (["env.action_repeat=1000"], "env.action_repeat (1000) cannot exceed env.time_limit (100)"),
    ]
    + ([] if torch.cuda.is_available() else [(["device=cuda"], "device: cuda was asked for")]),
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, cli, args, message):
    result = cli(
        "train", "--preset", "tiny", "--logdir", str(tmp_path / "runs"), *args, cwd=tmp_path, check=False
    )
    assert error_line(result).startswith(f"collodreamer: error: {message}")
    assert sorted(tmp_path.iterdir()) == []


def test_actor_diagnostics_skip_a_damaged_episode_file_and_keep_it(tmp_path: Path, dreamer_run):
    from collodreamer.analysis.actor import diagnose_actor

    run = copy_of(dreamer_run, tmp_path)
    damaged = sorted((run / "episodes").glob("*.npz"))[0]
    damaged.write_bytes(damaged.read_bytes()[:100])
    result = diagnose_actor(run, every=1)
    assert damaged.name not in result["episodes"] and len(result["episodes"]) >= 1
    assert damaged.exists()


def test_a_report_of_a_random_agent_run_is_one_line(tmp_path: Path, cli):
    run = tmp_path / "run"
    random_run = ["--preset", "tiny", "--agent", "random", "--task", "dmc:reacher_easy", "--obs", "state"]
    cli("train", *random_run, "--run-dir", str(run), "run.steps=200")
    line = error_line(cli("report", str(run), check=False))
    assert line == f"collodreamer: error: {run} is a random run: it has no world model to report on"


def test_eval_of_no_episodes_is_refused(cli, dreamer_run):
    line = error_line(cli("eval", str(dreamer_run), "--episodes", "0", check=False))
    assert line == "collodreamer: error: --episodes must be at least 1, got 0"


# --- 2, 5: the run's identity, and a damaged config.yaml ------------------------------------------


@pytest.mark.parametrize(
    "override, change",
    [
        (
            "env.task=dmc:reacher_hard",
            "env.task cannot change on resume (dmc:reacher_easy -> dmc:reacher_hard)",
        ),
        ("env.action_repeat=4", "env.action_repeat cannot change on resume (2 -> 4)"),
        ("model.deter=32", "model.deter cannot change on resume (16 -> 32)"),
        ("seed=3", "seed cannot change on resume (0 -> 3)"),
    ],
)
def test_another_identity_on_resume_is_refused_naming_the_setting(
    tmp_path: Path, cli, dreamer_run, override, change
):
    run = copy_of(dreamer_run, tmp_path)
    before = files_of(run)
    line = error_line(cli("train", "--resume", str(run), override, check=False))
    assert line.startswith(f"collodreamer: error: {change}: it is part of the run's identity")
    assert files_of(run) == before


def test_the_checkpoints_config_wins_over_a_damaged_config_yaml(tmp_path: Path, cli, dreamer_run):
    run = copy_of(dreamer_run, tmp_path)
    path = run / "config.yaml"
    path.write_text(path.read_text().replace("task: dmc:reacher_easy", "task: dmc:reacher_hard", 1))
    path.write_text(path.read_text().replace("lr: 0.0006", "lr: 0.0016", 1))
    result = cli("train", "--resume", str(run), "run.steps=300", "actor.lr=0.001")
    assert (
        f"WARNING {path} differs from the config in {run / 'checkpoint.pt'} in env.task, model.lr: "
        "the checkpoint's is used" in result.stderr
    )
    config = load_checkpoint(run / "checkpoint.pt")["config"]
    assert (config["env"]["task"], config["model"]["lr"], config["actor"]["lr"]) == (
        "dmc:reacher_easy",
        6e-4,
        1e-3,
    )
    assert load_config(path).model.lr == 6e-4  # repaired
    path.write_bytes(b"\x00\xff not yaml")
    result = cli("train", "--resume", str(run), "run.steps=400")
    assert "the checkpoint's config is used" in result.stderr


# --- 1: missing episode files ---------------------------------------------------------------------


def test_missing_episodes_are_refused_or_gone_on_without_keeping_the_metrics(
    tmp_path: Path, cli, dreamer_run
):
    run = copy_of(dreamer_run, tmp_path)
    resumed_to_400 = cli("train", "--resume", str(run), "run.steps=400")
    assert resumed_to_400.returncode == 0
    history = (run / "metrics.jsonl").read_bytes()
    for path in sorted((run / "episodes").glob("ep-*.npz"))[:2]:  # old episodes deleted to save space
        path.unlink()
    before = files_of(run)
    line = error_line(cli("train", "--resume", str(run), "run.steps=500", check=False))
    assert line == (
        f"collodreamer: error: 2 episodes (200 env frames) that checkpoint {run / 'checkpoint.pt'} trained "
        f"on are missing from {run / 'episodes'}: put them back, or go on without them with "
        "--without-missing-episodes (the metrics recorded so far are kept)"
    )
    assert files_of(run) == before
    result = cli("train", "--resume", str(run), "run.steps=500", "--without-missing-episodes")
    assert "going on at 400 env frames without 2 episodes, missing or damaged" in result.stderr
    metrics = (run / "metrics.jsonl").read_bytes()
    assert metrics.startswith(history)  # every line kept
    records = read_metrics(run / "metrics.jsonl")
    assert {"step": 400, "replay/missing_episodes": 2, "replay/missing_frames": 200}.items() <= {
        **next(r for r in records if "replay/missing_episodes" in r)
    }.items()
    assert load_checkpoint(run / "checkpoint.pt")["counters"]["env_frames"] == 500


# --- 4: the lock ----------------------------------------------------------------------------------


def test_the_lock_holds_with_its_file_deleted_and_only_its_holder_rewrites_metrics(
    tmp_path: Path, cli, dreamer_run
):
    run = copy_of(dreamer_run, tmp_path)
    with open(run / "metrics.jsonl", "ab") as handle:  # a line that a resume would rewrite away
        handle.write(b'{"step": 100000, "train/return": 1.0}\n')
    holder = resumed(run, "run.steps=300")
    for path in run.glob(".lock"):  # what an older version locked
        path.unlink()
    line = error_line(cli("train", "--resume", str(run), "run.steps=300", check=False))
    assert line == f"collodreamer: error: {run} is in use by another collodreamer process"
    with pytest.raises(ConfigError, match="is in use by another collodreamer process"):
        resumed(run, "run.steps=300")
    assert b'"step": 100000' not in (run / "metrics.jsonl").read_bytes()  # the holder's rewrite alone
    holder.run()
    resumed(run, "run.steps=400").run()  # free once the holder is done


# --- 3: finite blow-ups ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "agent, override, network",
    [
        ("dreamer", "actor.lr=1e6", "actor"),
        ("collodreamer", "value.lr=1e6", "value"),
        ("latco", "policy.lr=1e6", "policy"),
    ],
)
def test_weights_blowing_up_while_finite_stop_the_run(tmp_path: Path, cli, agent, override, network):
    run = tmp_path / "run"
    extra = ["planner.init=policy"] if agent == "latco" else []
    args = ["train", *STATE, "--agent", agent, "--run-dir", str(run), *PLANNER, *extra, override]
    line = error_line(cli(*args, check=False))
    assert re.fullmatch(
        rf"collodreamer: error: training diverged at \d+ env frames: the {network} weights grew from norm "
        rf"\S+ to \S+, past run.max_weight_growth=1000 times: lower {override.split('=')[0]}; "
        rf"{re.escape(str(run / 'checkpoint.pt'))} holds the last finite state, at \d+ env frames: .*",
        line,
    )
    payload = load_checkpoint(run / "checkpoint.pt")  # the last healthy state: weights as they were
    assert (
        max(float(t.abs().max()) for t in payload["agent"][network].values() if t.is_floating_point()) < 100
    )
    if agent == "dreamer":
        cli("train", "--resume", str(run), "actor.lr=1e-4")
        assert load_checkpoint(run / "checkpoint.pt")["counters"]["env_frames"] == 400


# --- 9: signals at the edges ----------------------------------------------------------------------


def test_a_signal_during_start_up_gives_no_resume_hint_that_fails(tmp_path: Path, monkeypatch, capsys):
    def interrupted(self):
        raise KeyboardInterrupt  # Ctrl-C once the run folder exists, before its config.yaml

    monkeypatch.setattr(EpisodeStore, "load", interrupted)
    run = tmp_path / "run"
    assert cli_main(["train", *STATE, "--agent", "random", "--run-dir", str(run)]) == 130
    assert run.exists() and not (run / "config.yaml").exists()
    assert capsys.readouterr().err.splitlines()[-1] == "collodreamer: stopped by SIGINT"


def test_ctrl_c_is_heard_even_when_started_with_sigint_ignored(capsys):
    """A non-interactive shell starts background jobs with SIGINT ignored; the command line takes Ctrl-C
    back (a sweep stops on it), as it takes SIGTERM."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert cli_main(["tasks"]) == 0
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "reacher_easy" in capsys.readouterr().out


def test_sigterm_before_training_is_one_line_and_143(tmp_path: Path):
    run = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "collodreamer", "train", *STATE, "--run-dir", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # loading torch, or starting the run
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("collodreamer: stopped by SIGTERM")


def test_a_second_sigterm_stops_at_once_with_143(tmp_path: Path, monkeypatch, capsys, dreamer_run):
    run = copy_of(dreamer_run, tmp_path)

    def signalled_twice(self):
        self.stop._on_signal(signal.SIGTERM, None)
        self.stop._on_signal(signal.SIGTERM, None)

    monkeypatch.setattr(Trainer, "run", signalled_twice)
    assert cli_main(["train", "--resume", str(run)]) == 143
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == f"collodreamer: stopped by SIGTERM; continue with: collodreamer train --resume {run}"


def test_an_episode_whose_record_a_kill_cut_is_recorded_on_resume(tmp_path: Path, dreamer_run):
    run = copy_of(dreamer_run, tmp_path)
    path = run / "metrics.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    last = max(i for i, line in enumerate(lines) if b"train/return" in line)
    expected = json.loads(lines[last])
    path.write_bytes(b"".join(lines[:last]) + lines[last][:30])  # killed in the middle of the line
    resumed(run)
    returns = [r for r in read_metrics(path) if "train/return" in r]
    assert [r["step"] for r in returns] == [100, 200]
    for key in ("step", "train/episode_length", "train/episodes"):
        assert returns[-1][key] == expected[key]
    assert returns[-1]["train/return"] == pytest.approx(expected["train/return"], abs=1e-4)
    steps = [r["step"] for r in read_metrics(path)]
    assert steps == sorted(steps)


# --- 7: a full disk -------------------------------------------------------------------------------


def limited_to(size: int):
    def limit() -> None:  # in the child: files may not grow past size bytes, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    return limit


def test_a_full_disk_under_tensorboard_is_one_line_naming_it(tmp_path: Path):
    run = tmp_path / "run"
    args = dreamer_command(run)
    result = subprocess.run(args, capture_output=True, text=True, preexec_fn=limited_to(3000), timeout=300)
    assert error_line(result) == f"collodreamer: error: File too large: {run / 'tensorboard'}"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("cause", ["full disk", "no imageio-ffmpeg"])
def test_a_video_that_cannot_be_written_is_one_line_and_no_truncated_file(tmp_path: Path, cause):
    path = tmp_path / "test.mp4"
    script = (
        "import sys, numpy as np\n"
        + ("sys.modules['imageio_ffmpeg'] = None\n" if cause == "no imageio-ffmpeg" else "")
        + "from pathlib import Path\n"
        "from collodreamer.training.evaluation import save_video\n"
        "frames = list(np.random.default_rng(0).integers(0, 255, (60, 128, 128, 3), dtype=np.uint8))\n"
        "try:\n"
        f"    save_video(Path({str(path)!r}), frames)\n"
        "except OSError as error:\n"
        "    print(f'{error.strerror}: {error.filename}', file=sys.stderr)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        preexec_fn=limited_to(20_000) if cause == "full disk" else None,
        timeout=300,
    )
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("cannot encode the video (")
        and lines[0].endswith(f": {path}")
    )
    assert not path.exists()
