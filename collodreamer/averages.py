"""Running means of named scalars between reads: per-update losses and per-plan diagnostics, averaged
over each logging interval (by the training loop's logger and by the planning agents alike)."""

from __future__ import annotations

from collections import defaultdict


class Averages:
    """Sums and counts of each named scalar since the last :meth:`take`."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: dict[str, float]) -> None:
        """Count one more value of each metric."""
        for key, value in metrics.items():
            self._sums[key] += float(value)
            self._counts[key] += 1

    def take(self) -> dict[str, float]:
        """The mean of each metric since the last call (in the order first added); then start anew."""
        means = {key: total / self._counts[key] for key, total in self._sums.items()}
        self._sums.clear()
        self._counts.clear()
        return means
