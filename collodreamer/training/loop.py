"""The training loop: prefill, then collect / train / evaluate / log / checkpoint, resumable.

Every count is in env frames (agent steps times the action repeat). The loop knows nothing of the
agent beyond :class:`collodreamer.agents.Agent`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import imageio.v2 as imageio
import numpy as np
from tqdm import tqdm

from collodreamer.agents import Agent, make_agent
from collodreamer.config import (
    Config,
    ConfigError,
    changed_settings,
    load_config,
    make_config,
    save_config,
    to_dict,
)
from collodreamer.data import Episode, EpisodeStore
from collodreamer.envs import DMCEnv
from collodreamer.spec import EnvSpec
from collodreamer.timing import take_seconds, timed
from collodreamer.training.checkpoint import (
    load_checkpoint,
    restoring,
    rng_states,
    save_checkpoint,
    seed_everything,
    set_rng_states,
)
from collodreamer.training.logger import Logger

log = logging.getLogger("collodreamer")
EVAL_SEED_OFFSET = 10_000


@dataclass
class Counters:
    """Progress of a run; saved in every checkpoint."""

    env_frames: int = 0
    updates: int = 0
    episodes: int = 0
    next_eval: int = 0
    last_checkpoint: int = 0
    elapsed_s: float = 0.0  # wall-clock seconds up to the last checkpoint, summed across resumes


def start_episode(obs: np.ndarray, action_dim: int) -> dict[str, list]:
    return {
        "obs": [obs],
        "action": [np.zeros(action_dim, np.float32)],
        "reward": [0.0],
        "is_first": [True],
        "is_terminal": [False],
    }


def add_step(
    steps: dict[str, list], obs: np.ndarray, action: np.ndarray, reward: float, terminal: bool
) -> None:
    """Append one transition in the replay layout: the obs reached, the action that led there."""
    for key, value in (
        ("obs", obs),
        ("action", action),
        ("reward", reward),
        ("is_first", False),
        ("is_terminal", terminal),
    ):
        steps[key].append(value)


def finish_episode(steps: dict[str, list]) -> Episode:
    return {
        "obs": np.stack(steps["obs"]),
        "action": np.stack(steps["action"]).astype(np.float32),
        "reward": np.asarray(steps["reward"], np.float32),
        "is_first": np.asarray(steps["is_first"], bool),
        "is_terminal": np.asarray(steps["is_terminal"], bool),
    }


def evaluate(
    agent: Agent, env: DMCEnv, episodes: int, video_path: Path | None = None, video_size: int = 128
) -> tuple[list[float], list[int]]:
    """Run ``episodes`` test episodes without exploration noise; optionally film the first."""
    returns, lengths = [], []
    for index in range(episodes):
        obs, state, done, total, length = env.reset(), None, False, 0.0, 0
        frames = [env.render(video_size)] if video_path and index == 0 else None
        while not done:
            action, state = agent.act(obs, state, training=False)
            obs, reward, done, _ = env.step(action)
            total += reward
            length += env.config.action_repeat
            if frames is not None:
                frames.append(env.render(video_size))
        returns.append(total)
        lengths.append(length)
        if frames is not None and video_path is not None:
            imageio.mimsave(video_path, frames, fps=30, macro_block_size=1)
    return returns, lengths


def lock_run(run_dir: Path) -> IO:
    """Hold an exclusive lock on ``run_dir/.lock`` for this process's lifetime (the OS releases it when
    the process ends, even on SIGKILL), so two processes never write to the same run."""
    handle = open(run_dir / ".lock", "w")  # noqa: SIM115 (held until the process exits)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(f"{run_dir} is in use by another collodreamer process") from None
    return handle


class Trainer:
    """One run: its directory holds ``config.yaml``, ``episodes/``, ``metrics.jsonl``,
    ``tensorboard/``, ``checkpoint.pt`` and ``videos/``."""

    def __init__(self, config: Config, run_dir: Path, resume: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.checkpoint_path = self.run_dir / "checkpoint.pt"
        if not resume and self.checkpoint_path.exists():
            raise ConfigError(f"{self.run_dir} already holds a run; continue it with --resume {self.run_dir}")
        self.config = config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = lock_run(self.run_dir)
        payload = load_checkpoint(self.checkpoint_path) if resume else None
        seed_everything(config.seed, config.run.threads)
        self.env = DMCEnv(config.env, config.seed)
        self.eval_env = DMCEnv(config.env, config.seed + EVAL_SEED_OFFSET)
        self.agent = make_agent(config, self.env.spec)
        self.store = EpisodeStore(
            self.run_dir / "episodes", config.replay.capacity, config.env.action_repeat, config.seed
        )
        self.rng = np.random.default_rng(config.seed)
        self.counters = Counters(next_eval=config.run.eval_start)
        if payload is not None:
            self._restore(payload)
        # The data on disk is the truth about how much experience was collected: episodes saved
        # after the last checkpoint are kept, and they count.
        disk_frames, disk_episodes = self.store.load()
        self.store.check_shapes(self.env.spec.obs_shape, self.env.spec.action_dim)
        save_config(config, self.run_dir / "config.yaml")  # only once the saved state fits it
        if payload is not None and disk_frames < self.counters.env_frames:
            log.warning(
                "replay holds %d env frames, checkpoint counted %d: episode files are missing",
                disk_frames,
                self.counters.env_frames,
            )
        self.counters.env_frames = disk_frames
        self.counters.episodes = max(self.counters.episodes, disk_episodes)
        self._clock = (time.perf_counter(), self.counters.elapsed_s)
        self.logger = Logger(self.run_dir, self.elapsed)

    def elapsed(self) -> float:
        """Wall-clock seconds of this run: those before the checkpoint resumed from, plus this process's."""
        started, before = self._clock
        return before + time.perf_counter() - started

    def _restore(self, payload: dict[str, Any]) -> None:
        with restoring(self.checkpoint_path):
            self.agent.load_state_dict(payload["agent"])
            self.store.load_state_dict(payload["replay"])
            self.env.load_state_dict(payload["env"])
            self.eval_env.load_state_dict(payload["eval_env"])
            self.rng.bit_generator.state = payload["loop_rng"]
            set_rng_states(payload["rng"])
            self.counters = Counters(**payload["counters"])
        log.info("resumed %s at %d env frames", self.run_dir, self.counters.env_frames)
        changes = changed_settings(payload.get("config", {}), to_dict(self.config))
        if changes:
            log.info("settings changed since the checkpoint: %s", "; ".join(changes))

    def save(self) -> None:
        self.counters.elapsed_s = self.elapsed()
        save_checkpoint(
            self.checkpoint_path,
            {
                "config": to_dict(self.config),
                "counters": vars(self.counters).copy(),
                "agent": self.agent.state_dict(),
                "replay": self.store.state_dict(),
                "env": self.env.state_dict(),
                "eval_env": self.eval_env.state_dict(),
                "loop_rng": self.rng.bit_generator.state,
                "rng": rng_states(),
            },
        )
        self.counters.last_checkpoint = self.counters.env_frames

    def _updates_due(self) -> int:
        """Gradient steps owed so far: ``train_steps`` at the end of prefill and after every
        further ``train_every`` env frames."""
        run = self.config.run
        if self.counters.env_frames < run.prefill:
            return 0
        return ((self.counters.env_frames - run.prefill) // run.train_every + 1) * run.train_steps

    def _train(self) -> None:
        replay = self.config.replay
        if self.store.num_steps < replay.batch_length:
            return
        start, done = time.perf_counter(), 0
        while self.counters.updates < self._updates_due():
            with timed("replay"):
                batch = self.store.sample(replay.batch_size, replay.batch_length)
            with timed("train"):
                self.logger.add(self.agent.train_step(batch))
            self.counters.updates += 1
            done += 1
        if done:
            self.logger.add({"perf/updates_per_s": done / (time.perf_counter() - start)})

    def _write(self, extra: dict[str, Any]) -> None:
        """Log what training collected so far, with the agent's acting metrics and ``extra``."""
        self.logger.add(self.agent.metrics())
        self.logger.write(self.counters.env_frames, extra)

    def _evaluate(self) -> None:
        self.logger.add(self.agent.metrics())  # keep training episodes' acting metrics for later
        run = self.config.run
        video = None
        if run.video:
            (self.run_dir / "videos").mkdir(exist_ok=True)
            video = self.run_dir / "videos" / f"test-{self.counters.env_frames:08d}.mp4"
        start = time.perf_counter()
        with timed("test", absorb=True):
            returns, lengths = evaluate(self.agent, self.eval_env, run.eval_episodes, video, run.video_size)
        test_metrics = {f"test/{key}": value for key, value in self.agent.metrics().items()}
        self.logger.record(
            self.counters.env_frames,
            {
                **test_metrics,
                "test/return": float(np.mean(returns)),
                "test/return_std": float(np.std(returns)),
                "test/episode_length": float(np.mean(lengths)),
                "perf/eval_seconds": time.perf_counter() - start,
            },
        )
        log.info(
            "%d env frames: test return %.1f +- %.1f",
            self.counters.env_frames,
            np.mean(returns),
            np.std(returns),
        )

    def run(self) -> dict[str, Any]:
        """Train until ``run.steps`` env frames; return the final counts."""
        config, counters = self.config, self.counters
        repeat = config.env.action_repeat
        bar = tqdm(
            total=config.run.steps,
            initial=counters.env_frames,
            unit="frame",
            disable=not sys.stderr.isatty() or bool(os.environ.get("CI")),
            desc=f"{config.agent} {config.env.task} (env frames)",
        )
        obs = self.env.reset()
        steps, state, episode_return = start_episode(obs, self.env.action_dim), None, 0.0
        next_log = counters.env_frames + config.run.log_every
        last_time, last_frames = time.perf_counter(), counters.env_frames
        while counters.env_frames < config.run.steps:
            if counters.env_frames >= counters.next_eval:
                self._evaluate()
                counters.next_eval += config.run.eval_every
            if counters.env_frames < config.run.prefill:
                action = self.rng.uniform(-1, 1, self.env.action_dim).astype(np.float32)
            else:
                with timed("act"):
                    action, state = self.agent.act(obs, state, training=True)
            with timed("env"):
                obs, reward, done, info = self.env.step(action)
            counters.env_frames += repeat
            bar.update(repeat)
            episode_return += reward
            add_step(steps, obs, action, reward, info["terminal"])
            if done:
                with timed("replay"):
                    self.store.add(finish_episode(steps))
                counters.episodes += 1
                length = (len(steps["reward"]) - 1) * repeat
                self._write(
                    {
                        "train/return": episode_return,
                        "train/episode_length": length,
                        "train/episodes": counters.episodes,
                    }
                )
                bar.set_postfix(train_return=f"{episode_return:.1f}")
                if counters.env_frames - counters.last_checkpoint >= config.run.checkpoint_every:
                    with timed("checkpoint"):
                        self.save()
                obs = self.env.reset()
                steps, state, episode_return = start_episode(obs, self.env.action_dim), None, 0.0
            self._train()
            if counters.env_frames >= next_log:
                now, frames = time.perf_counter(), counters.env_frames - last_frames
                per_kilo_frame = {f"perf/{k}_s": v * 1000 / frames for k, v in take_seconds().items()}
                self._write(
                    {
                        "perf/env_frames_per_s": frames / (now - last_time),
                        **per_kilo_frame,
                        "train/updates": counters.updates,
                    }
                )
                last_time, last_frames = now, counters.env_frames
                next_log += config.run.log_every
        self._evaluate()
        self.save()
        bar.close()
        self.logger.close()
        self._lock.close()
        return {"env_frames": counters.env_frames, "updates": counters.updates}


def train(config: Config, run_dir: Path) -> dict[str, Any]:
    """Start a new run in ``run_dir``."""
    return Trainer(config, run_dir).run()


def resume(run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its checkpoint (``overrides`` may e.g. extend steps)."""
    base = load_config(Path(run_dir) / "config.yaml")
    return Trainer(make_config(overrides=overrides, base=base), run_dir, resume=True).run()


def _restore_agent(run_dir: Path, config: Config, spec: EnvSpec) -> tuple[Agent, dict[str, int]]:
    """The agent of ``config`` for ``spec``, with the weights and counters of ``run_dir``'s checkpoint."""
    path = Path(run_dir) / "checkpoint.pt"
    payload = load_checkpoint(path)
    agent = make_agent(config, spec)
    with restoring(path):
        agent.load_state_dict(payload["agent"])
    return agent, payload["counters"]


def load_agent(run_dir: Path) -> tuple[Config, Agent, dict[str, int]]:
    """The config, the agent restored from the checkpoint, and the counters of the run in ``run_dir``."""
    config = load_config(Path(run_dir) / "config.yaml")
    env = DMCEnv(config.env, config.seed)
    env.close()
    agent, counters = _restore_agent(run_dir, config, env.spec)
    return config, agent, counters


def evaluate_run(run_dir: Path, episodes: int, video_path: Path | None = None) -> list[float]:
    """Load the checkpoint of ``run_dir`` and return the returns of fresh test episodes."""
    config = load_config(Path(run_dir) / "config.yaml")
    seed_everything(config.seed, config.run.threads)
    env = DMCEnv(config.env, config.seed + 2 * EVAL_SEED_OFFSET)
    try:
        agent, _ = _restore_agent(run_dir, config, env.spec)
        returns, _ = evaluate(agent, env, episodes, video_path, config.run.video_size)
    finally:
        env.close()
    return returns
