"""An episode store: compressed ``.npz`` files on disk, a bounded in-memory cache (images held
compressed there too), and uniform sampling of fixed-length sequences.

Episodes are in the layout of :mod:`collodreamer.data.episode`. Sequences are drawn uniformly over
all stored steps and may run from the end of one episode into the start of the next; ``is_first``
marks where the model must reset.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from collodreamer.data.episode import KEYS, Episode, episode_problem, layout
from collodreamer.files import write_atomic

_NAME = re.compile(r"^ep-(\d{6,})-(\d+)\.npz$")
log = logging.getLogger("collodreamer")
# Frames per compressed chunk of images in memory: zlib sees about 2.5 frames back (a 32 KiB window),
# so 8 frames compress 2.4x (quadruped_walk) to 10x (reacher_easy), near a whole episode's ratio,
# while a sequence decompresses at most one chunk more than it uses at each end.
CHUNK = 8


class ReplayError(RuntimeError):
    """The store cannot serve the request (e.g. fewer steps stored than one sequence needs)."""


def episode_files(directory: Path) -> list[tuple[int, int, Path]]:
    """The episode files in ``directory`` as (index, steps, path), in the order they were written."""
    matches = ((_NAME.match(path.name), path) for path in Path(directory).iterdir())
    return sorted((int(match.group(1)), int(match.group(2)), path) for match, path in matches if match)


def read_episode(path: Path) -> Episode:
    """An episode file's arrays (a damaged file makes zipfile, zlib or numpy raise anything)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def readable_episodes(paths: Iterable[Path]) -> Iterator[tuple[Path, Episode]]:
    """The episodes of ``paths`` that can be read, in order; a damaged file is reported and skipped."""
    for path in paths:
        try:
            episode = read_episode(path)
        except Exception as error:  # a damaged file makes zipfile, zlib or numpy raise anything
            log.warning("skipping damaged episode file %s: %s: %s", path, type(error).__name__, error)
            continue
        yield path, episode


class CompressedFrames:
    """An image sequence ``[T, H, W, C]`` (uint8) held as zlib-compressed chunks of :data:`CHUNK`
    frames; a slice decompresses only the chunks it touches."""

    def __init__(self, frames: np.ndarray) -> None:
        self.shape, self.dtype = frames.shape, frames.dtype
        starts = range(0, len(frames), CHUNK)
        self._chunks = [zlib.compress(frames[i : i + CHUNK].tobytes(), 1) for i in starts]

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(len(chunk) for chunk in self._chunks)

    def __getitem__(self, index: slice) -> np.ndarray:
        start, stop, step = index.indices(len(self))
        if step != 1 or stop <= start:
            return np.asarray(self)[index]
        first, last = start // CHUNK, (stop - 1) // CHUNK
        data = b"".join(zlib.decompress(self._chunks[i]) for i in range(first, last + 1))
        frames = np.frombuffer(data, self.dtype).reshape(-1, *self.shape[1:])
        return frames[start - first * CHUNK : stop - first * CHUNK]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = bytearray(b"".join(zlib.decompress(chunk) for chunk in self._chunks))  # writable
        frames = np.frombuffer(data, self.dtype).reshape(self.shape)
        return frames if dtype is None else frames.astype(dtype)


