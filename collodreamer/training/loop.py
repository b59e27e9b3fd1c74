"""The training loop: prefill, then collect / train / evaluate / log / checkpoint, resumable.

Every count is in env frames (agent steps times the action repeat). The loop knows nothing of the
agent beyond :class:`collodreamer.agents.Agent`. SIGINT and SIGTERM end a run after its current step
or update, with a checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
from tqdm import tqdm

from collodreamer.agents import ModelBased, Planner, make_agent
from collodreamer.config import (
    Config,
    ConfigError,
    changed_settings,
    check_resumable,
    from_dict,
    load_config,
    make_config,
    save_config,
    to_dict,
)
from collodreamer.data import EpisodeStore, ReplayError, add_step, finish_episode, start_episode
from collodreamer.envs import Env, make_env
from collodreamer.files import remove_temp_files
from collodreamer.health import RATE_SETTINGS, growth, nonfinite
from collodreamer.rundir import RunDir
from collodreamer.seeds import env_seed
from collodreamer.timing import take_seconds, timed
from collodreamer.training.checkpoint import (
    CheckpointError,
    DivergenceError,
    describe,
    load_checkpoint,
    nonfinite_tensors,
    restoring,
    rng_states,
    save_checkpoint,
    seed_everything,
    set_rng_states,
)
from collodreamer.training.evaluation import evaluate
from collodreamer.training.logger import Logger, import_wandb, keep_metrics_until, write_metrics
from collodreamer.training.report import report_images

log = logging.getLogger("collodreamer")


class Interrupted(RuntimeError):
    """A run stopped by SIGINT or SIGTERM after saving its checkpoint; the message is one line."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


@dataclass
class Counters:
    """Progress of a run; saved in every checkpoint."""

    env_frames: int = 0
    updates: int = 0
    episodes: int = 0
    next_eval: int = 0
    last_checkpoint: int = 0
    elapsed_s: float = 0.0  # wall-clock seconds up to the last checkpoint, summed across resumes
    skipped: dict[str, int] = field(default_factory=dict)  # non-finite updates (plans) skipped, per network


def next_eval_after(frames: int, eval_start: int, eval_every: int) -> int:
    """The first test of the schedule ``eval_start + k * eval_every`` after ``frames`` env frames."""
    if frames < eval_start:
        return eval_start
    return eval_start + ((frames - eval_start) // eval_every + 1) * eval_every


def in_a_row(counts: dict[str, int]) -> str:
    """``{"world_model": 3, "planner": 2}`` as ``"3 world_model updates, 2 planner plans"``."""
    units = {name: "plans" if name == "planner" else "updates" for name in counts}
    return ", ".join(f"{n} {name} {units[name]}" for name, n in counts.items())


class RunLock:
    """An exclusive lock on the run directory itself, held until :meth:`close` or the process ends (the
    OS releases it then, even on SIGKILL), so two processes never write to the same run. No file is
    locked, so no deletion can break it."""

    def __init__(self, run_dir: Path) -> None:
        self._fd = -1
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"{run_dir} is in use by another collodreamer process") from None
        self._fd = fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    __del__ = close  # a Trainer that failed to start lets go of its run


