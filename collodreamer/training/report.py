"""What a trained world model predicts, and what its planner plans, beside what really happened: the
report's data and pictures (as arrays), made at each test with ``run.report=true`` and written to
files by ``collodreamer report`` (:mod:`collodreamer.experiments.report`).

- Open-loop prediction: for a real episode, the model filters the first ``context`` steps with the
  real observations, then imagines the rest from the real actions alone (prior means, the planner's
  dynamics). Pixels: frames of truth | prediction | error; states: each dimension and the reward,
  predicted against real.
- Plans (planning agents): from a real start state, the planner's knots decoded beside the real
  trajectory of executing the plan's actions open-loop in the environment, and the multipliers and
  violations over the plan's iterations (Fig. 10-11).
- The promise (every agent): over one test episode, per executed segment, the reward per step its
  plan promised, what the model predicts for the executed actions and what the environment paid.

Figures are drawn with matplotlib's object API (no pyplot, no global state), imported only here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from collodreamer.agents import Planner
from collodreamer.envs import Env
from collodreamer.models import to_torch
from collodreamer.planning import Plan, collocate
from collodreamer.planning.problem import violations

if TYPE_CHECKING:
    from matplotlib.figure import Figure

CONTEXT = 5  # real steps the model filters before it predicts open-loop


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
def open_loop(agent: Any, episode: dict[str, np.ndarray], context: int = CONTEXT) -> Prediction:
    """The agent's world model filtering ``context`` steps of ``episode``, then predicting the rest."""
    model = agent.world_model
    data = to_torch({k: v[None] for k, v in episode.items()}, agent.device)
    post, _ = model.observe({k: v[:, :context] for k, v in data.items()})
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


def pixel_triptych(prediction: Prediction) -> np.ndarray:
    """Frames ``[T, 64, 3 * 64, 3]`` uint8: truth | prediction | absolute error."""
    real, predicted = prediction.real_obs, prediction.predicted_obs
    error = np.abs(real - predicted)
    return np.concatenate([real, predicted, error], 2).clip(0, 255).astype(np.uint8)


def frame_grid(frames: np.ndarray, rows: int = 8) -> np.ndarray:
    """``rows`` frames picked evenly from ``frames [T, H, W, 3]``, stacked top to bottom."""
    picks = np.linspace(0, len(frames) - 1, rows).astype(int)
    return np.concatenate([frames[i] for i in picks], 0)


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
def trace_plan(agent: Any, env: Env, warmup: int) -> PlanTrace:
    """Act ``warmup`` steps with the agent, plan from the state reached (recording every iteration),
    then execute the plan's actions in the environment without replanning."""
    (obs, _), state = env.reset(), None
    for _ in range(warmup):
        action, state = agent.act(obs, state, training=False)
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
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
        obs, reward, terminated, truncated, _ = env.step(action)
        real_obs.append(obs)
        real_reward.append(reward)
        if terminated or truncated:
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


PROMISE_KEYS = ("promised_reward", "rollout_reward", "paid_reward", "value_promised", "value_real")


@torch.no_grad()
def promise_trace(agent: Any, env: Env) -> dict[str, list[float]]:
    """One test episode of the agent, and per executed segment what its plan promised, what a model
    rollout of the executed actions predicted and what was paid (reward per step), and the value at
    the plan's knot against the real state reached (see :mod:`collodreamer.agents.promise`)."""
    agent.metrics()  # start from a clean slate: only this episode's segments
    trace: dict[str, list[float]] = {key: [] for key in PROMISE_KEYS}
    (obs, _), state, done, reward = env.reset(), None, False, 0.0
    while not done:
        action, state = agent.act(obs, state, training=False, reward=reward)
        segment = agent.metrics()
        for key in PROMISE_KEYS:
            if f"plan/{key}" in segment:
                trace[key].append(segment[f"plan/{key}"])
        obs, reward, terminated, truncated, _ = env.step(action)
        done = terminated or truncated
    return {key: values for key, values in trace.items() if values}


