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
