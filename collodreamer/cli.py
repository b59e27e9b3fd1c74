"""The ``collodreamer`` command: train, eval, tasks."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

from collodreamer.config import ConfigError, make_config
from collodreamer.data import ReplayError
from collodreamer.training import CheckpointError

EXAMPLES = """examples:
  collodreamer train --task dmc:reacher_easy --obs state --preset cpu
  collodreamer train --preset paper --task dmc:cheetah_run run.steps=100000 model.deter=300
  collodreamer train --resume runs/random-reacher_easy-state-s0
"""


def _train(args: argparse.Namespace) -> None:
    from collodreamer.training import resume, train

    if args.resume:
        if args.preset or args.agent or args.task or args.obs:
            raise ConfigError("--resume takes the run's saved config; change it with key=value only")
        result = resume(Path(args.resume), args.overrides)
        print(f"run {args.resume}: {result['env_frames']} env frames, {result['updates']} updates")
        return
    sugar = [
        f"{key}={value}"
        for key, value in (("agent", args.agent), ("env.task", args.task), ("env.obs", args.obs))
        if value
    ]
    if args.video:
        sugar.append("run.video=true")
    config = make_config(args.preset, sugar + args.overrides)
    if args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        task = config.env.task.split(":", 1)[-1]
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"{config.agent}-{task}-{config.env.obs}-s{config.seed}-{stamp}"
        run_dir = Path(args.logdir) / name
    print(f"run directory: {run_dir}")
    result = train(config, run_dir)
    print(f"run {run_dir}: {result['env_frames']} env frames, {result['updates']} updates")


def _eval(args: argparse.Namespace) -> None:
    from collodreamer.training import evaluate_run

    video = Path(args.video) if args.video else None
    returns = evaluate_run(Path(args.run_dir), args.episodes, video)
    print(
        f"test return over {len(returns)} episodes: {np.mean(returns):.1f} +- "
        f"{np.std(returns):.1f}  (returns: {', '.join(f'{r:.1f}' for r in returns)})"
    )
    if video:
        print(f"video: {video}")


def _tasks(args: argparse.Namespace) -> None:
    from collodreamer.envs import list_tasks

    print("\n".join(list_tasks()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="collodreamer",
        description="Dreamer, LatCo and ColloDreamer on the DeepMind Control "
        "Suite. Every step count is in env frames (action repeat included).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train",
        help="train an agent (or resume a run)",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--agent", help="agent to train (same as agent=...)")
    train.add_argument("--task", help="dm_control task, e.g. dmc:cheetah_run (env.task=...)")
    train.add_argument("--obs", choices=["pixels", "state"], help="observations (env.obs=...)")
    train.add_argument(
        "--preset",
        action="append",
        default=[],
        help="YAML preset from configs/ or a path; repeat to layer them",
    )
    train.add_argument("--logdir", default="runs", help="parent folder of new run directories")
    train.add_argument("--run-dir", help="exact run directory (default: under --logdir)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    train.add_argument("--video", action="store_true", help="save test episodes as mp4")
    train.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. run.steps=10000 replay.batch_size=16",
    )
    train.set_defaults(func=_train)

    evaluate = commands.add_parser("eval", help="test a trained run's checkpoint")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--episodes", type=int, default=5)
    evaluate.add_argument("--video", metavar="FILE.mp4", help="film the first test episode")
    evaluate.set_defaults(func=_eval)

    tasks = commands.add_parser("tasks", help="list the dm_control tasks")
    tasks.set_defaults(func=_tasks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    try:
        args.func(args)
    except (ConfigError, CheckpointError, ReplayError) as error:
        print(f"collodreamer: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("collodreamer: interrupted; resume with --resume RUN_DIR", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
