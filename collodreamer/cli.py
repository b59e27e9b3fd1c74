"""The ``collodreamer`` command: train, eval, sweep, plot, report, config, tasks."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from collodreamer.config import ConfigError, make_config, run_name
from collodreamer.data import ReplayError
from collodreamer.rundir import RunDir
from collodreamer.training import CheckpointError, DivergenceError, Interrupted


class SweepFailure(RuntimeError):
    """Some runs of a sweep failed (the others ran to their end)."""


EXAMPLES = """examples:
  collodreamer train --task dmc:reacher_easy --obs state --preset cpu
  collodreamer train --preset paper --task dmc:cheetah_run run.steps=100000 model.deter=300
  collodreamer train --resume runs/collodreamer-reacher_easy-state-s0-20261130-101500
"""


CHECKPOINT_HELP = (
    "a kept checkpoint (run.keep_checkpoints), e.g. checkpoints/checkpoint-00020000.pt, as a path or "
    "under RUN_DIR (default: RUN_DIR/checkpoint.pt, the latest)"
)


def _train(args: argparse.Namespace) -> None:
    from collodreamer.analysis.report import TestReport
    from collodreamer.training import resume, train

    reporter = TestReport()  # drawn only where run.report asks
    if args.resume:
        if args.preset or args.agent or args.task or args.obs:
            raise ConfigError("--resume takes the run's saved config; change it with key=value only")
        args.run_dir = args.resume
        result = resume(Path(args.resume), args.overrides, args.without_missing_episodes, reporter)
        print(f"run {args.resume}: {result['env_frames']} env frames, {result['updates']} updates")
        return
    if args.without_missing_episodes:
        raise ConfigError("--without-missing-episodes goes with --resume RUN_DIR")
    # --agent, --task, --obs and --video are short for these overrides
    flag_overrides = [
        f"{key}={value}"
        for key, value in (("agent", args.agent), ("env.task", args.task), ("env.obs", args.obs))
        if value
    ]
    if args.video:
        flag_overrides.append("run.video=true")
    config = make_config(args.preset, flag_overrides + args.overrides)
    if args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        run_dir = Path(args.logdir) / run_name(config, stamp=time.strftime("%Y%m%d-%H%M%S"))
    args.run_dir = str(run_dir)  # for the hint after a Ctrl-C
    print(f"run directory: {run_dir}")
    result = train(config, run_dir, reporter)
    print(f"run {run_dir}: {result['env_frames']} env frames, {result['updates']} updates")


def _eval(args: argparse.Namespace) -> None:
    from collodreamer.experiments import evaluate_runs
    from collodreamer.training import evaluate_run

    if args.episodes < 1:
        raise ConfigError(f"--episodes must be at least 1, got {args.episodes}")
    if len(args.runs) == 1 and RunDir(args.runs[0]).is_run():
        video = Path(args.video) if args.video else None
        checkpoint = Path(args.checkpoint) if args.checkpoint else None
        returns = evaluate_run(Path(args.runs[0]), args.episodes, video, checkpoint, args.policy)
        print(
            f"test return over {len(returns)} episodes: {np.mean(returns):.1f} +- "
            f"{np.std(returns):.1f}  (returns: {', '.join(f'{r:.1f}' for r in returns)})"
        )
        if video:
            print(f"video: {video}")
        return
    if args.video or args.checkpoint:
        raise ConfigError("--video and --checkpoint test one run: name one RUN_DIR")
    result = evaluate_runs([Path(p) for p in args.runs], args.episodes, args.workers, args.policy)
    print(f"{'run':50s} {'mean':>7s} {'95% CI':>16s}")
    for row in result["runs"]:
        print(f"{row['run']:50s} {row['mean']:7.1f} [{row['ci'][0]:6.1f}, {row['ci'][1]:6.1f}]")
    print(f"\n{'agent, task, obs':50s} {'mean':>7s} {'95% CI':>16s}  seeds")
    for name, group in result["groups"].items():
        low, high = group["ci"]
        print(f"{name:50s} {group['mean']:7.1f} [{low:6.1f}, {high:6.1f}]  {' '.join(group['seeds'])}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


def _sweep(args: argparse.Namespace) -> None:
    from collodreamer.experiments import (
        expand,
        load_spec,
        make_figures,
        run_sweep,
        runs_to_train,
        shared_sources,
    )

    spec = load_spec(Path(args.spec))
    sweep = expand(spec)
    root = Path(args.root or Path("runs") / "sweeps" / sweep.name)
    share_from = [Path(folder) for folder in args.share_from or [root.parent] if folder != "none"]
    if args.dry_run:
        shared = shared_sources(sweep.runs, root, share_from)
        for run in sweep.runs:
            extra = " ".join(run.overrides)
            line = f"{run.name}: {run.steps} env frames, presets {' '.join(run.presets)}, overrides {extra}"
            print(line + (f"; the same configuration as {shared[run.name]}" if run.name in shared else ""))
        todo = runs_to_train(sweep.runs, root, shared)
        print(f"{len(sweep.runs)} runs under {root}, {len(todo)} to train (the rest shared or finished)")
        return
    outcomes = run_sweep(sweep, root, args.backend, args.workers, args.address, args.gpus_per_run, share_from)
    for name, outcome in outcomes.items():
        print(f"{name}: {outcome}")
    metrics = [plot["metric"] for plot in sweep.plots] or ["test/return"]
    for path in make_figures([root], metrics, root, sweep.name, sweep.baseline):
        print(f"wrote {path}")
    failed = [name for name, outcome in outcomes.items() if outcome.startswith("failed")]
    if failed:
        raise SweepFailure(f"{len(failed)} of {len(outcomes)} runs failed: {', '.join(failed)}")


def _plot(args: argparse.Namespace) -> None:
    from collodreamer.experiments import keep_records, make_figures

    paths = [Path(p) for p in args.paths]
    for path in make_figures(paths, args.metric, Path(args.out), args.name, args.baseline):
        print(f"wrote {path}")
    if args.keep_runs:
        kept = keep_records(paths, Path(args.out) / "runs")
        print(f"kept {len(kept)} finished runs in {Path(args.out) / 'runs'}")


def _report(args: argparse.Namespace) -> None:
    from collodreamer.analysis.report import write_report

    out = Path(args.out or RunDir(args.run_dir).report)
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    for path in write_report(Path(args.run_dir), out, args.episodes, args.plans, checkpoint):
        print(f"wrote {path}")


def _screen(args: argparse.Namespace) -> None:
    from collodreamer.analysis.screen import load_screen, screen, screen_report

    spec, out = load_screen(args.spec), Path(args.out)
    if not args.report:
        screen(Path(args.run_dir), spec, out, args.episodes, args.only, args.overrides)
    print(screen_report(spec, out))


def _diagnose(args: argparse.Namespace) -> None:
    from collodreamer.analysis.actor import diagnose_actor
    from collodreamer.analysis.posture import diagnose_posture
    from collodreamer.analysis.probe import diagnose_latent
    from collodreamer.analysis.value import diagnose_value
    from collodreamer.files import write_json
    from collodreamer.timing import machine

    run_dir = Path(args.run_dir)
    if args.checkpoint and args.what != "latent":
        raise ConfigError("--checkpoint: only diagnose latent reads a kept checkpoint")
    if args.probe != "linear" and args.what != "latent":
        raise ConfigError("--probe: only diagnose latent probes the latent")
    if args.what == "posture":
        result = diagnose_posture(run_dir, args.episodes)
    elif args.what == "latent":
        checkpoint = Path(args.checkpoint) if args.checkpoint else None
        result = diagnose_latent(run_dir, args.episodes, checkpoint=checkpoint, probe=args.probe)
    else:
        result = diagnose_value(run_dir) if args.what == "value" else diagnose_actor(run_dir)
    out = Path(args.out or run_dir / f"{args.what}_diagnostics.json")
    write_json(out, {"machine": machine(), **result})
    print(json.dumps(without_episodes(result), indent=2))
    print(f"wrote {out}")


def without_episodes(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` without its per-episode rows, at any depth: what a terminal shows."""
    return {
        k: without_episodes(v) if isinstance(v, dict) else v for k, v in result.items() if k != "episodes"
    }


