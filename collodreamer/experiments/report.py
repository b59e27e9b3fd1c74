"""``collodreamer report RUN_DIR``: the open-loop predictions of a trained run's last episodes and its
planner's plans (planning agents), as files (see :mod:`collodreamer.training.report` for what they
show).

Pixels: a GIF and a PNG grid of truth / prediction / error per episode, and a strip of decoded knots
above the executed frames per plan; states: each dimension and the reward, predicted against real.
Every agent: ``promise.png`` and ``promise.json``, what the plans of one test episode promised per
segment against what was paid.
"""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

from collodreamer.agents import Planner
from collodreamer.config import uses_pixels
from collodreamer.data import EpisodeStore
from collodreamer.envs import make_env
from collodreamer.rundir import RunDir
from collodreamer.seeds import env_seed
from collodreamer.training import load_agent
from collodreamer.training.report import (
    frame_grid,
    open_loop,
    pixel_triptych,
    plan_figure,
    plan_frames,
    promise_figure,
    promise_trace,
    state_prediction_figure,
    trace_plan,
)


def write_report(
    run_dir: Path, out: Path, episodes: int = 2, plans: int = 1, checkpoint: Path | None = None
) -> list[Path]:
    """Open-loop predictions of the run's last ``episodes`` episodes and ``plans`` plan traces (for
    planning agents), written to ``out``, of the model in ``checkpoint`` (default: the run's
    latest); returns the files."""
    config, agent, counters = load_agent(run_dir, checkpoint)
    out.mkdir(parents=True, exist_ok=True)
    store = EpisodeStore(RunDir(run_dir).episodes, 10**12, config.env.action_repeat, 0)
    store.load()
    pixels = uses_pixels(config.env)
    title = f"{config.agent} {config.env.task} at {counters['env_frames']} env frames"
    written: list[Path] = []
    for index, episode in enumerate(store.latest(episodes)):
        prediction = open_loop(agent, episode)
        stem = out / f"prediction_{index}"
        if pixels:
            frames = pixel_triptych(prediction)
            imageio.mimsave(stem.with_suffix(".gif"), list(frames[::2]), duration=0.08, loop=0)
            imageio.imwrite(stem.with_suffix(".png"), frame_grid(frames))  # 8 rows of the three
            written += [stem.with_suffix(".gif"), stem.with_suffix(".png")]
        else:
            state_prediction_figure(prediction, title).savefig(stem.with_suffix(".png"), dpi=100)
            written.append(stem.with_suffix(".png"))
    env = make_env(config.env, env_seed(config.seed, "report"))
    try:
        trace = promise_trace(agent, env)
        if trace:
            means = {key: float(np.mean(values)) for key, values in trace.items()}
            summary = {
                **means,
                "promise_gap": means["promised_reward"] - means["paid_reward"],
                "segments": trace,
            }
            (out / "promise.json").write_text(json.dumps(summary, indent=2) + "\n")
            promise_figure(trace, f"{title}: what one test episode's plans promised").savefig(
                out / "promise.png", dpi=100
            )
            written += [out / "promise.json", out / "promise.png"]
    finally:
        env.close()
    if isinstance(agent, Planner):
        env = make_env(config.env, env_seed(config.seed, "report"))
        try:
            for index in range(plans):
                trace = trace_plan(agent, env, warmup=20 * index)
                path = out / f"plan_{index}.png"
                plan_title = f"{title}: a plan at step {20 * index} of a test episode"
                plan_figure(trace, plan_title, pixels).savefig(path, dpi=100)
                written.append(path)
                if pixels:
                    strip = out / f"plan_{index}_frames.png"
                    imageio.imwrite(strip, plan_frames(trace))
                    written.append(strip)
        finally:
            env.close()
    return written
