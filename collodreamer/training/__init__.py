"""The training loop shared by every agent: collect, train, evaluate, log, checkpoint, resume."""

from collodreamer.training.checkpoint import CheckpointError, load_checkpoint
from collodreamer.training.logger import read_metrics
from collodreamer.training.loop import Trainer, evaluate, evaluate_run, load_agent, resume, train

__all__ = [
    "CheckpointError",
    "Trainer",
    "evaluate",
    "evaluate_run",
    "load_agent",
    "load_checkpoint",
    "read_metrics",
    "resume",
    "train",
]
