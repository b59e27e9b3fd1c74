"""What a trained world model predicts, and what its planner plans, beside what really happened, as
data (drawn by :mod:`collodreamer.analysis.report`).

- Open-loop prediction: for a real episode, the model filters the first ``context`` steps with the
  real observations, then imagines the rest from the real actions alone (prior means, the planner's
  dynamics); and its errors a planner's horizon ahead from many start steps.
- Plans (planning agents): from a real start state, the planner's knots beside the real trajectory of
  executing the plan's actions open-loop in the environment, and the multipliers and violations over
  the plan's iterations (Fig. 10-11).
- The promise (every agent): over one test episode, per executed segment, the reward per step its
  plan promised, what the model predicts for the executed actions and what the environment paid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from collodreamer.envs import Env
from collodreamer.models import to_torch
from collodreamer.planning import Plan, collocate
from collodreamer.planning.problem import rollout_features, violations

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
    features = filtered
    if data["action"].shape[1] > context:
        imagined = rollout_features(model.rssm.next_feature_mean, filtered[-1:], data["action"][:, context:])
        features = torch.cat([filtered, imagined[0]])
    return Prediction(
        episode["obs"].astype(np.float32),
        model.decode(features).cpu().numpy(),
        episode["reward"].astype(np.float32),
        model.reward_of(features).cpu().numpy(),
        context,
    )


@torch.no_grad()
def filtered_and_ahead(
    agent: Any, episode: dict[str, np.ndarray], horizon: int, stride: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """``episode`` as tensors ``[1, T, ...]``, its features filtered from the real observations
    ``[T, F]``, and from every ``stride``-th step ``s`` (after ``CONTEXT`` filtered steps) the features
    the model imagines for ``s + 1..s + horizon`` from the real actions alone ``[N, horizon, F]`` (as
    :func:`open_loop` with ``s`` as its last filtered step), with the steps they stand for
    ``[N, horizon]``."""
    model = agent.world_model
    data = to_torch({k: v[None] for k, v in episode.items()}, agent.device)
    post, _ = model.observe(data)
    features = model.rssm.feature(post)[0]
    starts = torch.arange(CONTEXT - 1, features.shape[0] - horizon, stride, device=features.device)
    ahead = starts[:, None] + torch.arange(1, horizon + 1, device=starts.device)
    imagined = rollout_features(model.rssm.next_feature_mean, features[starts], data["action"][0, ahead])
    return data, features, imagined, ahead


@torch.no_grad()
def open_loop_errors(
    agent: Any, episode: dict[str, np.ndarray], horizon: int, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """From every ``stride``-th step ``s`` of ``episode`` (see :func:`filtered_and_ahead`), the
    predicted minus real reward ``[N, horizon]`` of the next ``horizon`` steps, and the observation's
    mean squared error at ``s + horizon`` ``[N]``."""
    model = agent.world_model
    data, _, predicted, ahead = filtered_and_ahead(agent, episode, horizon, stride)
    reward_error = model.reward_of(predicted) - data["reward"][0, ahead]
    last_obs = data["obs"][0, ahead[:, -1]].float()
    obs_error = (model.decode(predicted[:, -1]) - last_obs).pow(2).flatten(1).mean(1)
    return reward_error.cpu().numpy(), obs_error.cpu().numpy()


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
