"""A run's whole state, which its checkpoint holds: the agent, the replay, the training and test
environments, the loop's random generator and its counters; and how a resume gets it back."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from collodreamer.agents import make_agent
from collodreamer.config import ConfigError, changed_settings, check_resumable, load_config, to_dict
from collodreamer.data import EpisodeStore, ReplayError
from collodreamer.envs import make_env
from collodreamer.rundir import RunDir
from collodreamer.schema import Config
from collodreamer.seeds import env_seed
from collodreamer.training.checkpoint import (
    CheckpointError,
    Counters,
    restoring,
    rng_states,
    seed_everything,
    set_rng_states,
)

log = logging.getLogger("collodreamer")


def check_fresh_start(files: RunDir, config: Config) -> None:
    """A new run in ``files``: refused where a checkpoint holds a run (it is resumed instead), and where
    a run of another configuration started before its first checkpoint (its episodes would mix in)."""
    if files.checkpoint.exists():
        raise ConfigError(f"{files.path} already holds a run; continue it with --resume {files.path}")
    if files.config.exists():
        try:
            check_resumable(to_dict(load_config(files.config)), config)
        except ConfigError as error:
            raise ConfigError(
                f"{files.path} holds the start of another run (no checkpoint yet): {error}"
            ) from None


def saved_state(files: RunDir, config: Config, payload: dict[str, Any] | None) -> dict[str, Any] | None:
    """``payload``, what the run's latest checkpoint holds, checked against ``config`` as the state a
    resume goes on from; None without a checkpoint."""
    path = files.checkpoint
    if payload is None:
        log.warning("%s has no checkpoint: training starts anew on the episodes on disk", files.path)
        return None
    saved = payload.get("config", {}).get("agent", config.agent)
    if saved != config.agent:
        raise CheckpointError(
            f"checkpoint {path} holds a {saved} run, which cannot go on as {config.agent} (the "
            "checkpoint would lose its state); start a new run instead"
        )
    check_resumable(payload.get("config", {}), config)
    return payload


class RunState:
    """The state of a run of ``config`` in ``files``. Making it seeds everything and checks the task, its
    camera and the device, writing nothing; :meth:`open` then reads the replay and a checkpoint."""

    def __init__(self, config: Config, files: RunDir) -> None:
        self.config, self.files = config, files
        seed_everything(config.seed, config.run.threads)
        self.env = make_env(config.env, env_seed(config.seed, "train"))
        self.eval_env = make_env(config.env, env_seed(config.seed, "test"))
        self.agent = make_agent(config, self.env.spec)
        self.rng = np.random.default_rng(config.seed)
        self.counters = Counters(next_eval=config.run.eval_start)

    def open(self, payload: dict[str, Any] | None, without_missing_episodes: bool) -> tuple[int, int]:
        """Open the replay and restore ``payload`` (a checkpoint's; None: a new run). The episodes on
        disk are the truth about how much experience was collected: those saved after the checkpoint
        count. Returns the episodes and env frames the checkpoint trained on that are missing or
        damaged; missing ones are refused unless ``without_missing_episodes``."""
        config = self.config
        capacity, repeat = config.replay.capacity, config.env.action_repeat
        self.store = EpisodeStore(self.files.episodes, capacity, repeat, config.seed)
        if payload is not None:
            self._restore(payload)
        disk_frames, disk_episodes = self.store.load()
        self.store.check_shapes(self.env.spec.obs_shape, self.env.spec.action_dim)
        missing = (self.counters.episodes - disk_episodes, self.counters.env_frames - disk_frames)
        absent = missing[0] - len(self.store.damaged)  # damaged files are reported by name
        if payload is not None and missing[1] > 0 and absent > 0 and not without_missing_episodes:
            raise ReplayError(
                f"{absent} episodes ({missing[1]} env frames) that checkpoint {self.files.checkpoint} "
                f"trained on are missing from {self.store.directory}: put them back, or go on without "
                "them with --without-missing-episodes (the metrics recorded so far are kept)"
            )
        if payload is None or missing[1] <= 0:
            self.counters.env_frames = disk_frames
            self.counters.episodes = max(self.counters.episodes, disk_episodes)
        return missing

    def _restore(self, payload: dict[str, Any]) -> None:
        path = self.files.checkpoint
        with restoring(path):
            self.agent.load_state_dict(payload["agent"])
            self.store.load_state_dict(payload["replay"])
            self.env.load_state_dict(payload["env"])
            self.eval_env.load_state_dict(payload["eval_env"])
            self.rng.bit_generator.state = payload["loop_rng"]
            set_rng_states(payload["rng"], self.agent.device)
            self.counters = Counters(**payload["counters"])
        dropped = sorted(set(payload["agent"]) - set(self.agent.state_dict()))
        if dropped:
            raise CheckpointError(
                f"checkpoint {path} does not fit this config (changed agent or model settings?): this "
                f"agent has no place for its {', '.join(dropped)}"
            )
        log.info("resumed %s at %d env frames", self.files.path, self.counters.env_frames)
        changes = changed_settings(payload.get("config", {}), to_dict(self.config))
        if changes:
            log.info("settings changed since the checkpoint: %s", "; ".join(changes))

    def payload(self, elapsed_s: float) -> dict[str, Any]:
        """What a checkpoint holds: the run's whole state now, ``elapsed_s`` wall-clock seconds in."""
        self.counters.elapsed_s = elapsed_s
        return {
            "config": to_dict(self.config),
            "spec": {"obs_shape": list(self.env.spec.obs_shape), "action_dim": self.env.spec.action_dim},
            "counters": vars(self.counters).copy(),
            "agent": self.agent.state_dict(),
            "replay": self.store.state_dict(),
            "env": self.env.state_dict(),
            "eval_env": self.eval_env.state_dict(),
            "loop_rng": self.rng.bit_generator.state,
            "rng": rng_states(self.agent.device),
        }
