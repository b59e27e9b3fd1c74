"""Metrics to ``metrics.jsonl`` (one JSON object per event, keyed by env frames) and TensorBoard."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter


class Logger:
    """Collects scalars between writes; averages repeated ones (e.g. per-update losses). Every record
    carries ``elapsed_s``, the run's wall-clock seconds so far as ``clock`` tells them."""

    def __init__(self, run_dir: Path, clock: Callable[[], float]) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.clock = clock
        self._file = open(self.path, "a", buffering=1)  # noqa: SIM115 (line-buffered: a kill loses no line)
        self._tensorboard = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._sums[key] += float(value)
            self._counts[key] += 1

    def write(self, step: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the averages collected so far (and ``extra``) at ``step`` env frames."""
        record: dict[str, Any] = {"step": step}
        record.update({k: self._sums[k] / self._counts[k] for k in sorted(self._sums)})
        record.update(extra or {})
        self._sums.clear()
        self._counts.clear()
        self._emit(record)
        return record

    def record(self, step: int, values: dict[str, Any]) -> None:
        """Write ``values`` alone at ``step``, leaving the collected averages for the next write."""
        self._emit({"step": step, **values})

    def _emit(self, record: dict[str, Any]) -> None:
        record["elapsed_s"] = round(self.clock(), 3)
        self._file.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                self._tensorboard.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self._file.close()
        self._tensorboard.close()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``; a line cut short by a kill is ignored."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
