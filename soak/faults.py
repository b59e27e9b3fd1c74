"""Fault injection on real tiny runs (reacher_easy from states): kills, signals, damaged files and a
full disk, each repeated; prints a table and writes results/faults.json and results/faults.md.

python soak/faults.py [--kills 20] [--signals 8] [--episode-flips 300] [--checkpoint-flips 150]
                            [--disk-full 12] [--missing-episodes 20] [--identity 20] [--blow-ups 4]
                            [--second-writers 3] [--config-flips 100] [--seed 0] [--root DIR]
                            [--out results/faults]

About 10 minutes on one core.

Probes (dreamer, latco and collodreamer in turn where a run is started):
- kill: SIGKILL at a random moment of a run (start-up, training, a checkpoint or episode write);
- signal: SIGINT or SIGTERM at a random moment: the run saves a checkpoint and exits 130 or 143;
- episode flip: one random bit of a random episode file of a finished run flipped;
- checkpoint flip: one random bit of its checkpoint flipped: a resume must refuse it in one line and
  leave it as it is; moved aside by hand, the run then goes on from its episodes;
- disk full: files may not grow past a random size (RLIMIT_FSIZE, 1 to 256 kB, log-uniform): the run
  stops with one line and leaves no temp file;
- episode files deleted (some or all): a resume refuses in one line, writing nothing; with
  ``--without-missing-episodes`` it goes on, keeping every metrics line;
- another identity on resume (agent, task, obs, action repeat, seed, a model size): refused in one line
  naming the setting, nothing written;
- a learning rate of 1e6: the run stops in one line (non-finite, or weights grown past
  ``run.max_weight_growth``), then resumes with the rate lowered;
- a second writer on a run in use, its old lock file deleted: refused in one line, the first run's
  metrics left as they are;
- config flip: one random bit of ``config.yaml`` flipped: the resume goes on with the checkpoint's config.

After each fault the run is resumed (``--resume RUN_DIR run.steps=...``) to a finite end. Columns:
``resumed``, trials whose run then reached its end; ``one line``, trials that ended with a one-line
message where one was due (signals, damaged checkpoints, a full disk, refused resumes); ``tracebacks``;
``data lost``, episode files that loaded before the fault and not after (a damaged file itself
excepted: it is reported by name and kept), and for the resume probes also a metrics history cut, a
file a refused resume changed, or a setting a damaged ``config.yaml`` changed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from collodreamer import cli
from collodreamer.data import episode_problem
from collodreamer.files import write_json
from collodreamer.rundir import RunDir
from collodreamer.timing import machine
from collodreamer.training import load_checkpoint, read_metrics

AGENTS = ("dreamer", "latco", "collodreamer")
TINY = ["--preset", "tiny", "--task", "dmc:reacher_easy", "--obs", "state"]
PLANNER = ["planner.horizon=6", "planner.iterations=5", "planner.replan_every=3"]
ENDLESS = ["run.steps=1000000", "run.checkpoint_every=100", "run.eval_every=100000"]
ENVIRONMENT = {**os.environ, "CI": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "collodreamer", *args]


def loadable(run: Path) -> set[str]:
    """The episode files of ``run`` that load whole and well formed."""
    names = set()
    for path in RunDir(run).episodes.glob("ep-*.npz"):
        with contextlib.suppress(Exception), np.load(path, allow_pickle=False) as data:
            if episode_problem({k: data[k] for k in data.files}) is None:
                names.add(path.name)
    return names


def one_line(output: str) -> bool:
    """Whether the output holds exactly one line besides the log, and no traceback."""
    lines = [
        line for line in output.splitlines() if line.strip() and not line.startswith(("INFO", "WARNING"))
    ]
    return len(lines) == 1 and lines[0].startswith("collodreamer: ") and "Traceback" not in output


def disk_frames(run: Path) -> int:
    """Env frames in the episode files of ``run`` that load (action repeat 2)."""
    frames = 0
    for name in loadable(run):
        frames += 2 * (int(name.rsplit("-", 1)[1].split(".")[0]) - 1)
    return frames


def finish(run: Path, extra: int = 100, start: list[str] | None = None) -> tuple[bool, str]:
    """Resume ``run`` to ``extra`` env frames beyond its episodes (where a fault came before the run's
    config was written, rerun its ``start`` command instead); (reached its end, output)."""
    steps = disk_frames(run) + extra
    if RunDir(run).config.exists() or start is None:
        args = command("train", "--resume", str(run), f"run.steps={steps}")
    else:
        args = [*start, f"run.steps={steps}"]
    result = subprocess.run(args, capture_output=True, text=True, env=ENVIRONMENT, timeout=600)
    ok = result.returncode == 0 and load_checkpoint(RunDir(run).checkpoint)["counters"]["env_frames"] >= steps
    return ok, result.stderr


def start_command(agent: str, run: Path) -> list[str]:
    return command("train", *TINY, "--agent", agent, "--run-dir", str(run), *PLANNER, *ENDLESS[1:])


def default_sigint() -> None:
    """In the child: SIGINT as a terminal sends it, though this benchmark may run in the background
    (where the shell ignores SIGINT, and its children would inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt(run: Path, agent: str, signum: int, delay: float) -> tuple[int, str]:
    """Start (or resume) an endless run, send ``signum`` after ``delay`` seconds; (exit code, output)."""
    if RunDir(run).config.exists():
        args = command("train", "--resume", str(run), *ENDLESS)
    else:
        args = [*start_command(agent, run), ENDLESS[0]]
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=output,
            env=ENVIRONMENT,
            text=True,
            preexec_fn=default_sigint,
        )
        time.sleep(delay)
        process.send_signal(signum)
        code = process.wait(timeout=600)
        output.seek(0)
        return code, output.read()


