"""Wall-clock and env frames until a run's mean test return first reaches given scores.

    python benchmarks/time_to_score.py RUN_DIR... [--thresholds 500 900] [--out FILE.json]
    python benchmarks/time_to_score.py --spec SPEC.yaml [--root DIR] [--workers 2] ...

Reads each run's ``metrics.jsonl``: the first test record whose ``test/return`` (the mean over that
test's episodes) reaches a threshold gives the env frames and the run's ``elapsed_s`` (wall-clock
summed across resumes, tests included). With ``--spec`` it first runs (or resumes) the sweep of that
spec, then reads its runs. Prints one row per run and the median over runs, and writes JSON with the
machine it ran on.
"""

from __future__ import annotations

import argparse
from itertools import pairwise
from math import inf, isfinite
from pathlib import Path
from statistics import median
from typing import Any

from common import write_json

from collodreamer.experiments import expand, load_spec, run_sweep
from collodreamer.rundir import RunDir
from collodreamer.training import read_metrics


def finite(value: float) -> float | None:
    return value if isfinite(value) else None


def first_reaching(records: list[dict[str, Any]], threshold: float) -> dict[str, float] | None:
    """The env frames and elapsed seconds of the first test whose mean return reaches ``threshold``."""
    for record in records:
        if record.get("test/return", -float("inf")) >= threshold:
            return {
                "env_frames": record["step"],
                "elapsed_s": record.get("elapsed_s"),
                "return": record["test/return"],
            }
    return None


def frames_per_second(records: list[dict[str, Any]]) -> dict[str, float | None]:
    """Env frames per wall-clock second over the whole run, with and without the time spent testing.

    A test's time is the elapsed time from the record before it to the test record itself.
    """
    timed = [r for r in records if r.get("elapsed_s") is not None]
    if not timed or timed[-1]["elapsed_s"] <= 0:
        return {"overall": None, "without_tests": None}
    total_s = timed[-1]["elapsed_s"]
    test_s = sum(b["elapsed_s"] - a["elapsed_s"] for a, b in pairwise(timed) if "test/return" in b)
    frames = timed[-1]["step"]
    return {"overall": frames / total_s, "without_tests": frames / (total_s - test_s)}


def run_rows(run_dirs: list[Path], thresholds: list[float]) -> list[dict[str, Any]]:
    rows = []
    for run_dir in run_dirs:
        records = read_metrics(RunDir(run_dir).metrics)
        tests = [r for r in records if "test/return" in r]
        rows.append(
            {
                "run": str(run_dir),
                "tests": [(r["step"], r.get("elapsed_s"), r["test/return"]) for r in tests],
                "final_env_frames": records[-1]["step"] if records else 0,
                "final_elapsed_s": records[-1].get("elapsed_s") if records else None,
                "env_frames_per_s": frames_per_second(records),
                "reached": {str(t): first_reaching(tests, t) for t in thresholds},
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR")
    parser.add_argument("--spec", help="a sweep spec to run (or resume) first; its runs are read")
    parser.add_argument("--root", help="the sweep's folder (default runs/sweeps/NAME)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--thresholds", nargs="*", type=float, default=[500.0, 900.0])
    parser.add_argument("--out", default="results/benchmarks/time_to_score.json")
    args = parser.parse_args()
    run_dirs = [Path(r) for r in args.runs]
    if args.spec:
        sweep = expand(load_spec(Path(args.spec)))
        root = Path(args.root or Path("runs") / "sweeps" / sweep.name)
        run_sweep(sweep, root, workers=args.workers)
        run_dirs += [root / run.name for run in sweep.runs]
    if not run_dirs:
        parser.error("give RUN_DIRs or --spec")
    rows = run_rows(run_dirs, args.thresholds)
    summary = {}
    for threshold in args.thresholds:
        hits = [row["reached"][str(threshold)] for row in rows]
        reached = [hit for hit in hits if hit is not None]
        summary[str(threshold)] = {
            "runs_reaching": len(reached),
            "runs": len(hits),
            # A run that never reached it counts as infinitely slow: the median is then a lower bound,
            # and None where half the runs or more never reached it.
            "median_elapsed_s": finite(median([h["elapsed_s"] if h else inf for h in hits])),
            "median_env_frames": finite(median([h["env_frames"] if h else inf for h in hits])),
        }
    for kind in ("overall", "without_tests"):
        rates = [row["env_frames_per_s"][kind] for row in rows if row["env_frames_per_s"][kind]]
        summary[f"median_env_frames_per_s_{kind}"] = median(rates) if rates else None
    for row in rows:
        cells = []
        for threshold in args.thresholds:
            hit = row["reached"][str(threshold)]
            cells.append(
                f"{threshold:g}: {hit['env_frames']} frames, {hit['elapsed_s'] / 60:.1f} min"
                if hit and hit["elapsed_s"] is not None
                else f"{threshold:g}: not reached"
            )
        rates = row["env_frames_per_s"]
        if rates["overall"]:
            cells.append(f"{rates['overall']:.2f} env frames/s ({rates['without_tests']:.2f} without tests)")
        print(f"{row['run']}: " + "; ".join(cells))
    for threshold in args.thresholds:
        stats = summary[str(threshold)]
        seconds = stats["median_elapsed_s"]
        print(
            f"median over {stats['runs']} runs to reach {threshold:g}: "
            + (f"{seconds / 60:.1f} min, {stats['median_env_frames']} frames" if seconds else "not reached")
            + f" ({stats['runs_reaching']} reached it)"
        )
    print(
        "median env frames per wall-clock second: "
        f"{summary['median_env_frames_per_s_overall']} (tests included), "
        f"{summary['median_env_frames_per_s_without_tests']} (without tests)"
    )
    write_json(
        Path(args.out),
        {"benchmark": "time_to_score", "thresholds": args.thresholds, "summary": summary, "rows": rows},
    )


if __name__ == "__main__":
    main()
