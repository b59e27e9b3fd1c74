"""Atomic file writes: a run's files on disk are either the old version or the new one, never half."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

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


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON at ``path`` (its folder created), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda handle: handle.write((json.dumps(data, indent=2) + "\n").encode()))


def remove_temp_files(directory: Path) -> list[Path]:
    """Remove the temp files that writes cut short by a kill left in ``directory`` (those of a process
    still running stay: a second writer must not break the first's writes); returns them."""
    stale = []
    for path in Path(directory).glob(f".*{TEMP_SUFFIX}"):
        pid = path.name.removesuffix(TEMP_SUFFIX).rsplit(".", 1)[-1]
        if path.is_file() and not (pid.isdigit() and running(int(pid))):
            path.unlink(missing_ok=True)
            stale.append(path)
    return stale


def running(pid: int) -> bool:
    """Whether a process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True
