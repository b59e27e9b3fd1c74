"""Atomic checkpoints: a temp file that replaces ``checkpoint.pt`` only once fully written."""

from __future__ import annotations

import pickle
import random
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collodreamer.files import write_atomic


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or truncated; the message is one line."""


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    write_atomic(Path(path), lambda handle: torch.save(payload, handle))


def load_checkpoint(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        # Our own files: they hold numpy RNG states, which weights_only loading refuses.
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {first}") from None
    if not isinstance(payload, dict) or "counters" not in payload:
        raise CheckpointError(f"checkpoint {path} is not a collodreamer checkpoint")
    return payload


@contextmanager
def restoring(path: Path) -> Iterator[None]:
    """Report state from ``path`` that does not fit what it is loaded into (a model of another size,
    another agent, missing entries) as a one-line :class:`CheckpointError`."""
    try:
        yield
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        detail = " ".join(str(error).split())[:300]
        raise CheckpointError(
            f"checkpoint {path} does not fit this config (changed agent or model settings?): "
            f"{type(error).__name__}: {detail}"
        ) from None


def rng_states() -> dict[str, Any]:
    """Python, numpy and torch global random states (CUDA too when present)."""
    states = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_everything(seed: int, threads: int = 0) -> None:
    """Seed Python, numpy and torch; set torch's thread count when ``threads`` is positive."""
    if threads > 0:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
