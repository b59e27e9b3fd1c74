"""Milliseconds per world-model gradient step and per actor-critic step (Dreamer), for pixels and
states at batch 16x50 and 50x50, with the paper's network sizes (median of several runs). With more
than one ``--precisions`` the settings' steps alternate in one process (same batch), so that load
from other processes falls on each alike.

    python benchmarks/train_step.py [--repeats 5] [--device auto] [--out results/benchmarks/train_step.json]
    python benchmarks/train_step.py --presets cpu cpu+pixels_cpu --obs pixels --batches 16
    python benchmarks/train_step.py --presets cpu+pixels_cpu paper --obs pixels --batches 16 \
        --precisions float32 auto --repeats 7 --out results/benchmarks/precision/train_step.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import interleaved_ms, write_json

from collodreamer.agents import DreamerAgent, resolve_device
from collodreamer.config import make_config
from collodreamer.envs import Env, make_env
from collodreamer.models import flatten, to_torch


def random_batch(env: Env, batch: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    obs_shape = env.observation_space.shape
    if env.observation_space.dtype == np.uint8:
        obs = rng.integers(0, 256, (batch, length, *obs_shape), dtype=np.uint8)
    else:
        obs = rng.standard_normal((batch, length, *obs_shape)).astype(np.float32)
    is_first = np.zeros((batch, length), bool)
    is_first[:, 0] = True
    return {
        "obs": obs,
        "action": rng.uniform(-1, 1, (batch, length, *env.action_space.shape)).astype(np.float32),
        "reward": rng.random((batch, length)).astype(np.float32),
        "is_first": is_first,
        "is_terminal": np.zeros((batch, length), bool),
    }


def measure(
    preset: str,
    obs: str,
    batch_size: int,
    args: argparse.Namespace,
    device: torch.device,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """One row per precision: Dreamer's updates on one random batch, the precisions' steps alternating."""
    agents, model_steps, behaviour_steps = {}, {}, {}
    for precision in args.precisions:
        overrides = [f"env.task={args.task}", f"env.obs={obs}", f"replay.batch_size={batch_size}"]
        config = make_config(
            preset.split("+"),
            ["agent=dreamer", *overrides, f"model.precision={precision}", f"device={device}"],
        )
        env = make_env(config.env, 0)
        if not agents:
            batch = to_torch(random_batch(env, batch_size, config.replay.batch_length, rng), device)
        agent = agents[precision] = DreamerAgent(config, env.spec, device)
        env.close()
        post, _ = agent.world_model.train_step(batch)
        model_steps[precision] = partial(agent.world_model.train_step, batch)
        behaviour_steps[precision] = partial(agent.behaviour.train, post)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    model_ms, model_cpu_ms = interleaved_ms(model_steps, args.repeats, sync=sync)
    behaviour_ms, behaviour_cpu_ms = interleaved_ms(behaviour_steps, args.repeats, sync=sync)
    starts = flatten(post)["deter"].shape[0]
    return [
        {
            "preset": preset,
            "obs": obs,
            "batch": f"{batch_size}x{config.replay.batch_length}",
            "precision": precision,
            "bfloat16": agent.world_model.bfloat16,
            "world_model_ms": statistics.median(model_ms[precision]),
            "actor_critic_ms": statistics.median(behaviour_ms[precision]),
            "world_model_cpu_ms": statistics.median(model_cpu_ms[precision]),
            "actor_critic_cpu_ms": statistics.median(behaviour_cpu_ms[precision]),
            "world_model_runs_ms": model_ms[precision],
            "world_model_runs_cpu_ms": model_cpu_ms[precision],
            "actor_critic_runs_ms": behaviour_ms[precision],
            "actor_critic_runs_cpu_ms": behaviour_cpu_ms[precision],
            "imagination_starts": min(config.actor.starts or starts, starts),
        }
        for precision, agent in agents.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--task", default="dmc:cheetah_run")
    parser.add_argument("--batches", nargs="*", type=int, default=[16, 50])
    parser.add_argument(
        "--presets", nargs="*", default=["paper"], help="config presets (e.g. paper cpu); a+b layers b on a"
    )
    parser.add_argument("--obs", nargs="*", default=["state", "pixels"], choices=["state", "pixels"])
    parser.add_argument("--precisions", nargs="*", default=["auto"], choices=["float32", "bfloat16", "auto"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default="results/benchmarks/train_step.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rng = np.random.default_rng(0)
    rows = []
    print(f"device: {device}, {args.threads} torch thread(s)")
    header = ("preset", "obs", "batch", "precision", "world model ms (CPU)", "actor-critic ms (CPU)")
    print("{:16s} {:6s} {:>7s} {:>9s} {:>22s} {:>22s}".format(*header))
    for preset in args.presets:
        for obs in args.obs:
            for batch_size in args.batches:
                for row in measure(preset, obs, batch_size, args, device, rng):
                    rows.append(row)
                    model = f"{row['world_model_ms']:.0f} ({row['world_model_cpu_ms']:.0f})"
                    behaviour = f"{row['actor_critic_ms']:.0f} ({row['actor_critic_cpu_ms']:.0f})"
                    print(
                        f"{preset:16s} {obs:6s} {row['batch']:>7s} {row['precision']:>9s} "
                        f"{model:>22s} {behaviour:>22s}"
                    )
    command = " ".join(["python", *sys.argv])
    write_json(
        Path(args.out),
        {
            "benchmark": "train_step",
            "device": str(device),
            "repeats": args.repeats,
            "command": command,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
