"""Atomic file writes: a run's files on disk are either the old version or the new one, never half."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_atomic(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write`` on a temp file beside ``path``, sync it, then rename it over ``path``."""
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
