"""A run directory, the one place that names its files: the config, the latest checkpoint and the kept
ones, the episodes, the metrics, the report and a sweep's log of the run; and the lock that keeps
two processes from writing to one run."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from collodreamer.config import ConfigError


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

    def kept_checkpoint(self, frames: int) -> Path:
        """The checkpoint kept at the test at ``frames`` env frames."""
        return self.checkpoints / f"checkpoint-{frames:08d}.pt"

    def kept_checkpoints(self) -> list[Path]:
        """The kept checkpoints, oldest first (by their env frames: past 10^8 the names outgrow the
        padding and sort out of order as text)."""
        kept = [path for path in self.checkpoints.glob("checkpoint-*.pt") if path.stem[11:].isdigit()]
        return sorted(kept, key=lambda path: int(path.stem[11:]))

    @property
    def episodes(self) -> Path:
        return self.path / "episodes"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def videos(self) -> Path:
        """Test videos (``run.video``)."""
        return self.path / "videos"

    def test_video(self, frames: int) -> Path:
        """The video of the test at ``frames`` env frames."""
        return self.videos / f"test-{frames:08d}.mp4"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def wandb_run_id(self) -> Path:
        """The W&B run this run is tracked as (``run.wandb``), so a resume goes on in it."""
        return self.path / "wandb-run-id"

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


def runs_under(path: Path, usable: Callable[[RunDir], bool]) -> list[Path]:
    """``path`` itself where it is a run that ``usable`` accepts, else the runs one level under it (a
    folder of runs, e.g. a sweep's) that it accepts."""
    path = Path(path)
    if usable(RunDir(path)):
        return [path]
    return [run for run in sorted(path.glob("*/")) if usable(RunDir(run))]


class RunLock:
    """An exclusive lock on the run directory itself, held until :meth:`close` or the process ends (the
    OS releases it then, even on SIGKILL), so two processes never write to the same run. No file is
    locked, so no deletion can break it."""

    def __init__(self, run_dir: Path) -> None:
        self._fd = -1
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"{run_dir} is in use by another collodreamer process") from None
        self._fd = fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    __del__ = close  # a Trainer that failed to start lets go of its run
