"""Milliseconds per planning call and per env step of the collocation planner, both primal steps,
on a world model of the paper's size (median of several runs).

    python benchmarks/planning.py [--horizon 30] [--iterations 100] [--batches 1 8] [--repeats 5]

Per env step = per call / replan_every (the planner runs once every 15 agent steps). The world model
is freshly initialised: the cost of a call does not depend on what the model has learned.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import median_ms, write_json

from collodreamer.agents import resolve_device
from collodreamer.agents.latco import LatCoAgent
from collodreamer.config import make_config
from collodreamer.envs import DMCEnv
from collodreamer.models.networks import frozen
from collodreamer.planning import collocate


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", default="dmc:cheetah_run")
    parser.add_argument("--horizon", type=int, default=30)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 8])
    parser.add_argument("--primals", nargs="*", default=["gauss_newton", "adam"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="results/benchmarks/planning.json")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. model.latent=categorical")
    args = parser.parse_args()
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    rows = []
    print(f"device: {device}")
    print(f"{'primal':13s} {'batch':>5s} {'feature':>7s} {'ms/call':>9s} {'ms/env step':>11s}")
    for primal in args.primals:
        for batch in args.batches:
            config = make_config(
                ["paper"],
                [
                    "agent=latco",
                    f"env.task={args.task}",
                    "env.obs=state",
                    f"device={device}",
                    f"planner.horizon={args.horizon}",
                    f"planner.iterations={args.iterations}",
                    f"planner.primal={primal}",
                    *args.overrides,
                ],
            )
            env = DMCEnv(config.env, 0)
            agent = LatCoAgent(config, env.spec, device)
            starts = torch.randn(batch, agent.world_model.feature_dim, device=device)
            objective = agent.objective()
            with frozen(agent.world_model):
                call_ms, runs = median_ms(
                    partial(collocate, objective, starts, config.planner), args.repeats, warmup=1, sync=sync
                )
            per_step = call_ms / config.planner.replan_every
            dim = agent.world_model.feature_dim
            rows.append(
                {
                    "primal": primal,
                    "batch": batch,
                    "feature_dim": dim,
                    "action_dim": env.action_dim,
                    "horizon": args.horizon,
                    "iterations": args.iterations,
                    "ms_per_call": call_ms,
                    "ms_per_env_step": per_step,
                    "ms_per_call_runs": runs,
                }
            )
            print(f"{primal:13s} {batch:5d} {dim:7d} {call_ms:9.1f} {per_step:11.1f}")
            env.close()
    write_json(
        Path(args.out),
        {
            "benchmark": "planning",
            "device": str(device),
            "repeats": args.repeats,
            "overrides": args.overrides,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
