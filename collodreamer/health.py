"""Training health, counted per network across a process: updates (and plans) that went non-finite,
and weights that grew orders of magnitude while staying finite. The optimiser step records both; the
training loop reads them, logs them and stops a run that diverged."""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch import nn


class NonFiniteCounter:
    """Updates (and plans) that went non-finite, per network: how many since the last :meth:`take`,
    and the longest run of them in a row. The training loop logs the first and stops a run whose
    second reaches ``run.max_nonfinite``."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._skipped: Counter[str] = Counter()
        self._in_a_row: Counter[str] = Counter()
        self._longest: Counter[str] = Counter()

    def count(self, name: str, finite: bool) -> bool:
        """Record one update of ``name``; a finite one ends its run of non-finite ones. Returns ``finite``."""
        if finite:
            self._in_a_row[name] = 0
        else:
            self._skipped[name] += 1
            self._in_a_row[name] += 1
            self._longest[name] = max(self._longest[name], self._in_a_row[name])
        return finite

    def failing(self) -> dict[str, int]:
        """The networks whose latest update was non-finite, with how many in a row."""
        return {name: count for name, count in self._in_a_row.items() if count}

    def take(self) -> tuple[dict[str, int], dict[str, int]]:
        """Per network: the non-finite updates since the last call, and the longest run of them in a row
        seen since then (a run still going counts from its start)."""
        skipped, longest = dict(self._skipped), dict(self._longest)
        self._skipped.clear()
        self._longest = Counter(self.failing())
        return skipped, longest


nonfinite = NonFiniteCounter()

# The learning rate that drives each network's updates, named by the settings a resume may change.
RATE_SETTINGS = {
    "world_model": "model.lr",
    "actor": "actor.lr",
    "value": "value.lr",
    "policy": "policy.lr",
    "reward_heads": "pessimism.lr",
    "state_heads": "pessimism.lr",
}


class WeightGrowth:
    """A health check beside the non-finite one: each network's weight norm against its level at its
    first update in this process. A network whose norm grew past ``limit`` times that level has blown
    up while staying finite (e.g. ``value.lr=1e6``: weights of 1e28); the training loop stops it."""

    def __init__(self) -> None:
        self.limit = math.inf
        self.clear()

    def clear(self) -> None:
        self._level: dict[str, float] = {}
        self._grown: dict[str, tuple[float, float]] = {}

    def before(self, name: str, module: nn.Module) -> None:
        """Before an update of ``name``: its level, once, before its first update."""
        if name not in self._level:
            self._level[name] = max(weight_norm(module), 1e-6)

    def check(self, name: str, module: nn.Module) -> None:
        """After an update of ``name``: note it when its weights grew past the limit."""
        norm = weight_norm(module)
        if norm > self.limit * self._level[name]:
            self._grown.setdefault(name, (self._level[name], norm))

    def take(self) -> dict[str, tuple[float, float]]:
        """The networks that grew past the limit since the last call: their level and their norm."""
        grown, self._grown = self._grown, {}
        return grown


growth = WeightGrowth()


@torch.no_grad()
def weight_norm(module: nn.Module) -> float:
    """The 2-norm of all of ``module``'s parameters together."""
    return float(nn.utils.get_total_norm(list(module.parameters())))
