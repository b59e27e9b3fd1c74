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
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import write_json

from collodreamer.experiments import expand, load_spec, run_sweep
from collodreamer.training import read_metrics


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


def run_rows(run_dirs: list[Path], thresholds: list[float]) -> list[dict[str, Any]]:
    rows = []
    for run_dir in run_dirs:
        records = read_metrics(run_dir / "metrics.jsonl")
        tests = [r for r in records if "test/return" in r]
        rows.append(
            {
                "run": str(run_dir),
                "tests": [(r["step"], r.get("elapsed_s"), r["test/return"]) for r in tests],
                "final_env_frames": records[-1]["step"] if records else 0,
                "final_elapsed_s": records[-1].get("elapsed_s") if records else None,
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
            # A run that never reached it counts as infinitely slow: the median is then a lower bound.
            "median_elapsed_s": statistics.median([h["elapsed_s"] if h else float("inf") for h in hits]),
            "median_env_frames": statistics.median([h["env_frames"] if h else float("inf") for h in hits]),
        }
    for row in rows:
        cells = []
        for threshold in args.thresholds:
            hit = row["reached"][str(threshold)]
            cells.append(
                f"{threshold:g}: {hit['env_frames']} frames, {hit['elapsed_s'] / 60:.1f} min"
                if hit and hit["elapsed_s"] is not None
                else f"{threshold:g}: not reached"
            )
        print(f"{row['run']}: " + "; ".join(cells))
    for threshold, stats in summary.items():
        minutes = stats["median_elapsed_s"] / 60
        print(
            f"median over {stats['runs']} runs to reach {threshold}: {minutes:.1f} min, "
            f"{stats['median_env_frames']} env frames ({stats['runs_reaching']} reached it)"
        )
    write_json(
        Path(args.out),
        {"benchmark": "time_to_score", "thresholds": args.thresholds, "summary": summary, "rows": rows},
    )


if __name__ == "__main__":
    main()
