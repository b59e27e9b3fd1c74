"""Aggregate statistics over seeds: interquartile mean and percentile-bootstrap confidence intervals
(as rliable recommends for few-run RL results)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def iqm(values: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% of the values (the 25%-75% trimmed mean).

    With fewer than 4 values nothing is trimmed away evenly, so it is the plain mean."""
    values = np.sort(np.asarray(values, dtype=float).ravel())
    n = len(values)
    if n < 4:
        return float(values.mean())
    cut = n // 4
    return float(values[cut : n - cut].mean())


def bootstrap_ci(
    values: np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    confidence: float = 0.95,
    samples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over resampled values (with replacement)."""
    values = np.asarray(values, dtype=float).ravel()
    if len(values) < 2:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    draws = rng.choice(values, size=(samples, len(values)), replace=True)
    stats = np.array([statistic(row) for row in draws])
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [tail, 1.0 - tail])
    return float(low), float(high)


def probability_of_improvement(x: dict[str, np.ndarray], y: dict[str, np.ndarray]) -> float:
    """P(X > Y) (Agarwal et al. 2021, rliable): per task, the share of (run of X, run of Y) pairs in
    which X scores higher (ties count one half), averaged over the tasks both have."""
    tasks = sorted(set(x) & set(y))
    shares = []
    for task in tasks:
        a, b = np.asarray(x[task], float)[:, None], np.asarray(y[task], float)[None, :]
        shares.append(float(((a > b) + 0.5 * (a == b)).mean()))
    return float(np.mean(shares))


def stratified_bootstrap_ci(
    scores: dict[str, dict[str, np.ndarray]],
    statistic: Callable[[dict[str, dict[str, np.ndarray]]], float],
    confidence: float = 0.95,
    samples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of ``statistic`` over resamples that draw, for every agent and task
    separately, that task's runs with replacement (rliable's stratified bootstrap: each task keeps its
    number of runs). ``scores``: agent -> task -> per-run scores."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(samples):
        resampled = {
            agent: {task: rng.choice(np.asarray(runs, float), size=len(runs)) for task, runs in tasks.items()}
            for agent, tasks in scores.items()
        }
        values.append(statistic(resampled))
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def aggregate(scores: dict[str, dict[str, np.ndarray]], samples: int = 2000) -> dict:
    """Across tasks: each agent's IQM of all its runs' scores with a stratified bootstrap interval, and
    the probability of improvement of each agent over each other one, with its interval.
    ``scores``: agent -> task -> per-run normalised scores."""
    agents = sorted(scores)
    result: dict = {"agents": {}, "probability_of_improvement": {}, "probability_of_improvement_ci": {}}
    for agent in agents:
        pooled = lambda s, agent=agent: iqm(np.concatenate(list(s[agent].values())))  # noqa: E731
        result["agents"][agent] = {
            "iqm": pooled(scores),
            "ci": list(stratified_bootstrap_ci({agent: scores[agent]}, pooled, samples=samples)),
            "runs": int(sum(len(v) for v in scores[agent].values())),
        }
    for first in agents:
        for second in agents:
            if first == second:
                continue
            key = f"{first}>{second}"
            pair = {first: scores[first], second: scores[second]}
            improvement = lambda s, a=first, b=second: probability_of_improvement(s[a], s[b])  # noqa: E731
            result["probability_of_improvement"][key] = improvement(pair)
            result["probability_of_improvement_ci"][key] = list(
                stratified_bootstrap_ci(pair, improvement, samples=samples)
            )
    return result
