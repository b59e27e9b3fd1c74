"""The training loop: prefill, then collect / train / evaluate / log / checkpoint, resumable.

Every count is in env frames (agent steps times the action repeat). The loop knows nothing of the
agent beyond :class:`collodreamer.agents.Agent`. SIGINT and SIGTERM end a run after its current step
or update, with a checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from collodreamer.agents import Agent
from collodreamer.config import ConfigError, make_config, save_config
from collodreamer.data import add_step, finish_episode, start_episode
from collodreamer.files import remove_temp_files
from collodreamer.rundir import RunDir, RunLock
from collodreamer.schema import Config
from collodreamer.timing import take_seconds, timed
from collodreamer.training.checkpoint import keep_checkpoint, latest_payload, save_checkpoint, saved_config
from collodreamer.training.evaluation import test_record
from collodreamer.training.guard import Guard
from collodreamer.training.logger import Logger, import_wandb, repair_metrics
from collodreamer.training.signals import StopSignals
from collodreamer.training.state import RunState, check_fresh_start, saved_state

log = logging.getLogger("collodreamer")

# ``run.report``: the report's pictures of the agent at a test, by name, and a video or None, from the
# latest training episode, the config and the env frames (see collodreamer.analysis.report.TestReport).
Reporter = Callable[[Agent, dict[str, np.ndarray], Config, int], tuple[dict[str, np.ndarray], Any]]


def next_eval_after(frames: int, eval_start: int, eval_every: int) -> int:
    """The first test of the schedule ``eval_start + k * eval_every`` after ``frames`` env frames."""
    if frames < eval_start:
        return eval_start
    return eval_start + ((frames - eval_start) // eval_every + 1) * eval_every


class Trainer:
    """One run in a :class:`~collodreamer.rundir.RunDir`. ``resume`` continues from the checkpoint,
    or, where a run stopped before its first one, starts training anew on the episodes on disk.
    Episode files of the checkpoint's that are missing are refused, unless
    ``without_missing_episodes``: the run then goes on from the checkpoint without them, as it does
    without damaged ones. ``reporter`` draws the report of each test (``run.report``); ``payload``, the
    latest checkpoint's, spares a resume reading it again."""

    def __init__(
        self,
        config: Config,
        run_dir: Path,
        resume: bool = False,
        without_missing_episodes: bool = False,
        reporter: Reporter | None = None,
        payload: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir, self.files = Path(run_dir), RunDir(run_dir)
        if not resume:
            check_fresh_start(self.files, config)
        if config.run.report and reporter is None:
            raise ConfigError("run.report=true needs a reporter (collodreamer train gives it one)")
        self.config, self.reporter = config, reporter
        if config.run.wandb:
            import_wandb()  # missing: a one-line error before anything is written
        self.state = RunState(config, self.files)  # checks the task, camera and device first
        self.agent = self.state.agent
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = RunLock(self.run_dir)
        payload = saved_state(self.files, config, payload or latest_payload(self.files)) if resume else None
        missing = self.state.open(payload, without_missing_episodes)
        self.store, self.counters = self.state.store, self.state.counters
        # Only once the saved state fits this config is anything written.
        save_config(config, self.files.config)
        for directory in (self.run_dir, self.store.directory, self.files.checkpoints, self.files.videos):
            for path in remove_temp_files(directory):
                log.info("removed %s, left by a write cut short", path)
        self._last_test = self._keep_metrics()
        self._clock = (time.perf_counter(), self.counters.elapsed_s)
        self.stop = StopSignals()
        self.guard = Guard(config.run, self.files.checkpoint)
        self.logger = Logger(self.run_dir, self.elapsed, config, self.counters.env_frames)
        if payload is not None and missing[1] > 0:  # going on without them: the count stays, marked
            frames, (episodes, env_frames) = self.counters.env_frames, missing
            log.warning("going on at %d env frames without %d episodes, missing or damaged", frames, episodes)
            missed = {"replay/missing_episodes": episodes, "replay/missing_frames": env_frames}
            self.logger.record(frames, missed)

    def elapsed(self) -> float:
        """Wall-clock seconds of this run: those before the checkpoint resumed from, plus this process's."""
        started, before = self._clock
        return before + time.perf_counter() - started

    def _keep_metrics(self) -> int | None:
        """Repair ``metrics.jsonl`` for where the run goes on from; schedule the next test after the last
        one logged, whose env frames this returns (None before the first)."""
        records = repair_metrics(self.files.metrics, self.counters.env_frames, self.store.loaded)
        tests = [record["step"] for record in records if "test/return" in record]
        if not tests:
            return None
        run = self.config.run
        after = next_eval_after(int(tests[-1]), run.eval_start, run.eval_every)
        self.counters.next_eval = max(self.counters.next_eval, after)
        return int(tests[-1])

    def _checkpoint(self, final: bool) -> None:
        """Save, unless the latest update (or plan) of a network was non-finite: a state that gives
        non-finite losses is never saved. A run's last save raises then; others wait for a later episode."""
        failing = self.guard.failing()
        if failing and final:
            raise self.guard.diverged(self.counters, f"it ended with {failing} non-finite in a row")
        if failing:
            log.warning("no checkpoint while updates are non-finite (%s in a row)", failing)
            return
        with timed("checkpoint"):
            save_checkpoint(self.files.checkpoint, self.state.payload(self.elapsed()))
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
        while self.counters.updates < self._updates_due() and not self.stop:
            with timed("replay"):
                batch = self.store.sample(replay.batch_size, replay.batch_length)
            with timed("train"):
                self.logger.add(self.agent.train_step(batch))
            self.counters.updates += 1
            done += 1
            self.guard.check(self.counters)
        if done:
            self.logger.add({"perf/updates_per_s": done / (time.perf_counter() - start)})

    def _act(self, obs: np.ndarray, state: Any, reward: float) -> tuple[np.ndarray, Any]:
        with timed("act"):
            action, state = self.agent.act(obs, state, training=True, reward=reward)
        self.guard.check(self.counters)
        self.guard.check_action(self.counters, action, self.agent, self.config.agent)
        return action, state

    def _write(self, extra: dict[str, Any]) -> None:
        """Log what training collected so far, with the agent's acting metrics and ``extra``."""
        self.logger.add(self.agent.metrics())
        self.logger.write(self.counters.env_frames, extra)

    def _evaluate(self) -> None:
        """A test, logged as ``test/*``, with the first episode's video, the report and a kept
        checkpoint as the config asks."""
        self.logger.add(self.agent.metrics())  # keep training episodes' acting metrics for later
        run, frames = self.config.run, self.counters.env_frames
        video = self.files.test_video(frames) if run.video else None
        if video is not None:
            self.files.videos.mkdir(exist_ok=True)
        record = test_record(self.agent, self.state.eval_env, run, video, lambda: bool(self.stop))
        if record is None:  # cut short: the test runs again when the run is resumed
            return
        self.logger.record(frames, record)
        self._last_test = frames
        self.counters.next_eval = next_eval_after(frames, run.eval_start, run.eval_every)
        if video is not None:
            self.logger.test_video(video, frames)
        if run.report and self.store.num_episodes:
            episode = self.store.latest(1)[0]
            self.logger.report(*self.reporter(self.agent, episode, self.config, frames), frames)
        if run.keep_checkpoints and self.guard.failing():
            log.warning("no checkpoint kept at this test while updates are non-finite")
        elif run.keep_checkpoints:
            with timed("checkpoint"):
                keep_checkpoint(self.files, frames, self.state.payload(self.elapsed()), run.keep_checkpoints)
        mean, spread = record["test/return"], record["test/return_std"]
        log.info("%d env frames: test return %.1f +- %.1f", frames, mean, spread)

    def run(self) -> dict[str, Any]:
        """Train until ``run.steps`` env frames; return the final counts. Raises :class:`Interrupted`
        after saving a checkpoint when a signal stopped the run."""
        try:
            with self.stop.catching():
                self._collect()
                self._train()  # updates owed for episodes a kill left without their training
                if not self.stop and self._last_test != self.counters.env_frames:
                    self._evaluate()
                self._checkpoint(final=True)
        except BaseException:
            with contextlib.suppress(OSError):  # the error that stopped the run is the one to tell
                self.logger.close()
            raise
        finally:
            self._lock.close()
        self.logger.close()
        if self.stop:
            raise self.stop.interrupted(self.counters.env_frames, self.run_dir)
        return {"env_frames": self.counters.env_frames, "updates": self.counters.updates}

    def _collect(self) -> None:
        """Collect env frames up to ``run.steps``, training, testing, logging and checkpointing on the way."""
        config, counters = self.config, self.counters
        bar = tqdm(
            total=config.run.steps,
            initial=counters.env_frames,
            unit="frame",
            disable=not sys.stderr.isatty() or bool(os.environ.get("CI")),
            desc=f"{config.agent} {config.env.task} (env frames)",
        )
        action_dim = self.state.env.spec.action_dim
        obs, _ = self.state.env.reset()
        steps, state, episode_return, reward = start_episode(obs, action_dim), None, 0.0, 0.0
        next_log = counters.env_frames + config.run.log_every
        self._since_log = (time.perf_counter(), counters.env_frames)
        while counters.env_frames < config.run.steps and not self.stop:
            if counters.env_frames >= counters.next_eval:
                self._evaluate()
                if self.stop:
                    break
            if counters.env_frames < config.run.prefill:
                action = self.state.rng.uniform(-1, 1, action_dim).astype(np.float32)
            else:
                action, state = self._act(obs, state, reward)
            with timed("env"):
                obs, reward, terminated, truncated, _ = self.state.env.step(action)
            counters.env_frames += config.env.action_repeat
            bar.update(config.env.action_repeat)
            episode_return += reward
            add_step(steps, obs, action, reward, terminated)
            if terminated or truncated:
                self._end_episode(steps, episode_return)
                bar.set_postfix(train_return=f"{episode_return:.1f}")
                obs, _ = self.state.env.reset()
                steps, state, episode_return, reward = start_episode(obs, action_dim), None, 0.0, 0.0
            self._train()
            if counters.env_frames >= next_log:
                self._write_progress()
                next_log += config.run.log_every
        bar.close()

    def _end_episode(self, steps: dict[str, list], episode_return: float) -> None:
        """Store a finished training episode, log its return, and checkpoint when one is due."""
        counters = self.counters
        with timed("replay"):
            self.store.add(finish_episode(steps))
        counters.episodes += 1
        length = (len(steps["reward"]) - 1) * self.config.env.action_repeat
        episode = {"train/return": episode_return, "train/episode_length": length}
        self._write({**episode, "train/episodes": counters.episodes})
        if counters.env_frames - counters.last_checkpoint >= self.config.run.checkpoint_every:
            self._checkpoint(final=False)

    def _write_progress(self) -> None:
        """Log the speed and the seconds per 1000 env frames of each timed section since the last log."""
        counters, (last_time, last_frames) = self.counters, self._since_log
        now, frames = time.perf_counter(), counters.env_frames - last_frames
        per_kilo_frame = {f"perf/{k}_s": v * 1000 / frames for k, v in take_seconds().items()}
        skipped = {f"train/skipped/{name}": count for name, count in counters.skipped.items()}
        self._write(
            {
                "perf/env_frames_per_s": frames / (now - last_time),
                **per_kilo_frame,
                "train/updates": counters.updates,
                "replay/memory_mib": self.store.nbytes / 2**20,
                **skipped,
            }
        )
        self._since_log = (now, counters.env_frames)


def train(config: Config, run_dir: Path, reporter: Reporter | None = None) -> dict[str, Any]:
    """Start a new run in ``run_dir``."""
    return Trainer(config, run_dir, reporter=reporter).run()


def resume(
    run_dir: Path,
    overrides: list[str] | tuple[str, ...] = (),
    without_missing_episodes: bool = False,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its checkpoint; ``overrides`` may change the settings
    :data:`collodreamer.config.RESUMABLE` lists (e.g. extend steps, lower a learning rate)."""
    files = RunDir(run_dir)
    payload = latest_payload(files)  # read once: it holds the config and the state to go on from
    config = make_config(overrides=overrides, base=saved_config(files, payload))
    return Trainer(config, run_dir, True, without_missing_episodes, reporter, payload).run()
