"""The training loop shared by every agent: collect, train, evaluate, log, checkpoint, resume."""

from collodreamer.training.checkpoint import CheckpointError, DivergenceError, load_checkpoint
from collodreamer.training.evaluation import evaluate, evaluate_run, load_agent, saved_spec
from collodreamer.training.logger import read_metrics
from collodreamer.training.loop import Trainer, resume, train
from collodreamer.training.signals import Interrupted

__all__ = [
    "CheckpointError",
    "DivergenceError",
    "Interrupted",
    "Trainer",
    "evaluate",
    "evaluate_run",
    "load_agent",
    "load_checkpoint",
    "read_metrics",
    "resume",
    "saved_spec",
    "train",
]
