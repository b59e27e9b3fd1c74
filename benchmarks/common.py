"""Helpers shared by the benchmark scripts: medians of repeated timings, machine info, JSON out."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collodreamer import files
from collodreamer.timing import machine


def median_rate(work: Callable[[], int], repeats: int) -> tuple[float, list[float]]:
    """Run ``work`` (returns how many items it did) ``repeats`` times; items/s median and all."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        items = work()
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates), rates


def median_ms(
    work: Callable[[], Any], repeats: int, warmup: int = 2, sync: Callable[[], None] = lambda: None
) -> tuple[float, list[float]]:
    """Milliseconds per call of ``work``: median over ``repeats`` calls after ``warmup``."""
    for _ in range(warmup):
        work()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        sync()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times), times


def interleaved_ms(
    works: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 2,
    sync: Callable[[], None] = lambda: None,
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Milliseconds per call of each of ``works``, their calls alternating (``repeats`` rounds after
    ``warmup``) so that load from other processes falls on each alike: on a busy machine only such
    same-process comparisons are fair. Returns wall-clock and CPU (this process's) times; the CPU
    time leaves out the waits for a core that other processes hold."""
    for _ in range(warmup):
        for work in works.values():
            work()
    wall: dict[str, list[float]] = {name: [] for name in works}
    cpu: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            work()
            sync()
            wall[name].append(1000 * (time.perf_counter() - start))
            cpu[name].append(1000 * (time.process_time() - start_cpu))
    return wall, cpu


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` with the machine it was measured on, as JSON at ``path``."""
    files.write_json(path, {"machine": machine(), **data})
    print(f"wrote {path}")
