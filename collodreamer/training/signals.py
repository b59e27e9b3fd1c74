"""SIGINT and SIGTERM end a run after its current step or update, with a checkpoint; a second one
stops it at once."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

log = logging.getLogger("collodreamer")


class Interrupted(RuntimeError):
    """A run stopped by SIGINT or SIGTERM after saving its checkpoint; the message is one line."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class StopSignals:
    """The signal that asked the run to stop (``signum``, 0 while none did), caught while
    :meth:`catching`."""

    def __init__(self) -> None:
        self.signum = 0

    def __bool__(self) -> bool:
        return bool(self.signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.signum:  # asked twice: stop at once
            raise KeyboardInterrupt(signum)
        self.signum = signum
        log.warning("%s: stopping after the current step, with a checkpoint", self.name)

    @contextmanager
    def catching(self) -> Iterator[None]:
        """Within this block SIGINT and SIGTERM ask to stop (signals reach the main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def interrupted(self, frames: int, run_dir: Path) -> Interrupted:
        """The error of a run this signal stopped at ``frames`` env frames, its checkpoint saved."""
        return Interrupted(
            f"stopped by {self.name} at {frames} env frames, checkpoint saved; "
            f"continue with: collodreamer train --resume {run_dir}",
            self.signum,
        )
