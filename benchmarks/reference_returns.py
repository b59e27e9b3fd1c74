"""Reference test returns of a task without learning: uniform random actions and zero actions, on the
test environments `train` makes (``collodreamer.seeds``: the test stream). A learned agent's test return
means something only above these levels.

python benchmarks/reference_returns.py --task dmc:reacher_easy --seeds 100 101 [--episodes 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import returns_summary, write_json

from collodreamer.agents.random_agent import RandomAgent
from collodreamer.config import EnvConfig
from collodreamer.envs import make_env
from collodreamer.seeds import env_seed
from collodreamer.training.loop import evaluate


class ZeroAgent:
    """Always the zero action: the arm or body left to the task's own dynamics."""

    def __init__(self, action_dim: int) -> None:
        self.action = np.zeros(action_dim, np.float32)

    def act(self, obs: np.ndarray, state: Any, training: bool, reward: float = 0.0) -> tuple[np.ndarray, Any]:
        return self.action, state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", default="dmc:reacher_easy")
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    parser.add_argument("--episodes", type=int, default=30, help="test episodes per seed and policy")
    parser.add_argument("--out", default=None, help="JSON (default results/reference_returns_<task>.json)")
    args = parser.parse_args()
    config = EnvConfig(task=args.task, obs="state")  # the reward does not depend on what the agent sees
    rows = []
    print(f"{'policy':8s} {'seed':>5s} {'mean':>7s} {'95% CI':>16s}")
    for policy in ("random", "zero"):
        for seed in args.seeds:
            env = make_env(config, env_seed(seed, "test"))
            agent = RandomAgent(env.spec, seed) if policy == "random" else ZeroAgent(env.spec.action_dim)
            returns, _ = evaluate(agent, env, args.episodes)
            row = {"policy": policy, "seed": seed, **returns_summary(returns)}
            print(f"{policy:8s} {seed:5d} {row['mean']:7.1f} [{row['ci'][0]:6.1f}, {row['ci'][1]:6.1f}]")
            rows.append(row)
    pooled = {
        p: float(np.mean([r for row in rows if row["policy"] == p for r in row["returns"]]))
        for p in ("random", "zero")
    }
    print("pooled over seeds:", ", ".join(f"{p} {v:.1f}" for p, v in pooled.items()))
    name = args.task.split(":", 1)[-1]
    out = args.out or f"results/reference_returns_{name}.json"
    write_json(out, {"task": args.task, "episodes": args.episodes, "rows": rows, "pooled": pooled})


if __name__ == "__main__":
    main()
