"""Testing an agent: episodes without exploration noise (the loop's tests), and a trained run's
checkpoint, or a reference policy (``random``, ``zero`` actions: the levels a task reaches without
learning), on fresh episodes."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import imageio.v2 as imageio
import numpy as np

from collodreamer.agents import Agent, make_agent
from collodreamer.agents.random_agent import RandomAgent, ZeroAgent
from collodreamer.envs import Env, make_env
from collodreamer.files import write_atomic
from collodreamer.rundir import RunDir
from collodreamer.schema import Config, RunConfig
from collodreamer.seeds import env_seed
from collodreamer.spec import EnvSpec
from collodreamer.timing import timed
from collodreamer.training.checkpoint import (
    DivergenceError,
    load_checkpoint,
    restoring,
    saved_config,
    seed_everything,
)

Policy = Literal["agent", "random", "zero"]


def check_action(action: np.ndarray) -> np.ndarray:
    """``action`` once it is known finite: a non-finite one would break the physics (MuJoCo refuses it)."""
    if not np.all(np.isfinite(action)):
        raise DivergenceError(f"the agent chose a non-finite action {np.asarray(action).tolist()}")
    return action


def evaluate(
    agent: Agent,
    env: Env,
    episodes: int,
    video_path: Path | None = None,
    video_size: int = 128,
    stop: Callable[[], bool] = lambda: False,
) -> tuple[list[float], list[int]]:
    """Run ``episodes`` test episodes without exploration noise; optionally film the first. Once
    ``stop()`` is true, return the episodes finished so far."""
    returns, lengths = [], []
    for index in range(episodes):
        (obs, _), state, done, total, length, reward = env.reset(), None, False, 0.0, 0, 0.0
        frames = [env.render(video_size)] if video_path and index == 0 else None
        while not done:
            if stop():
                return returns, lengths
            action, state = agent.act(obs, state, training=False, reward=reward)
            obs, reward, terminated, truncated, _ = env.step(check_action(action))
            done = terminated or truncated
            total += reward
            length += env.action_repeat
            if frames is not None:
                frames.append(env.render(video_size))
        returns.append(total)
        lengths.append(length)
        if frames is not None and video_path is not None:
            save_video(video_path, frames)
    return returns, lengths


def test_record(
    agent: Agent, env: Env, run: RunConfig, video: Path | None, stop: Callable[[], bool]
) -> dict[str, float] | None:
    """A test of the training loop, ``run.eval_episodes`` episodes (the first filmed to ``video``), as
    its record: the agent's acting metrics, the mean return, its spread and the episode length as
    ``test/*``, and the seconds it took. None when ``stop()`` cut it short."""
    start = time.perf_counter()
    with timed("test", absorb=True):
        returns, lengths = evaluate(agent, env, run.eval_episodes, video, run.video_size, stop)
    if stop():
        return None
    record = {f"test/{key}": value for key, value in agent.metrics().items()}
    record["test/return"], record["test/return_std"] = np.mean(returns), np.std(returns)
    record["test/episode_length"] = np.mean(lengths)
    record["perf/eval_seconds"] = time.perf_counter() - start
    return {key: float(value) for key, value in record.items()}


def save_video(path: Path, frames: list[np.ndarray]) -> None:
    """``frames`` as an mp4 at ``path``, written atomically (never a truncated file); a failure is a
    one-line OSError naming ``path``."""
    try:  # without it imageio falls back to Pillow, which warns, fails and fails again on exit
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        reason = "no MP4 writer: imageio-ffmpeg is not installed"
        raise OSError(errno.ENOSYS, f"cannot encode the video ({reason})", str(path)) from None
    try:  # quiet: ffmpeg's own messages would break the one-line errors
        data = imageio.mimwrite(
            "<bytes>", frames, format="mp4", fps=30, macro_block_size=1, ffmpeg_log_level="quiet"
        )
    except OSError as error:  # ffmpeg failed: its message runs over many lines
        first = (str(error).strip() or type(error).__name__).splitlines()[0]
        raise OSError(error.errno or errno.EIO, f"cannot encode the video ({first})", str(path)) from None
    if not complete_mp4(data):  # ffmpeg stopped writing (a full disk) without saying so
        raise OSError(errno.EIO, "cannot encode the video (ffmpeg's output is truncated)", str(path))
    write_atomic(path, lambda handle: handle.write(data))


def complete_mp4(data: bytes) -> bool:
    """Whether the top-level boxes of the MP4 ``data`` run exactly to its end and include the index
    (``moov``), which ffmpeg writes last."""
    position, kinds = 0, set()
    while position + 8 <= len(data):
        size, kind = int.from_bytes(data[position : position + 4], "big"), data[position + 4 : position + 8]
        if size == 1:  # a 64-bit size follows
            size = int.from_bytes(data[position + 8 : position + 16], "big")
        if size < 8:
            return False
        kinds.add(kind)
        position += size
    return position == len(data) and b"moov" in kinds


def checkpoint_path(run_dir: Path, checkpoint: Path | None) -> Path:
    """``checkpoint`` as given, or under ``run_dir`` (e.g. ``checkpoints/checkpoint-00020000.pt``);
    without one, the run's latest, ``run_dir/checkpoint.pt``."""
    if checkpoint is None:
        return RunDir(run_dir).checkpoint
    return checkpoint if checkpoint.exists() else Path(run_dir) / checkpoint


def saved_spec(payload: dict[str, Any], config: Config) -> EnvSpec:
    """The environment spec a checkpoint's agent was built for: saved in it, or, in a checkpoint from
    before specs were saved, asked of the task."""
    if "spec" in payload:
        return EnvSpec(tuple(payload["spec"]["obs_shape"]), payload["spec"]["action_dim"])
    env = make_env(config.env, env_seed(config.seed, "train"))
    env.close()
    return env.spec


def restored_agent(path: Path, payload: dict[str, Any], config: Config, spec: EnvSpec | None = None) -> Agent:
    """The agent of ``config`` (for ``spec``; default: the checkpoint's) with the weights of
    ``payload``, the checkpoint at ``path``."""
    agent = make_agent(config, spec or saved_spec(payload, config))
    with restoring(path):
        agent.load_state_dict(payload["agent"])
    return agent


def load_agent(run_dir: Path, checkpoint: Path | None = None) -> tuple[Config, Agent, dict[str, int]]:
    """The config of the run in ``run_dir`` (the checkpoint's, see :func:`saved_config`), its agent
    restored from a checkpoint (see :func:`checkpoint_path`), and that checkpoint's counters; no
    simulator is made."""
    path = checkpoint_path(run_dir, checkpoint)
    payload = load_checkpoint(path)
    config = saved_config(RunDir(run_dir), payload)
    return config, restored_agent(path, payload, config), payload["counters"]


def evaluate_run(
    run_dir: Path,
    episodes: int,
    video_path: Path | None = None,
    checkpoint: Path | None = None,
    policy: Policy = "agent",
) -> list[float]:
    """The returns of fresh test episodes (the eval stream of :mod:`collodreamer.seeds`) of a
    checkpoint of ``run_dir`` (see :func:`checkpoint_path`), or of a reference ``policy`` on the
    run's task."""
    path = checkpoint_path(run_dir, checkpoint) if policy == "agent" else None
    payload = load_checkpoint(path) if path else None
    config = saved_config(RunDir(run_dir), payload)  # config.yaml for a reference policy
    seed_everything(config.seed, config.run.threads)
    env = make_env(config.env, env_seed(config.seed, "eval"))
    try:
        if path and payload:
            agent = restored_agent(path, payload, config, env.spec)
        else:
            agent = RandomAgent(env.spec, config.seed) if policy == "random" else ZeroAgent(env.spec)
        returns, _ = evaluate(agent, env, episodes, video_path, config.run.video_size)
    finally:
        env.close()
    return returns
