"""Diagnose a Dreamer run's actor and reward head on its own replayed episodes
(``collodreamer diagnose actor RUN_DIR``).

For every ``every``-th episode on disk it replays the observations through the checkpoint's world
model (posterior states) and prints: the actor's mean absolute pre-tanh mean (``mean_scale`` is its
ceiling) and std at those states, the share of executed actions at |a| > 0.99, and the episode's real
reward against the sum the reward head predicts. A collapsed actor shows a pre-tanh mean near
``mean_scale`` and a std near ``min_std``: its actions sit at +-1, where tanh passes no gradient back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from collodreamer.agents.dreamer import DreamerAgent
from collodreamer.config import ConfigError
from collodreamer.data.replay import episode_files, readable_episodes
from collodreamer.models import to_torch
from collodreamer.rundir import RunDir
from collodreamer.training import load_agent


@torch.no_grad()
def diagnose(agent: DreamerAgent, episode: dict[str, np.ndarray]) -> dict[str, float]:
    model = agent.world_model
    batch = to_torch({key: value[None] for key, value in episode.items()}, model.device)
    post, _ = model.observe(batch)
    feature = model.rssm.feature(post)[0]
    mean, std = agent.actor.distribution(feature)
    return {
        "pre_tanh_abs_mean": mean.abs().mean().item(),
        "std": std.mean().item(),
        "saturated_actions": float((np.abs(episode["action"][1:]) > 0.99).mean()),
        "reward": float(episode["reward"].sum()),
        "predicted_reward": model.reward_of(feature).sum().item(),
    }


def diagnose_actor(run_dir: Path, every: int = 4) -> dict[str, Any]:
    """The diagnostics of every ``every``-th episode of the run, by episode file."""
    torch.manual_seed(0)
    config, agent, counters = load_agent(run_dir)
    if config.agent != "dreamer":
        raise ConfigError(f"{run_dir} is a {config.agent} run; the diagnostics need a dreamer run")
    paths = [path for _, _, path in episode_files(RunDir(run_dir).episodes)][::every]
    rows = {path.name: diagnose(agent, episode) for path, episode in readable_episodes(paths)}
    return {
        "benchmark": "actor_diagnostics",
        "run_dir": str(run_dir),
        "env_frames": counters["env_frames"],
        "mean_scale": config.actor.mean_scale,
        "min_std": config.actor.min_std,
        "episodes": rows,
    }
