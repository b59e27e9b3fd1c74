"""Analysis of trained runs: a run's world model and replay held fixed (held_fixed.py), screens of
planner and value variants on it (screen.py), and diagnostics of a run's value (value.py), actor
(actor.py) and posture (posture.py)."""

from collodreamer.analysis.held_fixed import build_agent
from collodreamer.analysis.prediction import open_loop_errors

__all__ = ["build_agent", "open_loop_errors"]
