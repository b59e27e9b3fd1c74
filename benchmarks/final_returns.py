"""Final test returns of trained runs on fresh test episodes: each run's latest checkpoint tested as
`collodreamer eval` tests it (environments of the eval stream of ``collodreamer.seeds``, apart from the
tests during training), per run and per agent. An agent's interval is a stratified bootstrap over its
runs' episodes (each run keeps its number of episodes), so seeds weigh alike.

python benchmarks/final_returns.py runs/sweeps/fig13_pixels_reacher --episodes 20 --workers 2 \
    --out results/fig13_pixels_reacher/final_returns.json
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from multiprocessing import Pool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import returns_summary, write_json

from collodreamer.config import load_config
from collodreamer.experiments.stats import stratified_bootstrap_ci
from collodreamer.training import evaluate_run


def run_dirs(paths: list[str]) -> list[Path]:
    """The runs named, or found one level under a folder of runs (a sweep's): any with a checkpoint."""
    found = []
    for path in map(Path, paths):
        candidates = [path] if (path / "config.yaml").exists() else sorted(path.iterdir())
        found += [run for run in candidates if (run / "checkpoint.pt").exists()]
    if not found:
        raise SystemExit(f"no run with a checkpoint.pt in {' '.join(paths)}")
    return found


def test_run(job: tuple[Path, int]) -> dict:
    run, episodes = job
    config = load_config(run / "config.yaml")
    return {
        "run": run.name,
        "agent": config.agent,
        "task": config.env.task,
        "obs": config.env.obs,
        "seed": config.seed,
        **returns_summary(evaluate_run(run, episodes)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("runs", nargs="+", help="run directories, or folders of them")
    parser.add_argument("--episodes", type=int, default=20, help="fresh test episodes per run")
    parser.add_argument("--workers", type=int, default=1, help="runs tested at once (one core each)")
    parser.add_argument("--out", default="results/final_returns.json")
    args = parser.parse_args()
    jobs = [(run, args.episodes) for run in run_dirs(args.runs)]
    with Pool(args.workers) as pool:
        rows = pool.map(test_run, jobs)
    print(f"{'run':45s} {'mean':>7s} {'95% CI':>16s}")
    for row in rows:
        print(f"{row['run']:45s} {row['mean']:7.1f} [{row['ci'][0]:6.1f}, {row['ci'][1]:6.1f}]")
    by_agent: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for row in rows:
        by_agent[f"{row['agent']} {row['task']} {row['obs']}"][str(row["seed"])] = np.asarray(row["returns"])
    agents = {}
    print(f"\n{'agent, task, obs':45s} {'mean':>7s} {'95% CI':>16s}  seeds")
    for name, seeds in sorted(by_agent.items()):
        mean_of_seeds = lambda s, name=name: float(np.mean([r.mean() for r in s[name].values()]))  # noqa: E731
        low, high = stratified_bootstrap_ci({name: seeds}, mean_of_seeds)
        agents[name] = {"mean": mean_of_seeds(by_agent), "ci": [low, high], "seeds": sorted(seeds)}
        print(f"{name:45s} {agents[name]['mean']:7.1f} [{low:6.1f}, {high:6.1f}]  {' '.join(sorted(seeds))}")
    write_json(Path(args.out), {"episodes": args.episodes, "runs": rows, "agents": agents})


if __name__ == "__main__":
    main()
