"""A run directory, the one place that names its files: the config, the latest checkpoint and the kept
ones, the episodes, the metrics, the report and a sweep's log of the run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoint(self) -> Path:
        """The latest checkpoint, the one a resume continues from."""
        return self.path / "checkpoint.pt"

    @property
    def checkpoints(self) -> Path:
        """The kept checkpoints of earlier tests (``run.keep_checkpoints``)."""
        return self.path / "checkpoints"

    @property
    def episodes(self) -> Path:
        return self.path / "episodes"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def report(self) -> Path:
        """Where ``collodreamer report`` writes by default."""
        return self.path / "report"

    @property
    def train_log(self) -> Path:
        """A sweep's log of the run's output."""
        return self.path / "train.log"

    def is_run(self) -> bool:
        """Whether a run was started here (its config was written)."""
        return self.config.exists()
