"""Stopping a run whose training diverged: non-finite updates (or plans) in a row, or weights grown
past ``run.max_weight_growth`` times their level, each told in one line that names the network and
the checkpoint holding the last finite state."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from collodreamer.agents import Agent
from collodreamer.health import RATE_SETTINGS, growth, nonfinite
from collodreamer.schema import RunConfig
from collodreamer.training.checkpoint import Counters, DivergenceError, describe, nonfinite_tensors


def in_a_row(counts: dict[str, int]) -> str:
    """``{"world_model": 3, "planner": 2}`` as ``"3 world_model updates, 2 planner plans"``."""
    units = {name: "plans" if name == "planner" else "updates" for name in counts}
    return ", ".join(f"{n} {name} {units[name]}" for name, n in counts.items())


class Guard:
    """The health of one run's training, read from :mod:`collodreamer.health` after each update and
    plan; it starts this process's counts afresh."""

    def __init__(self, run: RunConfig, checkpoint: Path) -> None:
        self.run, self.checkpoint = run, checkpoint
        nonfinite.clear()
        growth.clear()
        growth.limit = run.max_weight_growth

    @staticmethod
    def failing() -> str:
        """The networks whose latest update (or plan) was non-finite, in words; empty when none."""
        return in_a_row(nonfinite.failing())

    def check(self, counters: Counters) -> None:
        """Count the updates (and plans) skipped as non-finite; stop the run once one network's run of
        them in a row reaches ``run.max_nonfinite``, or once its weights grew past
        ``run.max_weight_growth`` times their level."""
        skipped, longest = nonfinite.take()
        for name, count in skipped.items():
            counters.skipped[name] = counters.skipped.get(name, 0) + count
        limit = self.run.max_nonfinite
        if max(longest.values(), default=0) >= limit:
            what = f"{in_a_row(longest)} non-finite in a row (run.max_nonfinite={limit})"
            raise self.diverged(counters, what)
        grown = growth.take()
        if grown:
            name, (level, norm) = next(iter(grown.items()))
            raise self.diverged(
                counters,
                f"the {name} weights grew from norm {level:.3g} to {norm:.3g}, past "
                f"run.max_weight_growth={self.run.max_weight_growth:g} times: lower "
                f"{RATE_SETTINGS.get(name, 'its learning rate')}",
            )

    def check_action(self, counters: Counters, action: np.ndarray, agent: Agent, name: str) -> None:
        """Stop the run when the agent (``name``) chose a non-finite action, saying whether its
        weights are finite."""
        if not np.all(np.isfinite(action)):
            bad, total = nonfinite_tensors(agent.state_dict())
            weights = f"{describe(bad, total)} are non-finite" if bad else "its weights are finite, too large"
            raise self.diverged(counters, f"the {name} agent chose a non-finite action ({weights})")

    def diverged(self, counters: Counters, what: str) -> DivergenceError:
        """A one-line error saying what diverged, and which checkpoint holds the last finite state."""
        if self.checkpoint.exists():
            kept = f"{self.checkpoint} holds the last finite state, at {counters.last_checkpoint}"
            kept += " env frames: resume it with smaller learning rates"
        else:
            kept = "no checkpoint was written yet"
        return DivergenceError(f"training diverged at {counters.env_frames} env frames: {what}; {kept}")
