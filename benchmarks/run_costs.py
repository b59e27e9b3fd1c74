"""Where finished runs spent their wall-clock, from their own ``perf/*`` records.

    python benchmarks/run_costs.py RUN_DIR... [--after 5000] [--out FILE.json]

The training loop logs, every ``run.log_every`` env frames, the seconds each timed section took per
1000 env frames since the last such record (``perf/model_s``, ``perf/plan_s``, ``perf/behaviour_s``,
``perf/test_s``, ...) and the cumulative ``train/updates``. Over the records after ``--after`` env
frames (the prefill and the first burst of training come before) this sums each section's seconds
and gives, per run: seconds per 1000 env frames of each section, the world model's seconds per
update, and env frames per second with and without tests. Prints one row per run and the median
of each figure per agent, and writes JSON. The runs' records say nothing of the machine they ran
on or what shared it; the JSON's machine is the one that read them.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from statistics import median
from typing import Any

import yaml
from common import write_json

from collodreamer.rundir import RunDir
from collodreamer.training import read_metrics


def section_seconds(records: list[dict[str, Any]], after: int) -> dict[str, float]:
    """Seconds per timed section, summed over the progress records after ``after`` env frames, and
    the env frames, world-model updates and wall-clock seconds they cover (``frames``, ``updates``,
    ``wall``)."""
    progress = [r for r in records if "train/updates" in r]
    before = [r for r in progress if r["step"] <= after]
    last_step, last_updates = (before[-1]["step"], before[-1]["train/updates"]) if before else (0, 0)
    seconds: dict[str, float] = defaultdict(float)
    frames = updates = wall_s = 0
    for record in (r for r in progress if r["step"] > after):
        span = record["step"] - last_step
        for key, value in record.items():
            if key.startswith("perf/") and key.endswith("_s") and not key.endswith("_per_s"):
                seconds[key.removeprefix("perf/").removesuffix("_s")] += value * span / 1000
        wall_s += span / record["perf/env_frames_per_s"]
        frames += span
        updates += record["train/updates"] - last_updates
        last_step, last_updates = record["step"], record["train/updates"]
    return {**seconds, "frames": frames, "updates": updates, "wall": wall_s}


def run_row(run_dir: Path, after: int) -> dict[str, Any]:
    files = RunDir(run_dir)
    config = yaml.safe_load(files.config.read_text())  # as saved: older runs' configs lack newer keys
    totals = section_seconds(read_metrics(files.metrics), after)
    frames, updates, wall_s = totals.pop("frames"), totals.pop("updates"), totals.pop("wall")
    if not frames:
        raise SystemExit(f"{run_dir}: no progress records after {after} env frames")
    return {
        "run": str(run_dir),
        "agent": config["agent"],
        "task": config["env"]["task"],
        "obs": config["env"]["obs"],
        "env_frames": frames,
        "updates": updates,
        "seconds_per_1000_frames": {name: 1000 * s / frames for name, s in sorted(totals.items())},
        "untimed_share": 1 - sum(totals.values()) / wall_s,
        "model_s_per_update": totals.get("model", 0.0) / updates if updates else None,
        "env_frames_per_s": frames / wall_s,
        "env_frames_per_s_without_tests": frames / (wall_s - totals.get("test", 0.0)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR")
    parser.add_argument("--after", type=int, default=5000, help="env frames before the window")
    parser.add_argument("--out", default="results/benchmarks/run_costs.json")
    args = parser.parse_args()
    rows = [run_row(Path(run), args.after) for run in args.runs]
    figures = ("model_s_per_update", "env_frames_per_s", "env_frames_per_s_without_tests")
    by_agent: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_agent[row["agent"]].append(row)
        parts = ", ".join(f"{name} {s:.1f}" for name, s in row["seconds_per_1000_frames"].items())
        update = row["model_s_per_update"]
        print(
            f"{row['run']}: {row['env_frames_per_s']:.2f} env frames/s "
            f"({row['env_frames_per_s_without_tests']:.2f} without tests); "
            + (f"world model {update:.3f} s per update; " if update is not None else "")
            + f"s per 1000 env frames: {parts}"
        )
    summary = {}
    for agent, group in sorted(by_agent.items()):
        summary[agent] = {
            "runs": len(group),
            **{f: median(r[f] for r in group if r[f] is not None) for f in figures},
        }
        cells = ", ".join(f"{f} {v:.3f}" for f, v in summary[agent].items() if f != "runs")
        print(f"median over {agent}'s {len(group)} runs: {cells}")
    write_json(
        Path(args.out),
        {"benchmark": "run_costs", "after_env_frames": args.after, "summary": summary, "rows": rows},
    )


if __name__ == "__main__":
    main()