def probe_kills(root: Path, trials: int, rng: np.random.Generator, signals: bool) -> dict[str, Any]:
    """SIGKILL (or SIGINT / SIGTERM with ``signals``) at random moments, each followed by a resume."""
    row = {
        "trials": trials,
        "resumed": 0,
        "one_line": 0 if signals else None,
        "tracebacks": 0,
        "data_lost": 0,
    }
    for trial in range(trials):
        agent = AGENTS[trial % len(AGENTS)]
        run = root / f"{'signal' if signals else 'kill'}-{agent}"
        signum = (signal.SIGINT, signal.SIGTERM)[trial % 2] if signals else signal.SIGKILL
        code, output = interrupt(run, agent, signum, float(rng.uniform(2.0, 9.0)))
        if signals:
            row["one_line"] += code == 128 + signum and one_line(output)
        row["tracebacks"] += "Traceback" in output
        kept = loadable(run)
        ok, output = finish(run, start=start_command(agent, run))
        row["resumed"] += ok
        row["tracebacks"] += "Traceback" in output
        row["data_lost"] += len(kept - loadable(run))
    return row


def finished_run(root: Path, agent: str = "dreamer") -> Path:
    run = root / f"base-{agent}"
    subprocess.run(
        [*start_command(agent, run), "run.steps=400"], check=True, capture_output=True, env=ENVIRONMENT
    )
    return run


