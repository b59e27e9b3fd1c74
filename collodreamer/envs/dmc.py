"""A dm_control suite task behind a small gym-like interface.

Observations are 64x64 RGB pixels (uint8, HWC) from Dreamer's cameras, or the task's observation
dict flattened to one float32 vector. Actions live in [-1, 1] and are rescaled to the task's bounds.
"""

from __future__ import annotations

import ctypes.util
import os
from typing import Any

import numpy as np

from collodreamer.config import ConfigError, EnvConfig
from collodreamer.spec import EnvSpec


def _pick_gl_backend() -> None:
    """Headless rendering: EGL when its library is present, else OSMesa (set before MuJoCo loads)."""
    if "MUJOCO_GL" in os.environ:
        return
    if ctypes.util.find_library("EGL"):
        os.environ["MUJOCO_GL"] = "egl"
    elif ctypes.util.find_library("OSMesa"):
        os.environ["MUJOCO_GL"] = "osmesa"


_pick_gl_backend()

from dm_control import suite  # noqa: E402  (after the GL backend is chosen)

# The tasks of the paper's experiments (Fig. 5, 13).
PAPER_TASKS = (
    "dmc:cheetah_run",
    "dmc:quadruped_walk",
    "dmc:reacher_easy",
    "dmc:reacher_hard",
    "dmc:walker_walk",
)


def list_tasks() -> list[str]:
    """Every suite task as ``dmc:<domain>_<task>``."""
    return [f"dmc:{domain}_{task}" for domain, task in suite.ALL_TASKS]


def parse_task(name: str) -> tuple[str, str]:
    """``"dmc:ball_in_cup_catch"`` -> ``("ball_in_cup", "catch")``; one-line error if unknown."""
    suite_name, _, task_name = name.partition(":")
    if suite_name != "dmc" or not task_name:
        raise ConfigError(f"unknown task '{name}': tasks look like dmc:cheetah_run")
    for domain, task in suite.ALL_TASKS:
        if f"{domain}_{task}" == task_name:
            return domain, task
    raise ConfigError(f"unknown task '{name}'; valid tasks: {', '.join(list_tasks())}")


class DMCEnv:
    """One dm_control task with action repeat, an episode limit in env frames and seeding."""

    def __init__(self, config: EnvConfig, seed: int) -> None:
        domain, task = parse_task(config.task)
        self.config = config
        self._env = suite.load(domain, task, task_kwargs={"random": seed})
        self._camera = config.camera if config.camera >= 0 else (2 if domain == "quadruped" else 0)
        spec = self._env.action_spec()
        self._low, self._high = spec.minimum.astype(np.float64), spec.maximum.astype(np.float64)
        self.action_dim = int(spec.shape[0])
        if config.fast_render:
            # Software rendering spends most of its time on multisampling and shadow maps; these
            # must be set before the first render creates the GL context.
            quality = self._env.physics.model.vis.quality
            quality.offsamples = 0
            quality.shadowsize = 256
        self._frames = 0
        if config.obs == "pixels":
            self.obs_shape: tuple[int, ...] = (config.image_size, config.image_size, 3)
            self.obs_dtype = np.dtype(np.uint8)
        else:
            size = sum(int(np.prod(v.shape)) for v in self._env.observation_spec().values())
            self.obs_shape = (size,)
            self.obs_dtype = np.dtype(np.float32)

    @property
    def spec(self) -> EnvSpec:
        return EnvSpec(self.obs_shape, self.action_dim)

    def _observe(self, time_step: Any) -> np.ndarray:
        if self.config.obs == "pixels":
            size = self.config.image_size
            return self.render(size)
        parts = [np.asarray(v, dtype=np.float32).reshape(-1) for v in time_step.observation.values()]
        return np.concatenate(parts)

    def render(self, size: int) -> np.ndarray:
        """An RGB frame (uint8, HWC) from the task's camera."""
        return np.ascontiguousarray(self._env.physics.render(size, size, camera_id=self._camera))

    def reset(self) -> np.ndarray:
        self._frames = 0
        return self._observe(self._env.reset())

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, dict[str, Any]]:
        """Repeat ``action`` (in [-1, 1]) for ``action_repeat`` frames; sum the rewards.

        Returns (obs, reward, done, info) with ``info["terminal"]`` true only when the task itself
        ended the episode with discount 0 (a time limit is not terminal).
        """
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        scaled = self._low + (action + 1.0) * 0.5 * (self._high - self._low)
        reward = 0.0
        time_step = None
        for _ in range(self.config.action_repeat):
            time_step = self._env.step(scaled)
            self._frames += 1
            reward += time_step.reward or 0.0
            if time_step.last() or self._frames >= self.config.time_limit:
                break
        assert time_step is not None
        terminal = time_step.last() and time_step.discount == 0.0
        done = time_step.last() or self._frames >= self.config.time_limit
        return self._observe(time_step), reward, done, {"terminal": terminal}

    def state_dict(self) -> dict[str, Any]:
        """The task's random state, so a resumed run draws new initial states, not repeats."""
        return {"random": self._env.task.random.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._env.task.random.set_state(state["random"])

    def close(self) -> None:
        self._env.close()
