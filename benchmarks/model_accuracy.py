"""How well trained world models predict, open loop, what really happened. For each run's model and
each run's replay episodes of the same task (its own, and other runs' that it never trained on), the
model filters an episode up to a start step, then predicts the next ``--horizon`` steps from the real
actions alone (the prior means: the planner's dynamics, Eq. 5). Per model and data it reports the
reward error per step (bias, what the model promises for these actions minus what the environment
paid, and RMS), the RMS at the horizon's last step, and the observation's mean squared error there
(in the environment's units).

    python benchmarks/model_accuracy.py RUN_DIR... [--horizon 15] [--stride 10] --out FILE.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import write_json

from collodreamer.analysis import build_agent, open_loop_errors
from collodreamer.data import EpisodeStore
from collodreamer.rundir import RunDir


def accuracy(agent, store: EpisodeStore, horizon: int, stride: int) -> dict[str, float]:
    """:func:`open_loop_errors` over all of ``store``'s episodes, summarised."""
    errors = [open_loop_errors(agent, episode, horizon, stride) for episode in store.episodes]
    error, obs = (np.concatenate(part) for part in zip(*errors, strict=True))
    return {
        "starts": int(error.shape[0]),
        "reward_bias": float(error.mean()),
        "reward_rms": float(np.sqrt((error**2).mean())),
        "reward_rms_last": float(np.sqrt((error[:, -1] ** 2).mean())),
        "obs_mse_last": float(obs.mean()),
    }


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument("--stride", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    agents = {run: build_agent(run, [])[:2] for run in args.runs}
    rows = []
    print("| model | data | starts | reward bias | reward RMS | RMS, last step | obs MSE, last step |")
    print("|---|---|---|---|---|---|---|")
    for model_run, (config, agent) in agents.items():
        for data_run, (data_config, _) in agents.items():
            if (data_config.env.task, data_config.env.obs) != (config.env.task, config.env.obs):
                continue
            store = EpisodeStore.read(RunDir(data_run).episodes, config.env.action_repeat)
            torch.manual_seed(0)  # the posterior samples the starts are filtered into
            row = {"model": str(model_run), "data": str(data_run)} | accuracy(
                agent, store, args.horizon, args.stride
            )
            rows.append(row)
            print(
                f"| {model_run.name} | {data_run.name} | {row['starts']} | {row['reward_bias']:+.4f} | "
                f"{row['reward_rms']:.4f} | {row['reward_rms_last']:.4f} | {row['obs_mse_last']:.4g} |"
            )
    write_json(args.out, {"horizon": args.horizon, "stride": args.stride, "rows": rows})


if __name__ == "__main__":
    main()