def flip_bit(path: Path, rng: np.random.Generator) -> bytes:
    data = bytearray(path.read_bytes())
    bit = int(rng.integers(len(data) * 8))
    data[bit // 8] ^= 1 << (bit % 8)
    path.write_bytes(bytes(data))
    return bytes(data)


def main_in_process(*args: str) -> tuple[int, str]:
    """``collodreamer ARGS`` in this process (no start-up cost); its exit code and error output, an
    escaping exception counted as a traceback."""
    stream = io.StringIO()
    with contextlib.redirect_stderr(stream), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(list(args))
        except Exception as error:
            stream.write(f"Traceback (in process): {type(error).__name__}: {error}\n")
            code = 1
    return code, stream.getvalue()


def probe_episode_flips(root: Path, base: Path, trials: int, rng: np.random.Generator) -> dict[str, Any]:
    row = {"trials": trials, "resumed": 0, "one_line": None, "tracebacks": 0, "data_lost": 0}
    steps = load_checkpoint(RunDir(base).checkpoint)["counters"]["env_frames"]
    for trial in range(trials):
        run = root / f"episode-flip-{trial}"
        shutil.copytree(base, run)
        files = sorted(RunDir(run).episodes.glob("ep-*.npz"))
        damaged = files[int(rng.integers(len(files)))]
        flip_bit(damaged, rng)
        others = loadable(run) - {damaged.name}
        code, output = main_in_process("train", "--resume", str(run), f"run.steps={steps}")
        reported = damaged.name in loadable(run) or str(damaged) in output
        row["resumed"] += code == 0 and reported and damaged.exists()
        row["tracebacks"] += "Traceback" in output
        row["data_lost"] += len(others - loadable(run))
        shutil.rmtree(run)
    return row


def probe_checkpoint_flips(root: Path, base: Path, trials: int, rng: np.random.Generator) -> dict[str, Any]:
    row = {"trials": trials, "resumed": 0, "one_line": 0, "tracebacks": 0, "data_lost": 0}
    steps = load_checkpoint(RunDir(base).checkpoint)["counters"]["env_frames"]
    for trial in range(trials):
        run = root / f"checkpoint-flip-{trial}"
        shutil.copytree(base, run)
        kept = loadable(run)
        damaged = flip_bit(RunDir(run).checkpoint, rng)
        code, output = main_in_process("train", "--resume", str(run))
        refused = code == 2 and one_line(output) and "checkpoint" in output
        row["one_line"] += refused and RunDir(run).checkpoint.read_bytes() == damaged
        row["tracebacks"] += "Traceback" in output
        checkpoint = RunDir(run).checkpoint
        checkpoint.rename(checkpoint.with_name(checkpoint.name + ".damaged"))  # what the error asks of a user
        code, output = main_in_process("train", "--resume", str(run), f"run.steps={steps}")
        row["resumed"] += code == 0
        row["tracebacks"] += "Traceback" in output
        row["data_lost"] += len(kept - loadable(run))
        shutil.rmtree(run)
    return row


def probe_disk_full(root: Path, trials: int, rng: np.random.Generator) -> dict[str, Any]:
    row = {"trials": trials, "resumed": 0, "one_line": 0, "tracebacks": 0, "data_lost": 0, "limits_kb": []}
    for trial in range(trials):
        agent = AGENTS[trial % len(AGENTS)]
        run = root / f"disk-full-{trial}"
        limit = int(math.exp(rng.uniform(math.log(1024), math.log(256 * 1024))))
        row["limits_kb"].append(round(limit / 1024, 1))

        def small_disk(limit: int = limit) -> None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, as on a full disk

        start = start_command(agent, run)
        result = subprocess.run(
            [*start, "run.steps=400"], capture_output=True, text=True, env=ENVIRONMENT, preexec_fn=small_disk
        )
        temps = [p for p in run.rglob("*") if p.name.endswith(".tmp")]
        clean = (result.returncode == 0 or (result.returncode == 2 and one_line(result.stderr))) and not temps
        row["one_line"] += clean
        row["tracebacks"] += "Traceback" in result.stderr
        kept = loadable(run)
        ok, output = finish(run, start=start)
        metrics = RunDir(run).metrics
        whole = len(read_metrics(metrics)) == len(metrics.read_bytes().splitlines())
        row["resumed"] += ok and whole
        row["tracebacks"] += "Traceback" in output
        row["data_lost"] += len(kept - loadable(run))
    return row


def history(run: Path) -> bytes:
    return RunDir(run).metrics.read_bytes()


def probe_missing_episodes(root: Path, base: Path, trials: int, rng: np.random.Generator) -> dict[str, Any]:
    """Some episode files deleted (all of them, or old ones): a resume refuses in one line, writing
    nothing; with --without-missing-episodes it goes on keeping every metrics line."""
    row = {"trials": trials, "resumed": 0, "one_line": 0, "tracebacks": 0, "data_lost": 0}
    steps = load_checkpoint(RunDir(base).checkpoint)["counters"]["env_frames"]
    for trial in range(trials):
        run = root / f"missing-{trial}"
        shutil.copytree(base, run)
        files = sorted(RunDir(run).episodes.glob("ep-*.npz"))
        for path in files[: int(rng.integers(1, len(files) + 1))]:
            path.unlink()
        before, kept = history(run), loadable(run)
        code, output = main_in_process("train", "--resume", str(run), f"run.steps={steps + 100}")
        refused = code == 2 and one_line(output) and "are missing from" in output
        row["one_line"] += refused and history(run) == before
        row["tracebacks"] += "Traceback" in output
        code, output = main_in_process(
            "train", "--resume", str(run), f"run.steps={steps + 100}", "--without-missing-episodes"
        )
        row["resumed"] += code == 0
        row["tracebacks"] += "Traceback" in output
        row["data_lost"] += (not history(run).startswith(before)) + len(kept - loadable(run))
        shutil.rmtree(run)
    return row


IDENTITY = [
    "agent=latco",
    "env.task=dmc:reacher_hard",
    "env.task=dmc:finger_spin",
    "env.obs=pixels",
    "env.action_repeat=4",
    "seed=1",
    "model.deter=32",
    "model.latent=categorical",
    "actor.units=32",
    "value.layers=2",
]


def probe_identity(root: Path, base: Path, trials: int, rng: np.random.Generator) -> dict[str, Any]:
    """An override of the run's identity on resume: refused in one line naming the setting, nothing
    written."""
    row = {"trials": trials, "resumed": 0, "one_line": 0, "tracebacks": 0, "data_lost": 0}
    run = root / "identity"
    shutil.copytree(base, run)
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    for _ in range(trials):
        override = IDENTITY[int(rng.integers(len(IDENTITY)))]
        code, output = main_in_process("train", "--resume", str(run), override)
        named = override.split("=")[0] in output or "cannot go on as" in output
        row["one_line"] += code == 2 and one_line(output) and named
        row["tracebacks"] += "Traceback" in output
        row["data_lost"] += sum(p.read_bytes() != data for p, data in files.items())
    code, output = main_in_process("train", "--resume", str(run))
    row["resumed"] = trials if code == 0 else 0
    return row


BLOW_UPS = {
    "dreamer": ["actor.lr=1e6", "model.lr=1e6"],
    "latco": ["model.lr=1e6"],
    "collodreamer": ["value.lr=1e6"],
}


def probe_blow_ups(root: Path, trials: int) -> dict[str, Any]:
    """A learning rate of 1e6: the run stops in one line naming what diverged, its checkpoint finite;
    resumed with the rate lowered, it reaches its end."""
    row = {"trials": trials, "resumed": 0, "one_line": 0, "tracebacks": 0, "data_lost": 0}
    cases = [(agent, override) for agent, overrides in BLOW_UPS.items() for override in overrides]
    for trial in range(trials):
        agent, override = cases[trial % len(cases)]
        run = root / f"blow-up-{trial}"
        code, output = main_in_process(
            "train", *TINY, "--agent", agent, "--run-dir", str(run), *PLANNER, override, "run.steps=400"
        )
        row["one_line"] += code == 2 and one_line(output) and "training diverged" in output
        row["tracebacks"] += "Traceback" in output
        kept = loadable(run)
        code, output = main_in_process("train", "--resume", str(run), override.split("=")[0] + "=1e-4")
        row["resumed"] += code == 0
        row["tracebacks"] += "Traceback" in output
        row["data_lost"] += len(kept - loadable(run))
    return row


def probe_second_writer(root: Path, trials: int) -> dict[str, Any]:
    """A second ``--resume`` on a run in use, its old lock file deleted: refused in one line; the first
    run's metrics are not rewritten."""
    row = {"trials": trials, "resumed": 0, "one_line": 0, "tracebacks": 0, "data_lost": 0}
    for trial in range(trials):
        agent = AGENTS[trial % len(AGENTS)]
        run = root / f"second-writer-{agent}"
        args = [*start_command(agent, run), ENDLESS[0]]
        process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENVIRONMENT
        )
        while process.poll() is None and not RunDir(run).checkpoint.exists():
            time.sleep(0.1)
        for path in run.glob(".lock"):
            path.unlink()
        before = history(run)
        code, output = main_in_process("train", "--resume", str(run))
        row["one_line"] += code == 2 and one_line(output) and "in use" in output
        row["tracebacks"] += "Traceback" in output
        row["data_lost"] += not history(run).startswith(before)
        process.kill()
        process.wait()
        kept = loadable(run)
        ok, output = finish(run)
        row["resumed"] += ok
        row["data_lost"] += len(kept - loadable(run))
    return row


