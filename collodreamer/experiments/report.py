"""What a trained world model predicts, and what its planner plans, beside what really happened.

- Open-loop prediction: for a few real episodes of the run, the model filters the first
  ``context`` steps with the real observations, then imagines the rest from the real actions alone
  (prior means, the planner's dynamics). Pixels: a GIF and a PNG grid of truth / prediction / error;
  states: each dimension and the reward, predicted against real.
- Plans (planning agents): from a real start state, the planner's knots decoded (states: plotted,
  pixels: an image strip) beside the real trajectory of executing the plan's actions open-loop in the
  environment, and the multipliers and violations over the plan's iterations (Fig. 10-11).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch

from collodreamer.data import EpisodeStore
from collodreamer.envs import DMCEnv
from collodreamer.models import to_torch
from collodreamer.planning import Plan, collocate
from collodreamer.planning.problem import violations
from collodreamer.training import load_agent
from collodreamer.training.loop import EVAL_SEED_OFFSET

REPORT_SEED_OFFSET = 3 * EVAL_SEED_OFFSET  # start states of the plan reports, apart from tests


@dataclass
class Prediction:
    """Real and predicted observations ``[T, ...]`` and rewards ``[T]`` of one episode; the first
    ``context`` steps are filtered, the rest imagined."""

    real_obs: np.ndarray
    predicted_obs: np.ndarray
    real_reward: np.ndarray
    predicted_reward: np.ndarray
    context: int


@torch.no_grad()
def open_loop(agent, episode: dict[str, np.ndarray], context: int) -> Prediction:
    model = agent.world_model
    data = to_torch({k: v[None] for k, v in episode.items()}, agent.device)
    post, _ = model.rssm.observe(
        model.encode(data["obs"][:, :context]), data["action"][:, :context], data["is_first"][:, :context]
    )
    filtered = model.rssm.feature(post)[0]
    feature, imagined = filtered[-1:], []
    for t in range(context, data["action"].shape[1]):
        feature = model.rssm.next_feature_mean(feature, data["action"][:, t])
        imagined.append(feature[0])
    features = torch.cat([filtered, torch.stack(imagined)]) if imagined else filtered
    return Prediction(
        episode["obs"].astype(np.float32),
        model.decode(features).cpu().numpy(),
        episode["reward"].astype(np.float32),
        model.reward_of(features).cpu().numpy(),
        context,
    )


def plot_state_prediction(prediction: Prediction, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = prediction.real_obs.shape[1]
    columns = min(4, dims + 1)
    rows = -(-(dims + 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.2 * rows), squeeze=False)
    series = [(prediction.real_obs[:, i], prediction.predicted_obs[:, i], f"obs[{i}]") for i in range(dims)]
    series.append((prediction.real_reward, prediction.predicted_reward, "reward"))
    for ax, (real, predicted, name) in zip(axes.flat, series, strict=False):
        ax.plot(real, color="k", lw=1, label="real")
        ax.plot(predicted, color="C1", lw=1, label="predicted")
        ax.axvline(prediction.context - 0.5, color="grey", ls="--", lw=0.8)
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(series) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{title}: filtered for {prediction.context} steps (dashed line), then imagined")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def pixel_triptych(prediction: Prediction) -> np.ndarray:
    """Frames ``[T, 64, 3 * 64, 3]`` uint8: truth | prediction | absolute error."""
    real, predicted = prediction.real_obs, prediction.predicted_obs
    error = np.abs(real - predicted)
    return np.concatenate([real, predicted, error], 2).clip(0, 255).astype(np.uint8)


def write_pixel_prediction(prediction: Prediction, stem: Path) -> list[Path]:
    frames = pixel_triptych(prediction)
    gif = stem.with_suffix(".gif")
    imageio.mimsave(gif, list(frames[::2]), duration=0.08, loop=0)
    picks = np.linspace(0, len(frames) - 1, 8).astype(int)
    grid = np.concatenate([frames[i] for i in picks], 0)  # 8 rows of truth | prediction | error
    png = stem.with_suffix(".png")
    imageio.imwrite(png, grid)
    return [gif, png]


@dataclass
class PlanTrace:
    """One plan: its knots decoded, the real trajectory of its actions executed open-loop, and the
    multipliers and violations after each iteration."""

    planned_obs: np.ndarray  # [H+1, ...]
    planned_reward: np.ndarray  # [H+1]
    real_obs: np.ndarray  # [H+1, ...]
    real_reward: np.ndarray  # [H+1]
    lambda_mean: list[float]
    nu_mean: list[float]
    dynamics_violation: list[float]
    action_violation: list[float]


@torch.no_grad()
def trace_plan(agent, env: DMCEnv, warmup: int) -> PlanTrace:
    """Act ``warmup`` steps with the agent, plan from the state reached (recording every iteration),
    then execute the plan's actions in the environment without replanning."""
    obs, state = env.reset(), None
    for _ in range(warmup):
        action, state = agent.act(obs, state, training=False)
        obs, _, done, _ = env.step(action)
        if done:
            break
    model = agent.world_model
    latent = model.filter(obs, state.latent if state else None, state.action if state else None)
    objective = agent.objective()
    history: dict[str, list[float]] = {"lam": [], "nu": [], "dyn": [], "act": []}

    def record(plan: Plan) -> None:
        dynamics, actions = violations(objective, plan)
        history["lam"].append(plan.lam.mean().item())
        history["nu"].append(plan.nu.mean().item())
        history["dyn"].append(dynamics.mean().item())
        history["act"].append(actions.mean().item())

    result = collocate(objective, model.rssm.feature(latent), agent.planner_config(), on_iteration=record)
    knots = result.plan.features[0]
    real_obs, real_reward = [obs], [0.0]
    for action in result.actions[0, :-1].cpu().numpy():  # a_0..a_{H-1} lead to z_1..z_H
        obs, reward, done, _ = env.step(action)
        real_obs.append(obs)
        real_reward.append(reward)
        if done:
            break
    steps = len(real_obs)
    return PlanTrace(
        model.decode(knots).cpu().numpy()[:steps],
        model.reward_of(knots).cpu().numpy()[:steps],
        np.stack(real_obs).astype(np.float32),
        np.array(real_reward, np.float32),
        history["lam"],
        history["nu"],
        history["dyn"],
        history["act"],
    )


