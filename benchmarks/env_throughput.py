"""Env steps/s and renders/s per paper task, pixels and states (median of several runs).

python benchmarks/env_throughput.py [--repeats 5] [--steps 200] [--out results/...json]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import median_rate, write_json

from collodreamer.envs import PAPER_TASKS, Env, make_env
from collodreamer.schema import EnvConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=200, help="agent steps per timed run")
    parser.add_argument("--tasks", nargs="*", default=list(PAPER_TASKS))
    parser.add_argument("--out", default="results/benchmarks/env_throughput.json")
    args = parser.parse_args()
    rows = []
    print(f"{'task':22s} {'obs':6s} {'env frames/s':>12s} {'agent steps/s':>13s} {'renders/s':>9s}")
    for task in args.tasks:
        for obs in ("state", "pixels"):
            env = make_env(EnvConfig(task=task, obs=obs), seed=0)
            env.reset()
            rng = np.random.default_rng(0)

            def steps(env: Env = env, rng: np.random.Generator = rng) -> int:
                for _ in range(args.steps):
                    _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
                    if terminated or truncated:
                        env.reset()
                return args.steps

            def renders(env: Env = env) -> int:
                for _ in range(args.steps // 2):
                    env.render(64)
                return args.steps // 2

            step_rate, step_all = median_rate(steps, args.repeats)
            render_rate, _ = median_rate(renders, args.repeats)
            frames = step_rate * env.action_repeat
            rows.append(
                {
                    "task": task,
                    "obs": obs,
                    "agent_steps_per_s": step_rate,
                    "env_frames_per_s": frames,
                    "renders_per_s": render_rate,
                    "agent_steps_per_s_runs": step_all,
                }
            )
            print(f"{task:22s} {obs:6s} {frames:12.0f} {step_rate:13.0f} {render_rate:9.0f}")
            env.close()
    write_json(
        Path(args.out),
        {"benchmark": "env_throughput", "action_repeat": 2, "repeats": args.repeats, "rows": rows},
    )


if __name__ == "__main__":
    main()
