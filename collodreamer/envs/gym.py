"""A Gymnasium environment with continuous actions behind the environment protocol
(:class:`collodreamer.envs.base.Env`), as the task ``gym:<id>`` (e.g. ``gym:Pendulum-v1``).

Observations are the environment's own, flattened to a float32 vector, or its ``rgb_array``
rendering resized to 64x64 pixels. The environment's own time limit stays; ``env.time_limit`` (env
frames) may end episodes earlier, as for dm_control.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from PIL import Image

from collodreamer.config import ConfigError, uses_pixels
from collodreamer.envs.base import Env, observation_space, to_bounds, unit_actions
from collodreamer.schema import EnvConfig
from collodreamer.spec import IMAGE_SIZE


def gym_id(task: str) -> str:
    """``"gym:Pendulum-v1"`` -> ``"Pendulum-v1"``, once Gymnasium knows it; one-line error if not."""
    name = task.partition(":")[2]
    try:
        gymnasium.spec(name)
    except gymnasium.error.Error as error:
        raise ConfigError(f"unknown task '{task}': {str(error).splitlines()[0]}") from None
    return name


class GymEnv(Env):
    """One Gymnasium environment with a Box action space, with action repeat and a time limit in env
    frames; seeded once, at construction."""

    def __init__(self, config: EnvConfig, seed: int) -> None:
        self.config = config
        self.action_repeat = config.action_repeat
        try:
            self._env = gymnasium.make(gym_id(config.task), render_mode="rgb_array")
        except gymnasium.error.Error as error:  # e.g. a missing dependency (box2d, mujoco)
            raise ConfigError(f"task '{config.task}': {str(error).splitlines()[0]}") from None
        actions = self._env.action_space
        if not isinstance(actions, gymnasium.spaces.Box) or len(actions.shape) != 1:
            self._env.close()
            raise ConfigError(
                f"task '{config.task}' has {actions} actions: only continuous (Box) actions of one "
                "dimension are supported"
            )
        if not (np.all(np.isfinite(actions.low)) and np.all(np.isfinite(actions.high))):
            self._env.close()
            raise ConfigError(
                f"task '{config.task}' has unbounded actions {actions}: they cannot be rescaled"
            )
        self._low, self._high = actions.low.astype(np.float64), actions.high.astype(np.float64)
        self.action_space = unit_actions(actions.shape[0])
        size = gymnasium.spaces.flatdim(self._env.observation_space)
        self.observation_space = observation_space(uses_pixels(config), size)
        self._frames = 0
        self._env.reset(seed=seed)  # seeds the environment's generator; later resets draw from it
        if uses_pixels(config):
            self.render(IMAGE_SIZE)  # a one-line error now if it cannot render

    def _observe(self, obs: Any) -> np.ndarray:
        if uses_pixels(self.config):
            return self.render(IMAGE_SIZE)
        return gymnasium.spaces.flatten(self._env.observation_space, obs).astype(np.float32)

    def render(self, size: int) -> np.ndarray:
        """The environment's ``rgb_array`` frame resized to ``size`` x ``size``."""
        try:
            frame = self._env.render()
        except gymnasium.error.DependencyNotInstalled as error:
            raise ConfigError(f"task '{self.config.task}' cannot render: {error}") from None
        if not isinstance(frame, np.ndarray) or frame.ndim != 3:
            raise ConfigError(f"task '{self.config.task}' renders no rgb_array frames")
        image = Image.fromarray(np.ascontiguousarray(frame[..., :3], dtype=np.uint8))
        return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))

    def reset(self, seed: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        self._frames = 0
        obs, info = self._env.reset(seed=seed)
        return self._observe(obs), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Repeat ``action`` (in [-1, 1]) for ``action_repeat`` frames; sum the rewards."""
        scaled = to_bounds(action, self._low, self._high).astype(self._env.action_space.dtype)
        reward, terminated, truncated, info = 0.0, False, False, {}
        for _ in range(self.action_repeat):
            obs, frame_reward, terminated, truncated, info = self._env.step(scaled)
            self._frames += 1
            reward += float(frame_reward)
            truncated = truncated or self._frames >= self.config.time_limit
            if terminated or truncated:
                break
        return self._observe(obs), reward, bool(terminated), bool(truncated and not terminated), info

    def state_dict(self) -> dict[str, Any]:
        """The environment's random state, so a resumed run draws new initial states, not repeats."""
        return {"random": self._env.unwrapped.np_random.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._env.unwrapped.np_random.bit_generator.state = state["random"]

    def close(self) -> None:
        self._env.close()
