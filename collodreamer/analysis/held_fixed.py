"""A trained run's world model and replay, held fixed: what the screens and the value diagnostics share.

The world model's weights come from ``RUN_DIR/checkpoint.pt`` (any agent's run); the replay is the
run's own episodes, filtered once by that model into posterior states, so that value learning on it
costs only the value network's own steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collodreamer.agents import ModelBased, make_agent
from collodreamer.config import ConfigError, make_config
from collodreamer.data import EpisodeStore
from collodreamer.models import State, to_torch
from collodreamer.rundir import RunDir
from collodreamer.schema import Config
from collodreamer.training import load_checkpoint, saved_spec
from collodreamer.training.checkpoint import restoring, saved_config


@dataclass
class Replay:
    """Every replay episode filtered by the held-fixed model: posterior states ``[1, T, ...]`` with the
    episode's arrays (``reward``, ``action``, ``is_first``, ``is_terminal``) as tensors and the
    observations' embeddings (``embed``)."""

    posts: list[State]
    episodes: list[dict[str, torch.Tensor]]

    def windows(self, count: int, length: int, rng: np.random.Generator) -> tuple[dict, State]:
        """``count`` random windows of ``length`` steps inside episodes: (batch, posterior) ``[B, L]``."""
        picks = rng.integers(0, len(self.episodes), size=count)
        batches, posts = [], []
        for index in picks:
            steps = self.episodes[index]["reward"].shape[0]
            start = int(rng.integers(0, steps - length + 1))
            batches.append({k: v[start : start + length] for k, v in self.episodes[index].items()})
            posts.append({k: v[0, start : start + length] for k, v in self.posts[index].items()})
        stack = lambda items: {k: torch.stack([i[k] for i in items]) for k in items[0]}  # noqa: E731
        return stack(batches), stack(posts)


def build_agent(run_dir: Path, overrides: list[str], seed: int = 0) -> tuple[Config, Any, dict[str, Any]]:
    """An agent of ``run_dir``'s config (its checkpoint's) plus ``overrides`` (model sizes must stay as
    trained) holding the run's world model alone, and the checkpoint's payload."""
    files = RunDir(run_dir)
    payload = load_checkpoint(files.checkpoint)
    config = make_config(overrides=list(overrides), base=saved_config(files, payload))
    torch.manual_seed(seed)
    agent = make_agent(config, saved_spec(payload, config))
    if not isinstance(agent, ModelBased):
        raise ConfigError(f"{run_dir} is a {config.agent} run: it has no world model")
    with restoring(files.checkpoint):
        agent.world_model.load_training_state(payload["agent"]["world_model"])
    return config, agent, payload


@torch.no_grad()
def filter_replay(agent: Any, run_dir: Path, config: Config) -> Replay:
    """Posterior states of every episode of the run under the agent's (fixed) world model."""
    store = EpisodeStore.read(RunDir(run_dir).episodes, config.env.action_repeat)
    model = agent.world_model
    posts, episodes = [], []
    for episode in store.episodes:
        data = to_torch({k: v[None] for k, v in episode.items()}, agent.device)
        post, _ = model.observe(data)
        posts.append(post)
        episode = {k: v[0] for k, v in data.items() if k != "obs"}
        episodes.append({**episode, "embed": model.encode(data["obs"])[0]})
    return Replay(posts, episodes)