def probe_config_flips(root: Path, base: Path, trials: int, rng: np.random.Generator) -> dict[str, Any]:
    """One random bit of ``config.yaml`` flipped: the resume goes on with the checkpoint's config (a
    setting it changed silently counts as data lost)."""
    row = {"trials": trials, "resumed": 0, "one_line": None, "tracebacks": 0, "data_lost": 0}
    saved = load_checkpoint(RunDir(base).checkpoint)["config"]
    for trial in range(trials):
        run = root / f"config-flip-{trial}"
        shutil.copytree(base, run)
        flip_bit(RunDir(run).config, rng)
        code, output = main_in_process("train", "--resume", str(run))
        row["resumed"] += code == 0
        row["tracebacks"] += "Traceback" in output
        row["data_lost"] += code == 0 and load_checkpoint(RunDir(run).checkpoint)["config"] != saved
        shutil.rmtree(run)
    return row


def table(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["| probe | trials | resumed | one line | tracebacks | data lost |", "|---|---|---|---|---|---|"]
    for probe, row in rows.items():
        one = "-" if row["one_line"] is None else row["one_line"]
        cells = [probe, row["trials"], row["resumed"], one, row["tracebacks"], row["data_lost"]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--signals", type=int, default=8)
    parser.add_argument("--episode-flips", type=int, default=300)
    parser.add_argument("--checkpoint-flips", type=int, default=150)
    parser.add_argument("--disk-full", type=int, default=12)
    parser.add_argument("--missing-episodes", type=int, default=20)
    parser.add_argument("--identity", type=int, default=20)
    parser.add_argument("--blow-ups", type=int, default=4)
    parser.add_argument("--second-writers", type=int, default=3)
    parser.add_argument("--config-flips", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", help="folder for the runs (default: a temporary one, removed after)")
    parser.add_argument("--out", default="results/faults", help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as temporary:
        root = Path(args.root or temporary)
        root.mkdir(parents=True, exist_ok=True)
        base = finished_run(root)
        probes = {
            "SIGKILL at a random moment": lambda: probe_kills(root, args.kills, rng, signals=False),
            "SIGINT / SIGTERM at a random moment": lambda: probe_kills(root, args.signals, rng, signals=True),
            "bit flip in an episode file": lambda: probe_episode_flips(root, base, args.episode_flips, rng),
            "bit flip in the checkpoint": lambda: probe_checkpoint_flips(
                root, base, args.checkpoint_flips, rng
            ),
            "disk full (file size limit)": lambda: probe_disk_full(root, args.disk_full, rng),
            "episode files deleted": lambda: probe_missing_episodes(root, base, args.missing_episodes, rng),
            "another identity on resume": lambda: probe_identity(root, base, args.identity, rng),
            "learning rate 1e6 (finite blow-up)": lambda: probe_blow_ups(root, args.blow_ups),
            "second writer, lock file deleted": lambda: probe_second_writer(root, args.second_writers),
            "bit flip in config.yaml": lambda: probe_config_flips(root, base, args.config_flips, rng),
        }
        rows = {}
        for name, probe in probes.items():
            start = time.perf_counter()
            row = probe()
            if row["trials"]:  # a probe given 0 trials is left out of the table
                rows[name] = {**row, "seconds": round(time.perf_counter() - start, 1)}
                print(f"{name}: {rows[name]}", flush=True)
    markdown = table(rows)
    print(markdown)
    seconds = time.perf_counter() - started
    invocation = "python soak/faults.py " + " ".join(sys.argv[1:])
    write_json(
        Path(f"{args.out}.json"),
        {
            "benchmark": "faults",
            "machine": machine(),
            "command": invocation,
            "seconds": seconds,
            "rows": rows,
        },
    )
    Path(f"{args.out}.md").write_text(
        f"Fault injection on tiny runs, `{invocation.strip()}` ({seconds / 60:.1f} min):\n\n{markdown}\n"
    )
    print(f"wrote {args.out}.md")


if __name__ == "__main__":
    main()
