"""Milliseconds per planning call and per env step of the collocation planner, both primal steps,
on a world model of the paper's size (median of several runs).

    python benchmarks/planning.py [--horizon 30] [--iterations 100] [--batches 1 8] [--repeats 5]

Per env step = per call / replan_every (the planner runs once every 15 agent steps). The world model
is freshly initialised: the cost of a call does not depend on what the model has learned.

    python benchmarks/planning.py --warm-start RUN_DIR [--train-plans 40] [--test-plans 10]

compares random initialisation with the amortised policy's warm start on the trained world model of
RUN_DIR (any agent's run): the policy is first trained by behaviour cloning on plans from real
posterior states of the run's replay, then both initialisations plan from held-out states with early
stopping (planner.tolerance), and the iterations, milliseconds and returns are reported.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import torch
from common import median_ms, write_json

from collodreamer.agents import LatCoAgent, resolve_device
from collodreamer.config import load_config, make_config
from collodreamer.data import EpisodeStore
from collodreamer.envs import make_env
from collodreamer.models import frozen, to_torch
from collodreamer.planning import collocate
from collodreamer.rundir import RunDir
from collodreamer.schema import PlannerConfig
from collodreamer.training import load_checkpoint


def start_features(agent: LatCoAgent, run_dir: Path, count: int, seed: int) -> torch.Tensor:
    """Posterior features of real observations from the run's replay episodes."""
    store = EpisodeStore.read(RunDir(run_dir).episodes, agent.config.env.action_repeat, seed)
    batch = to_torch(store.sample(count, 20), agent.device)
    with torch.no_grad():
        post, _ = agent.world_model.observe(batch)
    return agent.world_model.rssm.feature({k: v[:, -1] for k, v in post.items()})


def warm_start(args: argparse.Namespace) -> None:
    run_dir = Path(args.warm_start)
    base = load_config(RunDir(run_dir).config)
    config = make_config(
        overrides=[
            "agent=latco",
            "planner.init=policy",
            f"planner.tolerance={args.tolerance}",
            f"planner.iterations={args.iterations}",
            *args.overrides,
        ],
        base=base,
    )
    env = make_env(config.env, 0)
    agent = LatCoAgent(config, env.spec, torch.device("cpu"))
    agent.world_model.load_training_state(load_checkpoint(RunDir(run_dir).checkpoint)["agent"]["world_model"])
    torch.manual_seed(0)
    train, test = (
        start_features(agent, run_dir, args.train_plans, 0),
        start_features(agent, run_dir, args.test_plans, 1),
    )
    for feature in train:
        agent.plan(feature[None], None, training=True)  # each plan also trains the policy
    agent.metrics()
    rows = {}
    for init in ("random", "policy"):
        agent.config = make_config(overrides=[f"planner.init={init}"], base=config)
        for feature in test:
            agent.plan(feature[None], None, training=False)
        metrics = agent.metrics()
        rows[init] = {
            key.split("/", 1)[1]: metrics[key]
            for key in (
                "plan/iterations",
                "plan/ms",
                "plan/planned_return",
                "plan/rollout_return",
                "plan/dynamics_violation",
            )
        }
        row = rows[init]
        print(
            f"init={init:7s} iterations {row['iterations']:6.1f}  ms/plan {row['ms']:8.1f}  planned return "
            f"{row['planned_return']:7.2f}  rollout return {row['rollout_return']:7.2f}  dynamics violation "
            f"{row['dynamics_violation']:.4f}"
        )
    write_json(
        Path(args.out),
        {
            "benchmark": "planning_warm_start",
            "run": str(run_dir),
            "tolerance": args.tolerance,
            "max_iterations": args.iterations,
            "train_plans": args.train_plans,
            "test_plans": args.test_plans,
            "primal": config.planner.primal,
            "feature_dim": agent.world_model.feature_dim,
            "rows": rows,
        },
    )


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
    parser.add_argument(
        "--out", help="JSON path (default results/benchmarks/planning.json, or planning_warm_start.json)"
    )
    parser.add_argument("--warm-start", metavar="RUN_DIR", help="compare random and policy initialisation")
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--train-plans", type=int, default=40)
    parser.add_argument("--test-plans", type=int, default=10)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. model.latent=categorical")
    args = parser.parse_args()
    name = "planning_warm_start" if args.warm_start else "planning"
    args.out = args.out or f"results/benchmarks/{name}.json"
    if args.warm_start:
        warm_start(args)
        return
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
                    f"planner.replan_every={min(args.horizon, PlannerConfig.replan_every)}",
                    f"planner.iterations={args.iterations}",
                    f"planner.primal={primal}",
                    *args.overrides,
                ],
            )
            env = make_env(config.env, 0)
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
                    "action_dim": env.spec.action_dim,
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
