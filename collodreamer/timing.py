"""Where a run's wall-clock goes: named, exclusive timing sections summed per process.

``with timed("plan"): ...`` adds the section's seconds to ``plan``, minus the seconds of any section
nested inside it (a planner's inner value updates count to ``value``, not to ``plan``). A section
opened with ``absorb=True`` keeps its children's time: inside it, nested sections record nothing
(a test episode's planning counts to ``test``). :func:`take_seconds` returns the sums so far and
starts new ones; the training loop logs them per 1000 env frames as ``perf/<name>_s``.
:func:`machine` says where a time (or any figure) was measured.
"""

from __future__ import annotations

import os
import platform
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

_seconds: dict[str, float] = defaultdict(float)
_stack: list[list[float]] = []  # per open section: [seconds spent in nested sections]
_absorbing = 0


@contextmanager
def timed(name: str, absorb: bool = False) -> Iterator[None]:
    """Add the wall-clock seconds of the ``with`` body to section ``name`` (see the module doc)."""
    global _absorbing
    if _absorbing:
        yield
        return
    start = time.perf_counter()
    _stack.append([0.0])
    _absorbing += absorb
    try:
        yield
    finally:
        _absorbing -= absorb
        (nested,) = _stack.pop()
        total = time.perf_counter() - start
        _seconds[name] += total - nested
        if _stack:
            _stack[-1][0] += total


def take_seconds() -> dict[str, float]:
    """The seconds per section since the last call (sections still open are not counted yet)."""
    sums = dict(_seconds)
    _seconds.clear()
    return sums


def machine() -> dict[str, Any]:
    """Where a figure was measured: CPU model and count, GPU if any, torch version and threads."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
