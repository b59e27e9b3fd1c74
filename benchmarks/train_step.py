"""Milliseconds per world-model gradient step and per actor-critic step (Dreamer), for pixels and
states at batch 16x50 and 50x50, with the paper's network sizes (median of several runs).

    python benchmarks/train_step.py [--repeats 5] [--device auto] [--out results/benchmarks/train_step.json]
    python benchmarks/train_step.py --presets cpu cpu+pixels_cpu --obs pixels --batches 16
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import median_ms, write_json

from collodreamer.agents import resolve_device
from collodreamer.agents.dreamer import DreamerAgent
from collodreamer.config import make_config
from collodreamer.envs import Env, make_env
from collodreamer.models import to_torch
from collodreamer.models.rssm import flatten


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
    parser.add_argument("--out", default="results/benchmarks/train_step.json")
    args = parser.parse_args()
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(0)
    rows = []
    print(f"device: {device}")
    print(f"{'preset':10s} {'obs':6s} {'batch':>7s} {'world model ms':>15s} {'actor-critic ms':>16s}")
    for preset in args.presets:
        for obs in args.obs:
            for batch_size in args.batches:
                config = make_config(
                    preset.split("+"),
                    [
                        "agent=dreamer",
                        f"env.task={args.task}",
                        f"env.obs={obs}",
                        f"replay.batch_size={batch_size}",
                        f"device={device}",
                    ],
                )
                env = make_env(config.env, 0)
                agent = DreamerAgent(config, env.spec, device)
                batch = to_torch(random_batch(env, batch_size, config.replay.batch_length, rng), device)
                post, _ = agent.world_model.train_step(batch)
                starts = flatten(post)["deter"].shape[0]
                model_ms, _ = median_ms(partial(agent.world_model.train_step, batch), args.repeats, sync=sync)
                behaviour_ms, _ = median_ms(partial(agent.behaviour.train, post), args.repeats, sync=sync)
                shape = f"{batch_size}x{config.replay.batch_length}"
                rows.append(
                    {
                        "preset": preset,
                        "obs": obs,
                        "batch": shape,
                        "world_model_ms": model_ms,
                        "actor_critic_ms": behaviour_ms,
                        "imagination_starts": min(config.actor.starts or starts, starts),
                    }
                )
                print(f"{preset:10s} {obs:6s} {shape:>7s} {model_ms:15.1f} {behaviour_ms:16.1f}")
                env.close()
    write_json(
        Path(args.out),
        {"benchmark": "train_step", "device": str(device), "repeats": args.repeats, "rows": rows},
    )


if __name__ == "__main__":
    main()
