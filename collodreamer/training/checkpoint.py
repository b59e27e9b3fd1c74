"""Atomic checkpoints with a checksum: a temp file replaces ``checkpoint.pt`` only once fully written,
its first line holds the SHA-256 of the rest, and no checkpoint ever holds a non-finite tensor. Also
what a checkpoint holds of the loop (its counters, the random states) and the config of a saved run."""

from __future__ import annotations

import hashlib
import io
import logging
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from collodreamer.config import ConfigError, changed_settings, from_dict, load_config, to_dict
from collodreamer.files import write_atomic
from collodreamer.rundir import RunDir
from collodreamer.schema import Config

log = logging.getLogger("collodreamer")
HEADER = b"collodreamer-checkpoint sha256="
# What a checkpoint may hold besides tensors and plain data: numpy arrays (the RNG states of numpy and
# dm_control). Loading allows these alone (weights_only), so a checkpoint can hold no code.
SAFE_GLOBALS = [
    np._core.multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    np.dtypes.UInt32DType,
    np.dtypes.Int64DType,
    np.dtypes.Float64DType,
]
ZIP = b"PK"  # how torch.save's files start: a checkpoint from before checksums


@dataclass
class Counters:
    """Progress of a run; saved in every checkpoint."""

    env_frames: int = 0
    updates: int = 0
    episodes: int = 0
    next_eval: int = 0
    last_checkpoint: int = 0
    elapsed_s: float = 0.0  # wall-clock seconds up to the last checkpoint, summed across resumes
    skipped: dict[str, int] = field(default_factory=dict)  # non-finite updates (plans) skipped, per network


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, truncated or non-finite; the message is one line."""


class DivergenceError(RuntimeError):
    """Training went non-finite and cannot go on; the message is one line."""


def nonfinite_tensors(tree: Any, prefix: str = "") -> tuple[list[str], int]:
    """The names of the floating-point tensors in nested dicts and lists that hold a NaN or an infinity,
    and how many floating-point tensors there are in all."""
    if isinstance(tree, torch.Tensor):
        if not tree.is_floating_point():
            return [], 0
        return ([] if bool(torch.isfinite(tree).all()) else [prefix]), 1
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list | tuple):
        items = enumerate(tree)
    else:
        return [], 0
    bad, total = [], 0
    for key, value in items:
        names, count = nonfinite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
        bad += names
        total += count
    return bad, total


def describe(names: list[str], total: int) -> str:
    """``"90 of 123 tensors (a, b, c, ...)"`` for a one-line message."""
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{len(names)} of {total} tensors ({shown})"


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically under a checksum line; refuse (:class:`DivergenceError`, the file on
    disk left as it is) when it holds a non-finite tensor."""
    bad, total = nonfinite_tensors(payload)
    if bad:
        raise DivergenceError(f"{describe(bad, total)} are non-finite, so they were not saved to {path}")
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()

    def write(handle: IO[bytes]) -> None:
        handle.write(HEADER + hashlib.sha256(data).hexdigest().encode() + b"\n")
        handle.write(data)

    write_atomic(Path(path), write)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The payload of the checkpoint at ``path``, once its checksum and its tensors are checked; any
    problem is a one-line :class:`CheckpointError` and the file is left as it is."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror}") from None
    if data.startswith(HEADER):
        header, _, data = data.partition(b"\n")
        if hashlib.sha256(data).hexdigest().encode() != header[len(HEADER) :]:
            raise CheckpointError(f"checkpoint {path} is corrupt or truncated: its checksum does not match")
    elif data.startswith(ZIP):
        log.warning("checkpoint %s has no checksum (written by an older version): it is not verified", path)
    else:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: it has no checkpoint header")
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # whatever unpickling a damaged file raises
        if str(error).startswith("Weights only load failed"):  # a crafted file, or a damaged one
            found = re.search(r"GLOBAL (\S+)", str(error))
            what = found.group(1) if found else "objects other than tensors and plain data"
            raise CheckpointError(
                f"checkpoint {path} holds {what}, which no checkpoint holds: refused, as loading it "
                "could run code"
            ) from None
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {first}") from None
    if not isinstance(payload, dict) or "counters" not in payload:
        raise CheckpointError(f"checkpoint {path} is not a collodreamer checkpoint")
    bad, total = nonfinite_tensors(payload)
    if bad:
        raise CheckpointError(
            f"checkpoint {path} holds non-finite weights, {describe(bad, total)}: it was saved by a "
            "diverged run and cannot be used"
        )
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


def rng_states(device: torch.device) -> dict[str, Any]:
    """Python, numpy and torch global random states, and the run's GPU's when it runs on one (a CPU
    run on a GPU host never starts CUDA for it)."""
    states = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict[str, Any], device: torch.device) -> None:
    """Restore :func:`rng_states`; a GPU state applies to a run on a GPU only (older checkpoints hold a
    list, one per GPU of the host that saved them: the first is taken)."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    cuda = states.get("cuda")
    if device.type == "cuda" and cuda is not None and (not isinstance(cuda, list) or cuda):
        torch.cuda.set_rng_state(cuda[0] if isinstance(cuda, list) else cuda, device)


def seed_everything(seed: int, threads: int = 0) -> None:
    """Seed Python, numpy and torch; set torch's thread count when ``threads`` is positive."""
    if threads > 0:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def keep_checkpoint(files: RunDir, frames: int, payload: dict[str, Any], keep: int) -> None:
    """``run.keep_checkpoints``: ``payload`` kept as the checkpoint of the test at ``frames`` env frames,
    written as the latest is (atomic, checksummed, finite); only the newest ``keep`` stay."""
    files.checkpoints.mkdir(exist_ok=True)
    save_checkpoint(files.kept_checkpoint(frames), payload)
    for old in files.kept_checkpoints()[:-keep]:
        old.unlink()


def latest_payload(files: RunDir) -> dict[str, Any] | None:
    """What the run's latest checkpoint holds; None before its first."""
    return load_checkpoint(files.checkpoint) if files.checkpoint.exists() else None


def saved_config(files: RunDir, payload: dict[str, Any] | None) -> Config:
    """The config of the run whose latest checkpoint holds ``payload``: the checkpoint's, which wins
    over a ``config.yaml`` that differs (damaged, or edited) with a warning naming the settings;
    ``config.yaml`` before the first checkpoint."""
    path = files.config
    saved = payload.get("config") if payload is not None else None
    if saved is None:  # no checkpoint yet, or one from before configs were saved in them
        return load_config(path)
    config = from_dict(saved)
    try:
        on_disk = to_dict(load_config(path))
    except ConfigError as error:
        log.warning("%s; the checkpoint's config is used", error)
        return config
    differing = [change.split(":")[0] for change in changed_settings(to_dict(config), on_disk)]
    if differing:
        log.warning(
            "%s differs from the config in %s in %s: the checkpoint's is used",
            path,
            files.checkpoint,
            ", ".join(differing),
        )
    return config
