"""Metrics to ``metrics.jsonl`` (one JSON object per event, keyed by env frames) and TensorBoard."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

from collodreamer.files import write_atomic


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
    """The records of a ``metrics.jsonl``: JSON objects with a numeric ``step``. Any other line (one
    cut short by a kill or a full disk, stray bytes) is ignored."""
    records = []
    for line in Path(path).read_bytes().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # not JSON, or not UTF-8
            continue
        step = record.get("step") if isinstance(record, dict) else None
        if isinstance(step, int | float) and not isinstance(step, bool):
            records.append(record)
    return records


def keep_metrics_until(path: Path, step: int) -> tuple[list[dict[str, Any]], int]:
    """Rewrite ``metrics.jsonl`` (atomically) with only its records up to ``step`` env frames, where a
    resumed run goes on from: later ones, written after the state it resumes, it writes again. Lines
    that are no records go too, so a line cut short cannot swallow the next record. Returns the records
    kept and the number of lines removed."""
    path = Path(path)
    if not path.exists():
        return [], 0
    data = path.read_bytes()
    lines = data.splitlines()
    records = [record for record in read_metrics(path) if record["step"] <= step]
    if len(records) < len(lines) or not data.endswith(b"\n"):
        text = "".join(json.dumps(record) + "\n" for record in records).encode()
        write_atomic(path, lambda handle: handle.write(text))
    return records, len(lines) - len(records)