def _config(args: argparse.Namespace) -> None:
    import yaml

    from collodreamer.config import config_sources, field_help, flatten, to_dict

    overrides = ([f"agent={args.agent}"] if args.agent else []) + args.overrides
    config = make_config(args.preset, overrides)
    if args.yaml:
        print(yaml.safe_dump(to_dict(config), sort_keys=False), end="")
        return
    sources, described = config_sources(args.preset, overrides), field_help()
    rows = [
        (key, described[key][0], str(value), sources[key], described[key][1])
        for key, value in flatten(to_dict(config)).items()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4]
        )


def _tasks(args: argparse.Namespace) -> None:
    from collodreamer.envs import list_tasks

    print("\n".join(list_tasks()))
    print(
        "and any Gymnasium environment with continuous (Box) actions as gym:<id>, e.g. gym:Pendulum-v1, "
        "gym:MountainCarContinuous-v0",
        file=sys.stderr,
    )


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
    train.add_argument("--task", help="task, e.g. dmc:cheetah_run or gym:Pendulum-v1 (env.task=...)")
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
        "--without-missing-episodes",
        action="store_true",
        help="with --resume: go on from the checkpoint though some of its episode files are missing",
    )
    train.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. run.steps=10000 replay.batch_size=16",
    )
    train.set_defaults(func=_train)

    evaluate = commands.add_parser(
        "eval", help="test trained runs' checkpoints (or reference policies) on fresh episodes"
    )
    evaluate.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="run directories, or folders of them (a sweep's)"
    )
    evaluate.add_argument("--episodes", type=int, default=5, help="fresh test episodes per run")
    evaluate.add_argument("--workers", type=int, default=1, help="runs tested at once (one core each)")
    evaluate.add_argument(
        "--policy",
        choices=["agent", "random", "zero"],
        default="agent",
        help="the run's agent, or random or zero actions on its task (the levels without learning)",
    )
    evaluate.add_argument("--out", metavar="FILE.json", help="write the returns and intervals")
    evaluate.add_argument("--video", metavar="FILE.mp4", help="film the first test episode (one run)")
    evaluate.add_argument("--checkpoint", metavar="PATH", help=CHECKPOINT_HELP)
    evaluate.set_defaults(func=_eval)

    sweep = commands.add_parser("sweep", help="run a sweep (configs x seeds), locally or on Ray")
    sweep.add_argument("spec", metavar="SPEC.yaml", help="a spec file, or a name from configs/experiments/")
    sweep.add_argument("--backend", choices=["local", "ray"], default="local")
    sweep.add_argument("--address", help="Ray cluster to join, e.g. auto (default: start a local one)")
    sweep.add_argument("--workers", type=int, help="runs at once on the local backend (default: CPU count)")
    sweep.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs each run asks Ray for")
    sweep.add_argument("--root", help="folder of the sweep's runs (default: runs/sweeps/NAME)")
    sweep.add_argument(
        "--share-from",
        metavar="DIR",
        action="append",
        help="reuse finished runs and kept records (plot --keep-runs) under DIR whose resolved config is "
        "a run's own, instead of training it again (repeatable; default: the folder of the sweep's root, "
        "e.g. runs/sweeps; none: never)",
    )
    sweep.add_argument("--dry-run", action="store_true", help="list the runs and stop")
    sweep.set_defaults(func=_sweep)

    plot = commands.add_parser("plot", help="figures and a results table from run directories")
    plot.add_argument("paths", nargs="+", metavar="RUN_DIR", help="runs, or folders of runs (e.g. a sweep)")
    plot.add_argument("--metric", action="append", help="metric to plot (repeatable; default test/return)")
    plot.add_argument("--out", default="results/plots")
    plot.add_argument("--name", default="runs", help="file name prefix")
    plot.add_argument("--baseline", help="a line (variant or agent): the others' paired differences to it")
    plot.add_argument(
        "--keep-runs",
        action="store_true",
        help="also copy each finished run's config, metrics and report pictures to OUT/runs: records a "
        "sweep on another machine reuses with --share-from OUT",
    )
    plot.set_defaults(func=_plot)

    report = commands.add_parser(
        "report", help="open-loop predictions and plans of a trained run, beside what really happened"
    )
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--episodes", type=int, default=2, help="replayed episodes to predict")
    report.add_argument("--plans", type=int, default=1, help="plans to trace (planning agents)")
    report.add_argument("--out", help="folder for the pictures (default RUN_DIR/report)")
    report.add_argument("--checkpoint", metavar="PATH", help=CHECKPOINT_HELP)
    report.set_defaults(func=_report)

    screening = commands.add_parser(
        "screen",
        help="score planner and value variants on a trained run's world model held fixed",
        description="Each variant of SPEC (key=value overrides of RUN_DIR's config) first learns what it "
        "learns besides the world model on the run's replay, then is tested in the real environment from "
        "the same start states; results go to OUT/<variant>.json, and OUT/screen.md tabulates them.",
    )
    screening.add_argument("run_dir", metavar="RUN_DIR", help="a trained run: its world model and replay")
    screening.add_argument("spec", metavar="SPEC", help="a spec file, or a name from configs/screens/")
    screening.add_argument("--out", required=True, help="folder of the per-variant results")
    screening.add_argument("--episodes", type=int, default=10, help="test episodes per variant")
    screening.add_argument("--only", nargs="*", help="screen only these variants")
    screening.add_argument("--report", action="store_true", help="tabulate the results present and stop")
    screening.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every variant first")
    screening.set_defaults(func=_screen)

    diagnose = commands.add_parser(
        "diagnose",
        help="how a trained run's value (collodreamer) or actor (dreamer) does on its replay, how "
        "its agent holds the body (posture: quadruped, walker, humanoid) beside random actions, or what "
        "its latent knows of the true state, filtered and imagined (latent: a linear or MLP probe's R^2)",
    )
    diagnose.add_argument("what", choices=["value", "actor", "posture", "latent"])
    diagnose.add_argument("run_dir", metavar="RUN_DIR")
    diagnose.add_argument("--out", metavar="FILE.json", help="default RUN_DIR/<what>_diagnostics.json")
    diagnose.add_argument(
        "--episodes",
        type=int,
        default=10,
        help="posture: fresh test episodes per policy; latent: in all (30 or more from pixels)",
    )
    diagnose.add_argument("--checkpoint", metavar="PATH", help=f"latent: {CHECKPOINT_HELP}")
    diagnose.add_argument(
        "--probe",
        default="linear",
        help="latent: linear (ridge) or mlp (two hidden layers, for what the features hold nonlinearly)",
    )
    diagnose.set_defaults(func=_diagnose)

    settings = commands.add_parser(
        "config",
        help="list every setting: type, value, where it comes from, what it does",
        description="Every setting after layering (defaults, the agent's defaults, presets, overrides): "
        "its type, value, source and documentation. --yaml prints the resolved config, to reuse as a preset.",
    )
    settings.add_argument("--agent", help="agent whose defaults to layer (same as agent=...)")
    settings.add_argument("--preset", action="append", default=[], help="YAML preset; repeat to layer them")
    settings.add_argument("--yaml", action="store_true", help="print the resolved config as YAML")
    settings.add_argument("overrides", nargs="*", metavar="key=value")
    settings.set_defaults(func=_config)

    tasks = commands.add_parser("tasks", help="list the dm_control tasks (Gymnasium ones: gym:<id>)")
    tasks.set_defaults(func=_tasks)
    return parser


