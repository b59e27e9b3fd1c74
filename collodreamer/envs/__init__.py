"""Environments behind one protocol (:class:`Env`): dm_control suite tasks (``dmc:<domain>_<task>``)
and Gymnasium environments with continuous actions (``gym:<id>``), as pixels or state vectors, with
action repeat, time limits and seeding."""

from collodreamer.config import ConfigError
from collodreamer.envs.base import Env
from collodreamer.envs.dmc import PAPER_TASKS, DMCEnv, list_tasks, parse_task
from collodreamer.envs.gym import GymEnv, gym_id
from collodreamer.schema import EnvConfig
from collodreamer.spec import EnvSpec


def check_task(task: str) -> None:
    """A one-line :class:`ConfigError` unless ``task`` names a known dm_control or Gymnasium task."""
    if task.startswith("gym:"):
        gym_id(task)
    else:
        parse_task(task)


def make_env(config: EnvConfig, seed: int) -> Env:
    """The environment of ``config.task``, seeded with ``seed``."""
    if config.task.startswith("gym:"):
        return GymEnv(config, seed)
    if config.task.startswith("dmc:"):
        return DMCEnv(config, seed)
    raise ConfigError(f"unknown task '{config.task}': tasks look like dmc:cheetah_run or gym:Pendulum-v1")


__all__ = [
    "PAPER_TASKS",
    "DMCEnv",
    "Env",
    "EnvSpec",
    "GymEnv",
    "check_task",
    "list_tasks",
    "make_env",
    "parse_task",
]
