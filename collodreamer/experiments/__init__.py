"""Experiments: sweeps (local process pool or Ray), the paper's figures, result tables."""

from collodreamer.experiments.evaluation import evaluate_runs
from collodreamer.experiments.plots import find_runs, make_figures, results_table
from collodreamer.experiments.sweep import (
    RunSpec,
    Sweep,
    expand,
    keep_records,
    load_spec,
    run_sweep,
    runs_to_train,
    shared_sources,
)

__all__ = [
    "RunSpec",
    "Sweep",
    "evaluate_runs",
    "expand",
    "find_runs",
    "keep_records",
    "load_spec",
    "make_figures",
    "results_table",
    "run_sweep",
    "runs_to_train",
    "shared_sources",
]
