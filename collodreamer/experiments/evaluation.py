"""``collodreamer eval``: test trained runs (or reference policies on their tasks) on fresh episodes,
many at once, with a bootstrap interval per run and per (agent, task, obs)."""

from __future__ import annotations

from collections import defaultdict
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

from collodreamer.config import ConfigError, load_config
from collodreamer.experiments.stats import bootstrap_ci, stratified_bootstrap_ci
from collodreamer.rundir import RunDir, runs_under
from collodreamer.training.evaluation import Policy, evaluate_run


def returns_summary(returns: list[float]) -> dict[str, Any]:
    """Test returns as reported: mean, 95% bootstrap interval, every episode's."""
    low, high = bootstrap_ci(np.asarray(returns))
    return {"mean": float(np.mean(returns)), "ci": [low, high], "returns": [float(r) for r in returns]}


def run_dirs(paths: list[Path], policy: Policy = "agent") -> list[Path]:
    """The runs named, or found one level under a folder of runs (a sweep's): those with a
    checkpoint (any with a config for a reference policy)."""

    def usable(run: RunDir) -> bool:
        return run.checkpoint.exists() if policy == "agent" else run.is_run()

    found = [run for path in paths for run in runs_under(path, usable)]
    if not found:
        needed = "trained checkpoint" if policy == "agent" else "config"
        raise ConfigError(f"no run with a {needed} in {' '.join(map(str, paths))}")
    return found


def _test_run(job: tuple[Path, int, Policy]) -> dict[str, Any]:
    run, episodes, policy = job
    config = load_config(RunDir(run).config)
    agent = config.agent if policy == "agent" else policy
    return {
        "run": run.name,
        "agent": agent,
        "task": config.env.task,
        "obs": config.env.obs,
        "seed": config.seed,
        **returns_summary(evaluate_run(run, episodes, policy=policy)),
    }


def evaluate_runs(
    paths: list[Path], episodes: int, workers: int = 1, policy: Policy = "agent"
) -> dict[str, Any]:
    """Test every run under ``paths`` (``workers`` at once, one process each) on ``episodes`` fresh
    episodes: per run, and per (agent, task, obs) the mean over its runs with an interval from a
    stratified bootstrap over each run's episodes (so seeds weigh alike)."""
    if episodes < 1:
        raise ConfigError(f"--episodes must be at least 1, got {episodes}")
    jobs = [(run, episodes, policy) for run in run_dirs(paths, policy)]
    if workers > 1:
        with Pool(workers) as pool:
            rows = pool.map(_test_run, jobs)
    else:
        rows = [_test_run(job) for job in jobs]
    by_group: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for row in rows:
        by_group[f"{row['agent']} {row['task']} {row['obs']}"][str(row["seed"])] = np.asarray(row["returns"])
    groups = {}
    for name, seeds in sorted(by_group.items()):
        mean_of_seeds = lambda s, name=name: float(np.mean([r.mean() for r in s[name].values()]))  # noqa: E731
        low, high = stratified_bootstrap_ci({name: seeds}, mean_of_seeds)
        groups[name] = {"mean": mean_of_seeds(by_group), "ci": [low, high], "seeds": sorted(seeds)}
    return {"episodes": episodes, "policy": policy, "runs": rows, "groups": groups}
