"""Diagnose a Dreamer run's actor and reward head on its own replayed episodes.

    python benchmarks/actor_diagnostics.py RUN_DIR [--every 4] [--out FILE.json]

For every ``--every``-th episode on disk it replays the observations through the checkpoint's world
model (posterior states) and prints: the actor's mean absolute pre-tanh mean (``mean_scale`` is its
ceiling) and std at those states, the share of executed actions at |a| > 0.99, and the episode's real
reward against the sum the reward head predicts. A collapsed actor shows a pre-tanh mean near
``mean_scale`` and a std near ``min_std``: its actions sit at +-1, where tanh passes no gradient back.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_json

from collodreamer.agents.dreamer import DreamerAgent
from collodreamer.config import ConfigError
from collodreamer.models import to_torch
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


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--every", type=int, default=4, help="diagnose every k-th episode")
    parser.add_argument("--out", type=Path, help="JSON file (default: RUN_DIR/actor_diagnostics.json)")
    args = parser.parse_args()
    torch.manual_seed(0)
    config, agent, counters = load_agent(args.run_dir)
    if config.agent != "dreamer":
        raise ConfigError(f"{args.run_dir} is a {config.agent} run; the diagnostics need a dreamer run")
    rows = {}
    header = ("|pre-tanh mean|", "std", "|a|>0.99", "reward", "predicted")
    print(f"{'episode':<22} {header[0]:>15} {header[1]:>7} {header[2]:>9} {header[3]:>7} {header[4]:>9}")
    for path in sorted((args.run_dir / "episodes").glob("*.npz"))[:: args.every]:
        with np.load(path) as data:
            row = diagnose(agent, dict(data))
        rows[path.name] = row
        print(
            f"{path.name:<22} {row['pre_tanh_abs_mean']:>15.2f} {row['std']:>7.3f} "
            f"{row['saturated_actions']:>9.2f} {row['reward']:>7.1f} {row['predicted_reward']:>9.1f}"
        )
    write_json(
        args.out or args.run_dir / "actor_diagnostics.json",
        {
            "benchmark": "actor_diagnostics",
            "run_dir": str(args.run_dir),
            "env_frames": counters["env_frames"],
            "mean_scale": config.actor.mean_scale,
            "min_std": config.actor.min_std,
            "episodes": rows,
        },
    )


if __name__ == "__main__":
    main()