def terminated(signum: int, frame: FrameType | None) -> None:
    """SIGTERM as Ctrl-C (the training loop takes both over while it runs): one line and exit 143, not
    a silent -15."""
    raise KeyboardInterrupt(signum)


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminated)
        # Ctrl-C as Ctrl-C also where a non-interactive shell started us in the background with SIGINT
        # ignored (a sweep would otherwise not stop on it).
        signal.signal(signal.SIGINT, signal.default_int_handler)
    args = build_parser().parse_args(argv)
    if args.command == "plot" and not args.metric:
        args.metric = ["test/return"]
    # force: importing dm_control has already given the root logger a WARNING-level handler
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s", force=True
    )
    try:
        args.func(args)
    except (ConfigError, CheckpointError, DivergenceError, ReplayError, SweepFailure) as error:
        print(f"collodreamer: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk, a read-only run directory
        where = f": {error.filename}" if error.filename else ""
        print(f"collodreamer: error: {error.strerror or error}{where}", file=sys.stderr)
        return 2
    except Interrupted as stop:
        print(f"collodreamer: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt as stop:  # a second signal, or one before the run started
        signum = stop.args[0] if stop.args else signal.SIGINT
        run_dir = args.run_dir if args.command == "train" else None
        resumable = run_dir is not None and RunDir(run_dir).is_run()
        hint = f"; continue with: collodreamer train --resume {run_dir}" if resumable else ""
        print(f"collodreamer: stopped by {signal.Signals(signum).name}{hint}", file=sys.stderr)
        return 128 + signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