def promise_figure(trace: dict[str, list[float]], title: str) -> Figure:
    """Per segment: the reward per step promised, predicted for the executed actions and paid; and,
    with a value, V at the plan's knot against V at the real state reached."""
    fig, axes = _panels(2 if "value_promised" in trace else 1)
    axes[0].plot(trace["promised_reward"], color="C0", lw=1, label="plan promised")
    axes[0].plot(trace["rollout_reward"], color="C1", lw=1, label="model, executed actions")
    axes[0].plot(trace["paid_reward"], color="k", lw=1, label="environment paid")
    axes[0].set(title="reward per step of each segment", xlabel="segment")
    axes[0].legend(fontsize=7)
    if "value_promised" in trace:
        axes[1].plot(trace["value_promised"], color="C0", lw=1, label="V at the plan's knot")
        axes[1].plot(trace["value_real"], color="k", lw=1, label="V at the real state reached")
        axes[1].set(title="value after each segment", xlabel="segment")
        axes[1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plan_frames(trace: PlanTrace) -> np.ndarray:
    """Pixels: 8 decoded knots (top row) above the frames their actions really led to (bottom row)."""
    picks = np.linspace(0, len(trace.real_obs) - 1, 8).astype(int)
    top = np.concatenate([trace.planned_obs[i] for i in picks], 1)
    bottom = np.concatenate([trace.real_obs[i] for i in picks], 1)
    return np.concatenate([top, bottom], 0).astype(np.uint8)


def _panels(count: int) -> tuple[Figure, list]:
    """A figure of ``count`` small panels, four to a row (the spare ones hidden)."""
    from matplotlib.figure import Figure

    columns = min(4, count)
    rows = -(-count // columns)
    fig = Figure(figsize=(3.2 * columns, 2.2 * rows))
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    for ax in axes[count:]:
        ax.axis("off")
    return fig, axes[:count]


def state_prediction_figure(prediction: Prediction, title: str) -> Figure:
    """States: each dimension and the reward, real against predicted, the filtered steps marked."""
    dims = prediction.real_obs.shape[1]
    series = [(prediction.real_obs[:, i], prediction.predicted_obs[:, i], f"obs[{i}]") for i in range(dims)]
    series.append((prediction.real_reward, prediction.predicted_reward, "reward"))
    fig, axes = _panels(len(series))
    for ax, (real, predicted, name) in zip(axes, series, strict=True):
        ax.plot(real, color="k", lw=1, label="real")
        ax.plot(predicted, color="C1", lw=1, label="predicted")
        ax.axvline(prediction.context - 0.5, color="grey", ls="--", lw=0.8)
        ax.set_title(name, fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{title}: filtered for {prediction.context} steps (dashed line), then imagined")
    fig.tight_layout()
    return fig


def plan_figure(trace: PlanTrace, title: str, pixels: bool) -> Figure:
    """The plan's curves: each state dimension (states), the reward, the multipliers, the violations."""
    dims = 0 if pixels else trace.real_obs.shape[1]
    fig, axes = _panels(dims + 3)
    for i in range(dims):
        axes[i].plot(trace.real_obs[:, i], color="k", lw=1, label="executed")
        axes[i].plot(trace.planned_obs[:, i], color="C0", lw=1, label="planned knots")
        axes[i].set_title(f"obs[{i}]", fontsize=9)
    reward, multipliers, violated = axes[dims:]
    reward.plot(trace.real_reward, color="k", lw=1, label="executed")
    reward.plot(trace.planned_reward, color="C0", lw=1, label="planned")
    reward.set_title("reward per step", fontsize=9)
    reward.legend(fontsize=7)
    multipliers.semilogy(trace.lambda_mean, label="mean lambda (dynamics)")
    multipliers.semilogy(trace.nu_mean, label="mean nu (actions)")
    multipliers.set(title="multipliers", xlabel="iteration")
    multipliers.legend(fontsize=7)
    violated.semilogy(np.maximum(trace.dynamics_violation, 1e-12), label="dynamics")
    violated.semilogy(np.maximum(trace.action_violation, 1e-12), label="action bounds")
    violated.set(title="squared violations", xlabel="iteration")
    violated.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def figure_image(fig: Figure, dpi: int = 100) -> np.ndarray:
    """The figure drawn as an RGB image ``[H, W, 3]`` uint8."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def report_images(
    agent: Any, episode: dict[str, np.ndarray], env: Env | None, title: str, pixels: bool
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The report of one test: images by name (``prediction``, and ``plan``, ``plan_frames`` for a
    planning agent given ``env``) and, for pixels, the prediction's triptych frames as a video."""
    prediction = open_loop(agent, episode)
    video = pixel_triptych(prediction) if pixels else None
    images = {
        "prediction": frame_grid(video)
        if video is not None
        else figure_image(state_prediction_figure(prediction, title))
    }
    if env is not None and isinstance(agent, Planner):
        trace = trace_plan(agent, env, warmup=0)
        images["plan"] = figure_image(plan_figure(trace, f"{title}: a plan from a test start", pixels))
        if pixels:
            images["plan_frames"] = plan_frames(trace)
    return images, video
