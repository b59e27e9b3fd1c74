"""A dm_control suite task behind the environment protocol (:class:`collodreamer.envs.base.Env`).

Observations are 64x64 RGB pixels from Dreamer's cameras, or the task's observation dict flattened
to one float32 vector.
"""

from __future__ import annotations

import ctypes.util
import os
from typing import Any

import numpy as np

from collodreamer.config import ConfigError, uses_pixels
from collodreamer.envs.base import Env, observation_space, to_bounds, unit_actions
from collodreamer.schema import EnvConfig
from collodreamer.spec import IMAGE_SIZE


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
        raise ConfigError(f"unknown task '{name}': tasks look like dmc:cheetah_run or gym:Pendulum-v1")
    for domain, task in suite.ALL_TASKS:
        if f"{domain}_{task}" == task_name:
            return domain, task
    raise ConfigError(f"unknown task '{name}'; valid tasks: {', '.join(list_tasks())}")


def flat(observation: dict[str, Any]) -> np.ndarray:
    """A dm_control observation dict as one float64 vector, its parts in the dict's order."""
    return np.concatenate([np.asarray(v, np.float64).reshape(-1) for v in observation.values()])


class DMCEnv(Env):
    """One dm_control task with action repeat, an episode limit in env frames and seeding."""

    def __init__(self, config: EnvConfig, seed: int) -> None:
        domain, task = parse_task(config.task)
        self.config = config
        self.action_repeat = config.action_repeat
        self._env = suite.load(domain, task, task_kwargs={"random": seed})
        cameras = self._env.physics.model.ncam
        if not -1 <= config.camera < cameras:
            self._env.close()
            raise ConfigError(
                f"env.camera: {config.task} has cameras 0 to {cameras - 1} (-1: Dreamer's choice), "
                f"got {config.camera}"
            )
        self._camera = config.camera if config.camera >= 0 else (2 if domain == "quadruped" else 0)
        spec = self._env.action_spec()
        self._low, self._high = spec.minimum.astype(np.float64), spec.maximum.astype(np.float64)
        self.action_space = unit_actions(int(spec.shape[0]))
        if config.fast_render:
            # Software rendering spends most of its time on multisampling and shadow maps; these
            # must be set before the first render creates the GL context.
            quality = self._env.physics.model.vis.quality
            quality.offsamples = 0
            quality.shadowsize = 256
        self._frames = 0
        size = sum(int(np.prod(v.shape)) for v in self._env.observation_spec().values())
        self.observation_space = observation_space(uses_pixels(config), size)

    def _observe(self, time_step: Any) -> np.ndarray:
        if uses_pixels(self.config):
            return self.render(IMAGE_SIZE)
        return flat(time_step.observation).astype(np.float32)

    def render(self, size: int) -> np.ndarray:
        """An RGB frame (uint8, HWC) from the task's camera."""
        return np.ascontiguousarray(self._env.physics.render(size, size, camera_id=self._camera))

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None:
            self._env.task.random.seed(seed)
        self._frames = 0
        return self._observe(self._env.reset()), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Repeat ``action`` (in [-1, 1]) for ``action_repeat`` frames; sum the rewards. Terminated
        only when the task ended the episode with discount 0; its own time limit and ``time_limit``
        truncate."""
        scaled = to_bounds(action, self._low, self._high)
        reward = 0.0
        time_step = None
        for _ in range(self.action_repeat):
            time_step = self._env.step(scaled)
            self._frames += 1
            reward += time_step.reward or 0.0
            if time_step.last() or self._frames >= self.config.time_limit:
                break
        assert time_step is not None
        terminated = time_step.last() and time_step.discount == 0.0
        truncated = not terminated and (time_step.last() or self._frames >= self.config.time_limit)
        return self._observe(time_step), reward, terminated, truncated, {}

    def state(self) -> np.ndarray:
        """The true state now, whatever the agent observes: the task's state observation, then each
        body's world position (see :meth:`state_parts`)."""
        physics = self._env.physics
        observation = flat(self._env.task.get_observation(physics))
        return np.concatenate([observation, physics.data.xpos[1:].reshape(-1)])

    def state_parts(self) -> dict[str, slice]:
        """Where each part of :meth:`state` lies: the task's observation keys, then ``body:<name>``
        (x, y, z in metres) for every body but the world."""
        physics = self._env.physics
        sizes = [(k, int(np.prod(v.shape))) for k, v in self._env.observation_spec().items()]
        sizes += [(f"body:{physics.model.id2name(i, 'body')}", 3) for i in range(1, physics.model.nbody)]
        starts = np.cumsum([0] + [size for _, size in sizes])[:-1]
        return {name: slice(int(at), int(at) + size) for (name, size), at in zip(sizes, starts, strict=True)}

    def has_torso(self) -> bool:
        """Whether the task's physics reports the torso's uprightness (:meth:`upright`)."""
        return hasattr(self._env.physics, "torso_upright")

    def upright(self) -> float:
        """The torso's uprightness now: the z component of its z axis, 1 standing, -1 on its back."""
        return float(self._env.physics.torso_upright())

    def state_dict(self) -> dict[str, Any]:
        """The task's random state, so a resumed run draws new initial states, not repeats."""
        return {"random": self._env.task.random.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._env.task.random.set_state(state["random"])

    def close(self) -> None:
        self._env.close()
