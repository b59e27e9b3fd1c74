"""Atomic file writes: a run's files on disk are either the old version or the new one, never half."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

TEMP_SUFFIX = ".tmp"


def write_atomic(path: Path, write: Callable[[IO[bytes]], None], exclusive: bool = False) -> None:
    """Call ``write`` on a temp file beside ``path``, sync it, then rename it over ``path``; with
    ``exclusive``, link it to ``path`` instead, raising FileExistsError where ``path`` exists, so no
    other writer's file is ever replaced. On any failure (a full disk) the temp file is removed."""
    temp = path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")
    try:
        with open(temp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(temp, path)
        else:
            os.replace(temp, path)
    except FileExistsError:
        raise
    except OSError as error:  # name the file, not its temp
        raise OSError(error.errno, error.strerror, str(path)) from error
    finally:
        temp.unlink(missing_ok=True)


def remove_temp_files(directory: Path) -> list[Path]:
    """Remove the temp files that writes cut short by a kill left in ``directory``; returns them."""
    stale = [p for p in Path(directory).glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
