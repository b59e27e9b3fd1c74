"""The one table of seeds: every environment a run makes is seeded ``seed + OFFSETS[stream]``, so the
streams never share start states, and the largest run seed follows from the largest offset."""

from __future__ import annotations

from typing import Literal

Stream = Literal["train", "test", "eval", "report"]
# train: the training episodes; test: the tests during training; eval: `collodreamer eval` of a
# checkpoint; report: the start states of `collodreamer report` and of the run's last report
OFFSETS: dict[Stream, int] = {"train": 0, "test": 10_000, "eval": 20_000, "report": 30_000}
SCREEN_SEED = 424_242  # held-fixed screens: the same start states for every variant of every run
WARMUP_SEED = 525_252  # held-fixed screens: a variant's episodes before its test, apart from those
MAX_SEED = 2**32 - 1 - max(OFFSETS.values())  # numpy and dm_control take seeds below 2**32


def env_seed(seed: int, stream: Stream) -> int:
    """The seed of a run's ``stream`` environment."""
    return seed + OFFSETS[stream]
