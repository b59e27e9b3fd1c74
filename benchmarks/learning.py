"""Learning benchmark: train an agent on a task for several seeds, then write its test-return curve.

    python benchmarks/learning.py --agent dreamer --task dmc:reacher_easy --obs state \
        --steps 100000 --seeds 2 [--preset cpu] [key=value ...]

Seeds run in parallel (one process and one thread each by default). Each seed has a fixed run
directory under --root, so rerunning the same command resumes unfinished seeds from their checkpoints
and skips finished ones. The curve (CSV), a summary (JSON, with the exact command and the machine) and
a plot (PNG) go to --out. With --report, nothing trains: the files are written from what the seeds have
logged so far (a run in progress or cut short), and the JSON says so ("finished": false).
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import write_json

from collodreamer.experiments.plots import common_test_points, find_runs
from collodreamer.training import load_checkpoint


def seed_command(args: argparse.Namespace, seed: int, run_dir: Path) -> list[str] | None:
    """The CLI call that starts, resumes or (None) skips the run of one seed."""
    base = [sys.executable, "-m", "collodreamer", "train"]
    steps = f"run.steps={args.steps}"
    checkpoint = run_dir / "checkpoint.pt"
    if checkpoint.exists():
        if load_checkpoint(checkpoint)["counters"]["env_frames"] >= args.steps:
            return None
        return [*base, "--resume", str(run_dir), steps]
    presets = [item for name in args.preset for item in ("--preset", name)]
    return [
        *base,
        "--agent",
        args.agent,
        "--task",
        args.task,
        "--obs",
        args.obs,
        *presets,
        "--run-dir",
        str(run_dir),
        steps,
        f"seed={seed}",
        *args.overrides,
    ]


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--agent", required=True)
    parser.add_argument("--task", default="dmc:reacher_easy")
    parser.add_argument("--obs", default="state", choices=["state", "pixels"])
    parser.add_argument("--steps", type=int, default=100_000, help="env frames per seed")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--preset", action="append", default=[])
    parser.add_argument("--parallel", type=int, default=2, help="seeds trained at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per seed")
    parser.add_argument("--root", default="runs/learning")
    parser.add_argument("--out", default="results/learning")
    parser.add_argument("--name", help="result name (default: agent-task-obs)")
    parser.add_argument("--report", action="store_true", help="write the results so far; train nothing")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    name = args.name or f"{args.agent}-{args.task.split(':')[-1]}-{args.obs}"
    run_dirs = [Path(args.root) / f"{name}-s{seed}" for seed in range(args.seeds)]
    if not args.report:
        train(args, run_dirs)
    report(args, name, run_dirs)


def train(args: argparse.Namespace, run_dirs: list[Path]) -> None:
    """Train (or resume) every seed to args.steps, args.parallel at a time."""
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
        "CI": "true",
    }
    pending = [(seed, run_dir) for seed, run_dir in enumerate(run_dirs)]
    running: list[tuple[int, subprocess.Popen, object]] = []
    start = time.time()
    while pending or running:
        while pending and len(running) < args.parallel:
            seed, run_dir = pending.pop(0)
            command = seed_command(args, seed, run_dir)
            if command is None:
                print(f"seed {seed}: finished already ({run_dir})")
                continue
            run_dir.mkdir(parents=True, exist_ok=True)
            log = open(run_dir / "train.log", "a")  # noqa: SIM115 (closed when the process ends)
            print(f"seed {seed}: {shlex.join(command)}", flush=True)
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)
            running.append((seed, process, log))
        time.sleep(5)
        for item in list(running):
            seed, process, log = item
            if process.poll() is not None:
                log.close()
                running.remove(item)
                status = "done" if process.returncode == 0 else f"FAILED (exit {process.returncode})"
                print(f"seed {seed}: {status} after {(time.time() - start) / 60:.1f} min", flush=True)
                if process.returncode != 0:
                    sys.exit(f"seed {seed} failed; see {run_dirs[seed] / 'train.log'}")


def report(args: argparse.Namespace, name: str, run_dirs: list[Path]) -> None:
    """Write the test-return curve over the test points that every seed has reached."""
    if not all((run_dir / "metrics.jsonl").exists() for run_dir in run_dirs):
        sys.exit(f"{name}: not every seed has logged yet")
    points = common_test_points(find_runs(run_dirs))
    if not points:
        sys.exit(f"{name}: no test return logged by every seed yet")
    steps = list(points)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{name}.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["env_frames", *[f"seed{s}" for s in range(args.seeds)], "mean"])
        for step, values in points.items():
            writer.writerow([step, *[f"{v:.2f}" for v in values], f"{np.mean(values):.2f}"])
    final = points[steps[-1]].tolist()
    # The command that trains these runs (a --report call writes the results of the same command).
    command = "python benchmarks/learning.py " + shlex.join(a for a in sys.argv[1:] if a != "--report")
    print(
        f"{name}: test return at {steps[-1]} env frames: mean {np.mean(final):.1f} "
        f"(seeds: {', '.join(f'{v:.1f}' for v in final)})"
    )
    for step, values in points.items():
        print(f"  {step:>8d}  {np.mean(values):8.1f}")
    write_json(
        out / f"{name}.json",
        {
            "benchmark": "learning",
            "command": command,
            "agent": args.agent,
            "task": args.task,
            "obs": args.obs,
            "env_frames": steps[-1],
            "steps": args.steps,
            "finished": steps[-1] >= args.steps,
            "seeds": args.seeds,
            "parallel_seeds": args.parallel,
            "threads_per_seed": args.threads,
            "final_test_returns": final,
            "final_mean": float(np.mean(final)),
            "curve": {str(step): values.tolist() for step, values in points.items()},
        },
    )
    plot(out / f"{name}.png", name, points)


def plot(path: Path, title: str, points: dict[int, np.ndarray]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = list(points)
    values = np.stack(list(points.values()), 1)  # [seeds, test points]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for row in values:
        ax.plot(steps, row, color="C0", alpha=0.3)
    ax.plot(steps, values.mean(0), color="C0", label=f"mean of {len(values)} seeds")
    ax.set(xlabel="env frames", ylabel="test return", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