def plot_plan(trace: PlanTrace, path: Path, title: str, pixels: bool) -> list[Path]:
    """The plan's curves (and for pixels a strip of decoded knots above the executed frames)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    dims = 0 if pixels else trace.real_obs.shape[1]
    if pixels:
        picks = np.linspace(0, len(trace.real_obs) - 1, 8).astype(int)
        top = np.concatenate([trace.planned_obs[i] for i in picks], 1)
        bottom = np.concatenate([trace.real_obs[i] for i in picks], 1)
        strip = path.with_name(path.stem + "_frames.png")
        imageio.imwrite(strip, np.concatenate([top, bottom], 0).astype(np.uint8))
        written.append(strip)
    panels = dims + 3  # each dimension, the reward, the multipliers, the violations
    columns = min(4, panels)
    rows = -(-panels // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.2 * rows), squeeze=False)
    flat = list(axes.flat)
    for i in range(dims):
        flat[i].plot(trace.real_obs[:, i], color="k", lw=1, label="executed")
        flat[i].plot(trace.planned_obs[:, i], color="C0", lw=1, label="planned knots")
        flat[i].set_title(f"obs[{i}]", fontsize=9)
    flat[dims].plot(trace.real_reward, color="k", lw=1, label="executed")
    flat[dims].plot(trace.planned_reward, color="C0", lw=1, label="planned")
    flat[dims].set_title("reward per step", fontsize=9)
    flat[dims].legend(fontsize=7)
    flat[dims + 1].semilogy(trace.lambda_mean, label="mean lambda (dynamics)")
    flat[dims + 1].semilogy(trace.nu_mean, label="mean nu (actions)")
    flat[dims + 1].set(title="multipliers", xlabel="iteration")
    flat[dims + 1].legend(fontsize=7)
    flat[dims + 2].semilogy(np.maximum(trace.dynamics_violation, 1e-12), label="dynamics")
    flat[dims + 2].semilogy(np.maximum(trace.action_violation, 1e-12), label="action bounds")
    flat[dims + 2].set(title="squared violations", xlabel="iteration")
    flat[dims + 2].legend(fontsize=7)
    for ax in flat[panels:]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path, *written]


def write_report(run_dir: Path, out: Path, episodes: int = 2, plans: int = 1, context: int = 5) -> list[Path]:
    """Open-loop predictions of the run's last ``episodes`` episodes and ``plans`` plan traces (for
    planning agents), written to ``out``; returns the files."""
    config, agent, counters = load_agent(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = EpisodeStore(Path(run_dir) / "episodes", 10**12, config.env.action_repeat, 0)
    store.load()
    pixels = config.env.obs == "pixels"
    frames = counters["env_frames"]
    written: list[Path] = []
    for index, episode in enumerate(store.episodes[-episodes:]):
        prediction = open_loop(agent, episode, context)
        stem = out / f"prediction_{index}"
        if pixels:
            written += write_pixel_prediction(prediction, stem)
        else:
            title = f"{config.agent} {config.env.task} at {frames} env frames"
            written.append(plot_state_prediction(prediction, stem.with_suffix(".png"), title))
    if hasattr(agent, "objective"):
        env = DMCEnv(config.env, config.seed + REPORT_SEED_OFFSET)
        try:
            for index in range(plans):
                trace = trace_plan(agent, env, warmup=20 * index)
                title = f"{config.agent} plan at step {20 * index} of a test episode ({frames} env frames)"
                written += plot_plan(trace, out / f"plan_{index}.png", title, pixels)
        finally:
            env.close()
    return written
