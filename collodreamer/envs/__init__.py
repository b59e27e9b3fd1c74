"""DeepMind Control Suite tasks as pixels or state vectors, with action repeat and time limits."""

from collodreamer.envs.dmc import PAPER_TASKS, DMCEnv, list_tasks, parse_task
from collodreamer.spec import EnvSpec

__all__ = ["PAPER_TASKS", "DMCEnv", "EnvSpec", "list_tasks", "parse_task"]