class Trainer:
    """One run: its directory holds ``config.yaml``, ``episodes/``, ``metrics.jsonl``,
    ``tensorboard/``, ``checkpoint.pt``, ``checkpoints/`` and ``videos/``. ``resume`` continues from
    the checkpoint, or, where a run stopped before its first one, starts training anew on the
    episodes on disk. Episode files of the checkpoint's that are missing are refused, unless
    ``without_missing_episodes``: the run then goes on from the checkpoint without them, as it does
    without damaged ones."""

    def __init__(
        self, config: Config, run_dir: Path, resume: bool = False, without_missing_episodes: bool = False
    ) -> None:
        self.run_dir = Path(run_dir)
        self.files = RunDir(self.run_dir)
        self.checkpoint_path = self.files.checkpoint
        if not resume and self.checkpoint_path.exists():
            raise ConfigError(f"{self.run_dir} already holds a run; continue it with --resume {self.run_dir}")
        self.config = config
        if config.run.wandb:
            import_wandb()  # missing: a one-line error before anything is written
        # The task, its camera and the device are checked here, before anything is written.
        seed_everything(config.seed, config.run.threads)
        self.env = make_env(config.env, env_seed(config.seed, "train"))
        self.eval_env = make_env(config.env, env_seed(config.seed, "test"))
        self.report_env: Env | None = None  # made at the first report of a planning agent
        self.agent = make_agent(config, self.env.spec)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = RunLock(self.run_dir)
        payload = None
        if resume and self.checkpoint_path.exists():
            payload = load_checkpoint(self.checkpoint_path)
            saved = payload.get("config", {}).get("agent", config.agent)
            if saved != config.agent:
                raise CheckpointError(
                    f"checkpoint {self.checkpoint_path} holds a {saved} run, which cannot go on as "
                    f"{config.agent} (the checkpoint would lose its state); start a new run instead"
                )
            check_resumable(payload.get("config", {}), config)
        elif resume:
            log.warning("%s has no checkpoint: training starts anew on the episodes on disk", self.run_dir)
        self.store = EpisodeStore(
            self.files.episodes, config.replay.capacity, config.env.action_repeat, config.seed
        )
        self.rng = np.random.default_rng(config.seed)
        self.counters = Counters(next_eval=config.run.eval_start)
        if payload is not None:
            self._restore(payload)
        # The data on disk is the truth about how much experience was collected: episodes saved
        # after the last checkpoint are kept, and they count.
        disk_frames, disk_episodes = self.store.load()
        self.store.check_shapes(self.env.spec.obs_shape, self.env.spec.action_dim)
        missing = (self.counters.episodes - disk_episodes, self.counters.env_frames - disk_frames)
        absent = missing[0] - len(self.store.damaged)  # damaged files are reported by name above
        if payload is not None and missing[1] > 0 and absent > 0 and not without_missing_episodes:
            raise ReplayError(
                f"{absent} episodes ({missing[1]} env frames) that checkpoint {self.checkpoint_path} "
                f"trained on are missing from {self.store.directory}: put them back, or go on without "
                "them with --without-missing-episodes (the metrics recorded so far are kept)"
            )
        # Only once the saved state fits this config is anything written.
        save_config(config, self.files.config)
        for directory in (
            self.run_dir,
            self.store.directory,
            self.files.checkpoints,
            self.run_dir / "videos",
        ):
            for path in remove_temp_files(directory):
                log.info("removed %s, left by a write cut short", path)
        if payload is None or missing[1] <= 0:
            self.counters.env_frames = disk_frames
            self.counters.episodes = max(self.counters.episodes, disk_episodes)
        self._last_test = self._keep_metrics()
        self._clock = (time.perf_counter(), self.counters.elapsed_s)
        self._stop = 0  # the signal that asked the run to stop, once one did
        nonfinite.clear()
        growth.clear()
        growth.limit = config.run.max_weight_growth
        self.logger = Logger(self.run_dir, self.elapsed, config, self.counters.env_frames)
        if payload is not None and missing[1] > 0:  # going on without them: the count stays, marked
            log.warning(
                "going on at %d env frames without %d episodes, missing or damaged",
                self.counters.env_frames,
                missing[0],
            )
            self.logger.record(
                self.counters.env_frames,
                {"replay/missing_episodes": missing[0], "replay/missing_frames": missing[1]},
            )

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
        dropped = sorted(set(payload["agent"]) - set(self.agent.state_dict()))
        if dropped:
            raise CheckpointError(
                f"checkpoint {self.checkpoint_path} does not fit this config (changed agent or model "
                f"settings?): this agent has no place for its {', '.join(dropped)}"
            )
        log.info("resumed %s at %d env frames", self.run_dir, self.counters.env_frames)
        changes = changed_settings(payload.get("config", {}), to_dict(self.config))
        if changes:
            log.info("settings changed since the checkpoint: %s", "; ".join(changes))

    def _keep_metrics(self) -> int | None:
        """Cut ``metrics.jsonl`` back to where the run goes on from (what was logged later is logged
        again, tests included); schedule the next test after the last one logged, whose env frames
        this returns (None before the first)."""
        path = self.files.metrics
        records, removed = keep_metrics_until(path, self.counters.env_frames)
        if removed:
            frames = self.counters.env_frames
            log.info("%s: removed %d lines past %d env frames, or unreadable", path, removed, frames)
        rebuilt = self._rebuilt_returns(records)
        if rebuilt:
            log.info(
                "%s: recorded again the returns of %d episodes a kill left unrecorded", path, len(rebuilt)
            )
            records = sorted(records + rebuilt, key=lambda record: record["step"])
            write_metrics(path, records)
        tests = [record["step"] for record in records if "test/return" in record]
        if not tests:
            return None
        run = self.config.run
        self.counters.next_eval = max(
            self.counters.next_eval, next_eval_after(int(tests[-1]), run.eval_start, run.eval_every)
        )
        return int(tests[-1])

    def _rebuilt_returns(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The ``train/return`` records of the episodes on disk after the last one recorded (a kill
        between saving an episode and recording it), rebuilt from their files."""
        returns = [record for record in records if "train/return" in record]
        recorded = int(returns[-1].get("train/episodes", len(returns))) if returns else 0
        step = int(returns[-1]["step"]) if returns else 0
        rebuilt = []
        for frames, episode_return in self.store.loaded[recorded:]:
            step += frames
            rebuilt.append(
                {
                    "step": step,
                    "train/return": episode_return,
                    "train/episode_length": frames,
                    "train/episodes": recorded + len(rebuilt) + 1,
                }
            )
        return rebuilt

    def payload(self) -> dict[str, Any]:
        """What a checkpoint holds: the run's whole state now."""
        self.counters.elapsed_s = self.elapsed()
        return {
            "config": to_dict(self.config),
            "counters": vars(self.counters).copy(),
            "agent": self.agent.state_dict(),
            "replay": self.store.state_dict(),
            "env": self.env.state_dict(),
            "eval_env": self.eval_env.state_dict(),
            "loop_rng": self.rng.bit_generator.state,
            "rng": rng_states(),
        }

    def save(self) -> None:
        try:
            save_checkpoint(self.checkpoint_path, self.payload())
        except DivergenceError as error:
            raise self._diverged(str(error)) from None
        self.counters.last_checkpoint = self.counters.env_frames

    def _checkpoint(self, final: bool) -> None:
        """Save, unless the latest update (or plan) of a network was non-finite: a state that gives
        non-finite losses is never saved. A run's last save raises then; others wait for a later episode."""
        failing = in_a_row(nonfinite.failing())
        if failing and final:
            raise self._diverged(f"it ended with {failing} non-finite in a row")
        if failing:
            log.warning("no checkpoint while updates are non-finite (%s in a row)", failing)
            return
        with timed("checkpoint"):
            self.save()

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
        while self.counters.updates < self._updates_due() and not self._stop:
            with timed("replay"):
                batch = self.store.sample(replay.batch_size, replay.batch_length)
            with timed("train"):
                self.logger.add(self.agent.train_step(batch))
            self.counters.updates += 1
            done += 1
            self._check_finite()
        if done:
            self.logger.add({"perf/updates_per_s": done / (time.perf_counter() - start)})

    def _check_finite(self) -> None:
        """Count the updates (and plans) skipped as non-finite; stop the run once one network's run of
        them in a row reaches ``run.max_nonfinite``, or once its weights grew past
        ``run.max_weight_growth`` times their level."""
        skipped, longest = nonfinite.take()
        for name, count in skipped.items():
            self.counters.skipped[name] = self.counters.skipped.get(name, 0) + count
        limit = self.config.run.max_nonfinite
        if max(longest.values(), default=0) >= limit:
            raise self._diverged(f"{in_a_row(longest)} non-finite in a row (run.max_nonfinite={limit})")
        grown = growth.take()
        if grown:
            name, (level, norm) = next(iter(grown.items()))
            raise self._diverged(
                f"the {name} weights grew from norm {level:.3g} to {norm:.3g}, past "
                f"run.max_weight_growth={self.config.run.max_weight_growth:g} times: lower "
                f"{RATE_SETTINGS.get(name, 'its learning rate')}"
            )

    def _diverged(self, what: str) -> DivergenceError:
        """A one-line error saying what diverged, and which checkpoint holds the last finite state."""
        if self.checkpoint_path.exists():
            kept = f"{self.checkpoint_path} holds the last finite state, at {self.counters.last_checkpoint}"
            kept += " env frames: resume it with smaller learning rates"
        else:
            kept = "no checkpoint was written yet"
        return DivergenceError(f"training diverged at {self.counters.env_frames} env frames: {what}; {kept}")

    def _act(self, obs: np.ndarray, state: Any, reward: float) -> tuple[np.ndarray, Any]:
        with timed("act"):
            action, state = self.agent.act(obs, state, training=True, reward=reward)
        self._check_finite()
        if not np.all(np.isfinite(action)):
            bad, total = nonfinite_tensors(self.agent.state_dict())
            weights = f"{describe(bad, total)} are non-finite" if bad else "its weights are finite, too large"
            raise self._diverged(f"the {self.config.agent} agent chose a non-finite action ({weights})")
        return action, state

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
            returns, lengths = evaluate(
                self.agent, self.eval_env, run.eval_episodes, video, run.video_size, lambda: bool(self._stop)
            )
        if self._stop:  # cut short: the test runs again when the run is resumed
            return
        frames = self.counters.env_frames
        test_metrics = {f"test/{key}": value for key, value in self.agent.metrics().items()}
        self.logger.record(
            frames,
            {
                **test_metrics,
                "test/return": float(np.mean(returns)),
                "test/return_std": float(np.std(returns)),
                "test/episode_length": float(np.mean(lengths)),
                "perf/eval_seconds": time.perf_counter() - start,
            },
        )
        self._last_test = frames
        self.counters.next_eval = next_eval_after(frames, run.eval_start, run.eval_every)
        if video is not None:
            self.logger.test_video(video, frames)
        if run.report:
            self._report()
        if run.keep_checkpoints:
            self._keep_checkpoint()
        log.info("%d env frames: test return %.1f +- %.1f", frames, np.mean(returns), np.std(returns))

    def _report(self) -> None:
        """``run.report``: the report's pictures of this test to TensorBoard (the latest episode's
        open-loop prediction, a plan of a planning agent). Its random draws leave the run's random
        states as they were, so the run goes on as it would without them."""
        if not self.store.num_episodes or not isinstance(self.agent, ModelBased):
            return  # nothing to predict yet, or no model to predict with
        config, frames = self.config, self.counters.env_frames
        if self.report_env is None and isinstance(self.agent, Planner):
            self.report_env = make_env(config.env, env_seed(config.seed, "report"))
        title = f"{config.agent} {config.env.task} at {frames} env frames"
        states = rng_states()
        try:
            with timed("report"):
                episode = self.store.latest(1)[0]
                pixels = config.env.obs == "pixels"
                images, video = report_images(self.agent, episode, self.report_env, title, pixels)
        finally:
            set_rng_states(states)
        for name, image in images.items():
            self.logger.image(f"report/{name}", image, frames)
        if video is not None:
            self.logger.animation("report/prediction_video", video[::2], frames)

    def _keep_checkpoint(self) -> None:
        """``run.keep_checkpoints``: the state at this test as ``checkpoints/checkpoint-<frames>.pt``,
        written as ``checkpoint.pt`` is (atomic, checksummed, finite); only the newest N stay."""
        if nonfinite.failing():
            log.warning("no checkpoint kept at this test while updates are non-finite")
            return
        directory = self.files.checkpoints
        directory.mkdir(exist_ok=True)
        with timed("checkpoint"):
            save_checkpoint(directory / f"checkpoint-{self.counters.env_frames:08d}.pt", self.payload())
        for old in sorted(directory.glob("checkpoint-*.pt"))[: -self.config.run.keep_checkpoints]:
            old.unlink()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stop:  # asked twice: stop at once
            raise KeyboardInterrupt(signum)
        self._stop = signum
        log.warning("%s: stopping after the current step, with a checkpoint", signal.Signals(signum).name)

    @contextmanager
    def _stopping_on_signals(self) -> Iterator[None]:
        """While training, SIGINT and SIGTERM ask the loop to stop (signals reach the main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def run(self) -> dict[str, Any]:
        """Train until ``run.steps`` env frames; return the final counts. Raises :class:`Interrupted`
        after saving a checkpoint when a signal stopped the run."""
        try:
            with self._stopping_on_signals():
                self._collect()
                self._train()  # updates owed for episodes a kill left without their training
                if not self._stop and self._last_test != self.counters.env_frames:
                    self._evaluate()
                self._checkpoint(final=True)
        except BaseException:
            with contextlib.suppress(OSError):  # the error that stopped the run is the one to tell
                self.logger.close()
            raise
        finally:
            self._lock.close()
        self.logger.close()
        if self._stop:
            name = signal.Signals(self._stop).name
            raise Interrupted(
                f"stopped by {name} at {self.counters.env_frames} env frames, checkpoint saved; "
                f"continue with: collodreamer train --resume {self.run_dir}",
                self._stop,
            )
        return {"env_frames": self.counters.env_frames, "updates": self.counters.updates}

    def _collect(self) -> None:
        """Collect env frames up to ``run.steps``, training, testing, logging and checkpointing on the way."""
        config, counters = self.config, self.counters
        repeat = config.env.action_repeat
        bar = tqdm(
            total=config.run.steps,
            initial=counters.env_frames,
            unit="frame",
            disable=not sys.stderr.isatty() or bool(os.environ.get("CI")),
            desc=f"{config.agent} {config.env.task} (env frames)",
        )
        action_dim = self.env.spec.action_dim
        obs, _ = self.env.reset()
        steps, state, episode_return, reward = start_episode(obs, action_dim), None, 0.0, 0.0
        next_log = counters.env_frames + config.run.log_every
        last_time, last_frames = time.perf_counter(), counters.env_frames
        while counters.env_frames < config.run.steps and not self._stop:
            if counters.env_frames >= counters.next_eval:
                self._evaluate()
                if self._stop:
                    break
            if counters.env_frames < config.run.prefill:
                action = self.rng.uniform(-1, 1, action_dim).astype(np.float32)
            else:
                action, state = self._act(obs, state, reward)
            with timed("env"):
                obs, reward, terminated, truncated, _ = self.env.step(action)
            counters.env_frames += repeat
            bar.update(repeat)
            episode_return += reward
            add_step(steps, obs, action, reward, terminated)
            if terminated or truncated:
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
                    self._checkpoint(final=False)
                obs, _ = self.env.reset()
                steps, state, episode_return, reward = start_episode(obs, action_dim), None, 0.0, 0.0
            self._train()
            if counters.env_frames >= next_log:
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
                last_time, last_frames = now, counters.env_frames
                next_log += config.run.log_every
        bar.close()


def train(config: Config, run_dir: Path) -> dict[str, Any]:
    """Start a new run in ``run_dir``."""
    return Trainer(config, run_dir).run()


def resume(
    run_dir: Path, overrides: list[str] | tuple[str, ...] = (), without_missing_episodes: bool = False
) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its checkpoint; ``overrides`` may change the settings
    :data:`collodreamer.config.RESUMABLE` lists (e.g. extend steps, lower a learning rate)."""
    config = make_config(overrides=overrides, base=saved_config(run_dir))
    return Trainer(config, run_dir, resume=True, without_missing_episodes=without_missing_episodes).run()


def saved_config(run_dir: Path) -> Config:
    """The config of the run in ``run_dir``: its checkpoint's, which wins over a ``config.yaml`` that
    differs (damaged, or edited) with a warning naming the settings; ``config.yaml`` before the
    first checkpoint."""
    files = RunDir(run_dir)
    path, checkpoint = files.config, files.checkpoint
    if not checkpoint.exists():
        return load_config(path)
    saved = load_checkpoint(checkpoint).get("config")
    if saved is None:  # a checkpoint from before configs were saved in them
        return load_config(path)
    config = from_dict(saved)
    try:
        on_disk = to_dict(load_config(path))
    except ConfigError as error:
        log.warning("%s; the checkpoint's config is used", error)
        return config
    differing = [change.split(":")[0] for change in changed_settings(to_dict(config), on_disk)]
    if differing:
        log.warning(
            "%s differs from the config in %s in %s: the checkpoint's is used",
            path,
            checkpoint,
            ", ".join(differing),
        )
    return config