class EpisodeStore:
    """Episodes written atomically to ``directory`` and kept in memory up to ``capacity`` env
    frames (oldest leave memory first; files on disk are never deleted); None keeps them all."""

    def __init__(self, directory: Path, capacity: int | None, frames_per_step: int, seed: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.capacity = capacity
        self.frames_per_step = frames_per_step
        self.rng = np.random.default_rng(seed)
        self._episodes: list[Episode] = []
        self._lengths: list[int] = []
        self._layout: dict[str, tuple[tuple[int, ...], str]] | None = None
        self._next_index = 0
        self.loaded: list[tuple[int, float]] = []  # env frames and return of each episode load() found
        self.damaged: list[Path] = []  # the files load() skipped as corrupt or malformed
        # Sequences are sliced in threads: zlib decompresses images without holding the GIL (a 50x50
        # batch of cheetah_run frames: 87 ms on one thread, 60 ms on four, on a busy 2-core CPU).
        self._pool = ThreadPoolExecutor(min(8, os.cpu_count() or 1))

    @property
    def num_episodes(self) -> int:
        return len(self._episodes)

    @property
    def num_steps(self) -> int:
        return sum(self._lengths)

    @property
    def episodes(self) -> list[Episode]:
        """The episodes held in memory, oldest first, as plain arrays (images decompressed)."""
        return self.latest(len(self._episodes))

    def latest(self, count: int) -> list[Episode]:
        """The newest ``count`` episodes held in memory, oldest first, as plain arrays."""
        newest = self._episodes[max(0, len(self._episodes) - count) :]
        return [{k: np.asarray(v) for k, v in episode.items()} for episode in newest]

    @property
    def nbytes(self) -> int:
        """Bytes the episodes in memory take (images compressed)."""
        return sum(v.nbytes for episode in self._episodes for v in episode.values())

    def frames(self, episode: Episode) -> int:
        """Env frames an episode took: its transitions times the action repeat."""
        return (len(episode["reward"]) - 1) * self.frames_per_step

    def load(self) -> tuple[int, int]:
        """Load the episodes already on disk (newest within capacity); return the env frames and the
        episodes they hold in total. A corrupt or truncated file, or one whose arrays have other shapes
        or types than the first good one, is reported by name and skipped, not removed."""
        total_frames = total_episodes = 0
        for index, _, path in episode_files(self.directory):
            self._next_index = max(self._next_index, index + 1)
            try:
                episode = read_episode(path)
            except Exception as error:  # a damaged file makes zipfile, zlib or numpy raise anything
                log.warning("skipping corrupt episode file %s: %s: %s", path, type(error).__name__, error)
                self.damaged.append(path)
                continue
            problem = episode_problem(episode)
            if problem is None and self._layout is not None and layout(episode) != self._layout:
                problem = "; ".join(
                    f"{key} steps are {found} where the first episode's are {self._layout[key]}"
                    for key, found in layout(episode).items()
                    if found != self._layout[key]
                )
            if problem:
                log.warning("skipping malformed episode file %s: %s", path, problem)
                self.damaged.append(path)
                continue
            total_frames += self.frames(episode)
            total_episodes += 1
            self.loaded.append((self.frames(episode), float(episode["reward"].sum())))
            self._insert(episode)
        return total_frames, total_episodes

    def check_shapes(self, obs_shape: tuple[int, ...], action_dim: int) -> None:
        """Raise :class:`ReplayError` when the loaded episodes were recorded with other observation
        or action shapes (another task, or pixels against states)."""
        if self._layout is None:
            return
        found = (self._layout["obs"][0], self._layout["action"][0][-1])
        if found != (tuple(obs_shape), action_dim):
            raise ReplayError(
                f"episodes in {self.directory} have observations {found[0]} and {found[1]} actions, "
                f"this run's task gives {tuple(obs_shape)} and {action_dim}: the directory "
                "belongs to another run"
            )

    def add(self, episode: Episode) -> Path:
        """Save ``episode`` to disk (temp file, then a link under a name no other file has: a second
        writer in the same directory takes the next free index) and make it available for sampling."""
        problem = episode_problem(episode)
        if problem:
            raise ValueError(f"malformed episode: {problem}")
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **episode)
        data = buffer.getvalue()
        steps = len(episode["reward"])
        while True:
            path = self.directory / f"ep-{self._next_index:06d}-{steps}.npz"
            self._next_index += 1
            try:
                write_atomic(path, lambda handle: handle.write(data), exclusive=True)
                break
            except FileExistsError:
                log.warning("episode file %s exists already (another writer?): taking the next index", path)
        self._insert(episode)
        return path

    def _insert(self, episode: Episode) -> None:
        self._layout = self._layout or layout(episode)
        if episode["obs"].dtype == np.uint8 and episode["obs"].ndim == 4:
            episode = {**episode, "obs": CompressedFrames(episode["obs"])}
        self._episodes.append(episode)
        self._lengths.append(len(episode["reward"]))
        capacity = math.inf if self.capacity is None else self.capacity
        while len(self._episodes) > 1 and self.num_steps * self.frames_per_step > capacity:
            self._episodes.pop(0)
            self._lengths.pop(0)

    @classmethod
    def read(cls, directory: Path, frames_per_step: int, seed: int = 0) -> EpisodeStore:
        """Every good episode in ``directory``, loaded (a finished run's, for analysis), sampled with
        ``seed``."""
        store = cls(directory, None, frames_per_step, seed)
        store.load()
        return store

    def sample(self, batch_size: int, length: int) -> dict[str, np.ndarray]:
        """``batch_size`` sequences of ``length`` consecutive steps, start uniform over all steps
        from which ``length`` steps remain in the store. Arrays are shaped ``[batch, length, ...]``."""
        total = self.num_steps
        if total < length:
            raise ReplayError(f"the store holds {total} steps, fewer than one sequence of {length}")
        ends = np.cumsum(self._lengths)
        starts = self.rng.integers(0, total - length + 1, size=batch_size)
        sequences = list(self._pool.map(lambda start: self._slice(int(start), length, ends), starts))
        return {k: np.stack([seq[k] for seq in sequences]) for k in KEYS}

    def _slice(self, start: int, length: int, ends: np.ndarray) -> Episode:
        index = int(np.searchsorted(ends, start, side="right"))
        offset = start - (int(ends[index - 1]) if index > 0 else 0)
        parts: list[Episode] = []
        remaining = length
        while remaining > 0:
            episode = self._episodes[index]
            take = min(remaining, len(episode["reward"]) - offset)
            parts.append({k: episode[k][offset : offset + take] for k in KEYS})
            remaining -= take
            index, offset = index + 1, 0
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in KEYS}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
