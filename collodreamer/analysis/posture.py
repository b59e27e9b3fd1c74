"""How a trained run's agent holds the body, beside random actions from the same start states
(``collodreamer diagnose posture RUN_DIR``).

dm_control's quadruped, walker and humanoid expose the torso's uprightness: the z component of its
z axis, 1 standing, -1 on its back. Quadruped episodes start at a uniformly random orientation, and
its walk and run rewards are scaled by uprightness, so a body on its back earns almost nothing. For
each of ``episodes`` fresh test episodes (the eval stream of :mod:`collodreamer.seeds`), played once
by the agent and once by uniform random actions from the same start, this records the return, the
uprightness at the start, at the end and on average, the share of agent steps upright (> 0), and the
first agent step at which the body turned over (from > 0 to <= 0) or was righted (from <= 0 to > 0).
Over the episodes it counts the standing starts (uprightness above :data:`STANDING`) that were turned
over, and the other starts that ended upright.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from collodreamer.agents import Agent
from collodreamer.agents.random_agent import RandomAgent
from collodreamer.config import ConfigError
from collodreamer.envs import make_env
from collodreamer.envs.dmc import DMCEnv
from collodreamer.seeds import env_seed
from collodreamer.training import load_agent
from collodreamer.training.checkpoint import seed_everything
from collodreamer.training.evaluation import check_action

STANDING = 0.5  # a start this upright stays on its feet under random actions; a less upright one may fall


def posture_summary(upright: np.ndarray, total: float) -> dict[str, Any]:
    """An episode's posture from its uprightness at the start and after each agent step
    (``[steps + 1]``) and its return."""
    up = upright > 0
    turned = np.flatnonzero(up[:-1] & ~up[1:])
    righted = np.flatnonzero(~up[:-1] & up[1:])
    return {
        "return": float(total),
        "upright_start": float(upright[0]),
        "upright_end": float(upright[-1]),
        "upright_mean": float(upright[1:].mean()),
        "upright_share": float(up[1:].mean()),
        "turned_over_at": int(turned[0]) + 1 if turned.size else None,
        "righted_at": int(righted[0]) + 1 if righted.size else None,
    }


def posture_episode(policy: Agent, env: DMCEnv) -> dict[str, Any]:
    """One test episode of ``policy`` (no exploration noise) and its :func:`posture_summary`."""
    (obs, _), state, done, total, reward = env.reset(), None, False, 0.0, 0.0
    upright = [env.upright()]
    while not done:
        action, state = policy.act(obs, state, training=False, reward=reward)
        obs, reward, terminated, truncated, _ = env.step(check_action(action))
        done, total = terminated or truncated, total + reward
        upright.append(env.upright())
    return posture_summary(np.asarray(upright), total)


def overview(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean return and how episodes that started standing (or not) ended up, over ``rows``."""
    standing = [row for row in rows if row["upright_start"] > STANDING]
    others = [row for row in rows if row["upright_start"] <= STANDING]
    return {
        "mean_return": float(np.mean([row["return"] for row in rows])),
        "upright_share": float(np.mean([row["upright_share"] for row in rows])),
        "standing_starts": len(standing),
        "of_those_turned_over": sum(row["turned_over_at"] is not None for row in standing),
        "other_starts": len(others),
        "of_those_ending_upright": sum(row["upright_end"] > 0 for row in others),
    }


def diagnose_posture(run_dir: Path, episodes: int = 10) -> dict[str, Any]:
    """The posture of the run's agent and of random actions on the same ``episodes`` test starts."""
    if episodes < 1:
        raise ConfigError(f"--episodes must be at least 1, got {episodes}")
    config, agent, counters = load_agent(run_dir)
    seed_everything(config.seed, config.run.threads)
    result: dict[str, Any] = {"run_dir": str(run_dir), "env_frames": counters["env_frames"]}
    for name in ("agent", "random"):
        env = make_env(config.env, env_seed(config.seed, "eval"))  # the same starts for both
        try:
            if not isinstance(env, DMCEnv) or not env.has_torso():
                raise ConfigError(
                    f"{config.env.task} has no torso uprightness (quadruped, walker, humanoid do)"
                )
            policy = agent if name == "agent" else RandomAgent(env.spec, config.seed)
            rows = [posture_episode(policy, env) for _ in range(episodes)]
        finally:
            env.close()
        result[name] = {**overview(rows), "episodes": rows}
    return result
