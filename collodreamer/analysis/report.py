"""The report of a trained run: what its world model predicts and its planner plans beside what
really happened (:mod:`collodreamer.analysis.prediction`), drawn. At each test with
``run.report=true`` to TensorBoard (:class:`TestReport`); by ``collodreamer report`` to files
(:func:`write_report`).

Pixels: frames of truth | prediction | error (a GIF and a PNG grid per episode), and a strip of decoded
knots above the executed frames per plan; states: each dimension and the reward, predicted against
real. Every agent: ``promise.png`` and ``promise.json``, what the plans of one test episode promised
per segment against what was paid.

Figures are drawn with matplotlib's object API (no pyplot, no global state), imported only here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import imageio.v2 as imageio
import numpy as np

from collodreamer.agents import ModelBased, Planner
from collodreamer.analysis.prediction import PlanTrace, Prediction, open_loop, promise_trace, trace_plan
from collodreamer.config import ConfigError, uses_pixels
from collodreamer.data import EpisodeStore
from collodreamer.envs import Env, make_env
from collodreamer.rundir import RunDir
from collodreamer.schema import Config
from collodreamer.seeds import env_seed
from collodreamer.timing import timed
from collodreamer.training import load_agent
from collodreamer.training.checkpoint import rng_states, set_rng_states

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def pixel_triptych(prediction: Prediction) -> np.ndarray:
    """Frames ``[T, 64, 3 * 64, 3]`` uint8: truth | prediction | absolute error."""
    real, predicted = prediction.real_obs, prediction.predicted_obs
    error = np.abs(real - predicted)
    return np.concatenate([real, predicted, error], 2).clip(0, 255).astype(np.uint8)


def frame_grid(frames: np.ndarray, rows: int = 8) -> np.ndarray:
    """``rows`` frames picked evenly from ``frames [T, H, W, 3]``, stacked top to bottom."""
    picks = np.linspace(0, len(frames) - 1, rows).astype(int)
    return np.concatenate([frames[i] for i in picks], 0)


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


class TestReport:
    """``run.report``: at each test, the report's pictures of the agent by name (``prediction``: the
    open-loop prediction of ``episode``; for a planning agent also ``plan``, and ``plan_frames`` from
    pixels: a plan from a test start of its own environment) and, from pixels, the prediction's
    triptych frames as a video. Agents without a world model get none. Its random draws leave the
    process's random states as they were, so a run goes on as it would without it."""

    def __init__(self) -> None:
        self._env: Env | None = None  # made at the first report of a planning agent

    def __call__(
        self, agent: Any, episode: dict[str, np.ndarray], config: Config, frames: int
    ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        if not isinstance(agent, ModelBased):
            return {}, None
        states = rng_states(agent.device)
        try:
            with timed("report"):
                return self._draw(agent, episode, config, frames)
        finally:
            set_rng_states(states, agent.device)

    def _draw(
        self, agent: ModelBased, episode: dict[str, np.ndarray], config: Config, frames: int
    ) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        title = f"{config.agent} {config.env.task} at {frames} env frames"
        pixels = uses_pixels(config.env)
        prediction = open_loop(agent, episode)
        video = pixel_triptych(prediction) if pixels else None
        images = {
            "prediction": frame_grid(video)
            if video is not None
            else figure_image(state_prediction_figure(prediction, title))
        }
        if isinstance(agent, Planner):
            if self._env is None:
                self._env = make_env(config.env, env_seed(config.seed, "report"))
            trace = trace_plan(agent, self._env, warmup=0)
            images["plan"] = figure_image(plan_figure(trace, f"{title}: a plan from a test start", pixels))
            if pixels:
                images["plan_frames"] = plan_frames(trace)
        return images, video


def write_report(
    run_dir: Path, out: Path, episodes: int = 2, plans: int = 1, checkpoint: Path | None = None
) -> list[Path]:
    """Open-loop predictions of the run's last ``episodes`` episodes and ``plans`` plan traces (for
    planning agents), written to ``out``, of the model in ``checkpoint`` (default: the run's
    latest); returns the files."""
    config, agent, counters = load_agent(run_dir, checkpoint)
    if not isinstance(agent, ModelBased):
        raise ConfigError(f"{run_dir} is a {config.agent} run: it has no world model to report on")
    out.mkdir(parents=True, exist_ok=True)
    store = EpisodeStore.read(RunDir(run_dir).episodes, config.env.action_repeat)
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
