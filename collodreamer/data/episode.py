"""The replay's episode format (Dreamer's), and how the training loop builds an episode step by step.

Step ``t`` holds ``obs[t]``, the ``action[t]`` that led to it (zeros at ``t = 0``), the ``reward[t]``
received with it, ``is_first[t]`` (true only at ``t = 0``) and ``is_terminal[t]`` (the task itself
ended the episode; a time limit is not terminal).
"""

from __future__ import annotations

import numpy as np

Episode = dict[str, np.ndarray]
KEYS = ("obs", "action", "reward", "is_first", "is_terminal")


def start_episode(obs: np.ndarray, action_dim: int) -> dict[str, list]:
    """The steps of a new episode: its first observation, reached by no action."""
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
    """The collected steps as one :data:`Episode` of arrays."""
    return {
        "obs": np.stack(steps["obs"]),
        "action": np.stack(steps["action"]).astype(np.float32),
        "reward": np.asarray(steps["reward"], np.float32),
        "is_first": np.asarray(steps["is_first"], bool),
        "is_terminal": np.asarray(steps["is_terminal"], bool),
    }


def layout(episode: Episode) -> dict[str, tuple[tuple[int, ...], str]]:
    """Per key, the shape of one step and the dtype: what every episode of a run shares."""
    return {k: (tuple(episode[k].shape[1:]), str(episode[k].dtype)) for k in KEYS}


def episode_problem(episode: Episode) -> str | None:
    """Why ``episode`` is malformed, or None when it is well formed."""
    missing = [k for k in KEYS if k not in episode]
    if missing:
        return f"missing keys {missing}"
    scalars = [k for k in KEYS if np.ndim(episode[k]) == 0]
    if scalars:
        return f"keys {scalars} hold a single value, not one per step"
    lengths = {k: len(episode[k]) for k in KEYS}
    if len(set(lengths.values())) != 1:
        return f"keys have different lengths {lengths}"
    if lengths["obs"] < 2:
        return "fewer than 2 steps"
    if not episode["is_first"][0] or episode["is_first"][1:].any():
        return "is_first must be true at step 0 only"
    return None
