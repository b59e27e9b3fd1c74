"""What a trained world model's latent knows of the true state, filtered and imagined
(``collodreamer diagnose latent RUN_DIR``).

The agent plays ``episodes`` fresh test episodes (the eval stream of :mod:`collodreamer.seeds`)
while the true state is recorded beside what the agent sees (from pixels too): the task's state
observation (for reacher the joint angles ``position``, unbounded for its free shoulder, the target
relative to the fingertip ``to_target`` and the joint velocities) and the world position of every
body that moves. The model filters each episode from its real observations. A linear probe, ridge
regression from the filtered features to the state, reads each episode after being fitted on the
other episodes (leave one episode out: reacher's target moves only between episodes), with its
penalty chosen per state dimension the same way among those others; each part of the state is
scored over all episodes by R^2 and by the RMSE in its own units. ``probe="mlp"`` reads with a small
MLP instead (two hidden layers, stopped early on a fifth of the other episodes): positions drawn in
an image may lie in the features nonlinearly, where a linear probe cannot read them. The same
probes read the features the model imagines ``k = 1..horizon`` steps ahead from the real actions
alone (the prior mean, the planner's dynamics), from every ``stride``-th step: how fast the model
loses what it knew. The model's own reward head is scored the same way (no probe), on the test
episodes and on as many of the newest episodes the checkpoint was trained on: a head right on its
replay and wrong on fresh episodes has learnt its data, not the task. A probe fitted on few
episodes has seen few target positions: on reacher from pixels, 10 episodes read the target's
offset far worse than 30 (60 read about as well as 30, linearly).

R^2 is relative to the part's spread over the test states (``spread``: its RMS deviation from its
mean, so that R^2 = 1 - (RMSE / spread)^2): near 1 the probe reads the part from the features; near
0 or below, the features do not place it (or not in a form the probe reads), or the agent hardly
moved it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from collodreamer.analysis.prediction import filtered_and_ahead
from collodreamer.config import ConfigError
from collodreamer.data.episode import Episode, add_step, finish_episode, start_episode
from collodreamer.data.replay import episode_files, readable_episodes
from collodreamer.envs import make_env
from collodreamer.envs.dmc import DMCEnv
from collodreamer.models.networks import MLP
from collodreamer.rundir import RunDir
from collodreamer.seeds import env_seed
from collodreamer.training import load_agent
from collodreamer.training.checkpoint import seed_everything
from collodreamer.training.evaluation import check_action

L2_GRID = (0.1, 1.0, 10.0, 100.0, 1e3, 1e4)  # ridge penalties tried on standardised features
MOVES = 1e-6  # a part of the state whose spread is below this never moved (a fixed body): not probed
PROBES = ("linear", "mlp")
MLP_UNITS = 256  # in each of the MLP probe's two hidden layers (ELU)
MLP_BATCH = 256  # states per Adam step (learning rate MLP_LR)
MLP_LR = 1e-3
MLP_CHECK_STEPS = 100  # Adam steps between checks of the held-out loss
MLP_PATIENCE = 10  # checks without a better held-out loss before the fit stops
MLP_MAX_STEPS = 5000


def design(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Features ``[N, F]`` standardised, with a last column of ones: ``[N, F + 1]`` (float64)."""
    standard = ((x - mean) / std).astype(np.float64)
    return np.concatenate([standard, np.ones((len(x), 1))], 1)


def ridge(gram: np.ndarray, cross: np.ndarray, l2: float) -> np.ndarray:
    """Ridge weights W = (X^T X + l2 diag(1, .., 1, 0))^-1 X^T Y from ``gram`` = X^T X and ``cross``
    = X^T Y, the bias (last column of X) unpenalised."""
    penalty = l2 * np.eye(len(gram))
    penalty[-1, -1] = 0.0
    return np.linalg.solve(gram + penalty, cross)


def leave_one_out(
    designs: list[np.ndarray], targets: list[np.ndarray], extra: list[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per group ``i`` (an episode): the ridge probe fitted on the other groups' ``designs [N_j, F+1]``
    and ``targets [N_j, D]``, its penalty chosen per target dimension from :data:`L2_GRID` by the
    squared error of the same procedure one level down (each other group predicted from the rest),
    applied to group ``i``'s design and to ``extra[i] [M_i, F+1]``: the predictions ``[N_i, D]`` and
    ``[M_i, D]``."""
    grams = [x.T @ x for x in designs]
    crosses = [x.T @ y for x, y in zip(designs, targets, strict=True)]
    gram, cross = sum(grams), sum(crosses)
    dims = np.arange(targets[0].shape[1])
    result = []
    for i in range(len(designs)):
        errors = np.zeros((len(L2_GRID), len(dims)))
        for j in set(range(len(designs))) - {i}:
            inner_gram, inner_cross = gram - grams[i] - grams[j], cross - crosses[i] - crosses[j]
            for g, l2 in enumerate(L2_GRID):
                errors[g] += ((designs[j] @ ridge(inner_gram, inner_cross, l2) - targets[j]) ** 2).sum(0)
        best = errors.argmin(0)
        weights = np.stack([ridge(gram - grams[i], cross - crosses[i], l2) for l2 in L2_GRID])[
            best, :, dims
        ].T
        result.append((designs[i] @ weights, extra[i] @ weights))
    return result


def fit_mlp(
    x: np.ndarray, y: np.ndarray, held_x: np.ndarray, held_y: np.ndarray, seed: int, max_steps: int
) -> Callable[[np.ndarray], np.ndarray]:
    """An :class:`~collodreamer.models.networks.MLP` from ``x [N, F]`` to ``y [N, D]``, each target
    dimension standardised by its mean and spread over ``y`` (so the squared error weighs them
    alike), fitted by Adam on minibatches, and kept at its lowest squared error on the held-out
    ``held_x``, ``held_y`` (early stopping, within ``max_steps``): its prediction in ``y``'s units,
    ``[M, F] -> [M, D]``."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    mean, std = y.mean(0), y.std(0) + 1e-6
    inputs, held_inputs = (torch.as_tensor(a, dtype=torch.float32) for a in (x, held_x))
    labels, held_labels = (torch.as_tensor((a - mean) / std, dtype=torch.float32) for a in (y, held_y))
    net = MLP(x.shape[1], y.shape[1], MLP_UNITS, 2)
    optimiser = torch.optim.Adam(net.parameters(), lr=MLP_LR)
    best, best_state, waited = float("inf"), net.state_dict(), 0
    for step in range(1, max_steps + 1):
        batch = torch.randint(len(inputs), (MLP_BATCH,), generator=generator)
        loss = ((net(inputs[batch]) - labels[batch]) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % MLP_CHECK_STEPS:
            continue
        with torch.no_grad():
            held = float(((net(held_inputs) - held_labels) ** 2).mean())
        if held < best:
            best, best_state, waited = held, {k: v.clone() for k, v in net.state_dict().items()}, 0
        elif (waited := waited + 1) >= MLP_PATIENCE:
            break
    net.load_state_dict(best_state)

    def predict(features: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            standard = net(torch.as_tensor(features, dtype=torch.float32)).numpy()
        return standard.astype(np.float64) * std + mean

    return predict


def mlp_leave_one_out(
    designs: list[np.ndarray],
    targets: list[np.ndarray],
    extra: list[np.ndarray],
    seed: int = 0,
    max_steps: int = MLP_MAX_STEPS,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`leave_one_out` with :func:`fit_mlp` for the ridge probe: per group ``i``, an MLP fitted
    on the other groups but the fifth of them that follow ``i`` (at least one, cyclically), which
    stop its fit early; its predictions for group ``i``'s design and ``extra[i]``."""
    result = []
    for i in range(len(designs)):
        others = [(i + k) % len(designs) for k in range(1, len(designs))]
        split = max(1, len(others) // 5)
        held, fitted = others[:split], others[split:]
        predict = fit_mlp(
            np.concatenate([designs[j] for j in fitted]),
            np.concatenate([targets[j] for j in fitted]),
            np.concatenate([designs[j] for j in held]),
            np.concatenate([targets[j] for j in held]),
            seed + i,
            max_steps,
        )
        result.append((predict(designs[i]), predict(extra[i])))
    return result


def r_squared(y: np.ndarray, predicted: np.ndarray) -> float | None:
    """R^2 = 1 - sum (y - y_hat)^2 / sum (y - mean(y))^2, pooled over the dimensions of ``y [N, D]``
    (each dimension about its own mean), rounded to 3 decimals: 1 exact, 0 no better than the mean,
    below 0 worse; None where ``y`` does not vary."""
    y, predicted = y.reshape(len(y), -1), predicted.reshape(len(y), -1)
    total = ((y - y.mean(0)) ** 2).sum()
    return round(float(1.0 - ((y - predicted) ** 2).sum() / total), 3) if total > 0 else None


def rmse(y: np.ndarray, predicted: np.ndarray) -> float:
    """The root mean squared error over the samples and dimensions of ``y [N, D]`` (``predicted``
    ``[N, D]``, or ``[1, D]`` for one prediction of every sample), in ``y``'s units, to 4 decimals."""
    return round(
        float(np.sqrt(((y.reshape(len(y), -1) - predicted.reshape(len(predicted), -1)) ** 2).mean())), 4
    )


def quality(y: np.ndarray, predicted: np.ndarray) -> dict[str, float | None]:
    """:func:`r_squared` and :func:`rmse` of ``predicted`` against ``y``."""
    return {"r2": r_squared(y, predicted), "rmse": rmse(y, predicted)}


def along(rows: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, list[Any]]]:
    """Per-step ``{name: {measure: value}}`` rows -> ``{name: {measure: [value per step]}}``."""
    result: dict[str, dict[str, list[Any]]] = {}
    for row in rows:
        for name, measures in row.items():
            for measure, value in measures.items():
                result.setdefault(name, {}).setdefault(measure, []).append(value)
    return result


def play(agent: Any, env: DMCEnv) -> tuple[Episode, np.ndarray]:
    """One test episode of ``agent`` in the replay layout, and the task's state ``[T, S]`` at each
    step (the state the observation at that step shows)."""
    obs, _ = env.reset()
    steps, states = start_episode(obs, env.spec.action_dim), [env.state()]
    agent_state, done, reward = None, False, 0.0
    while not done:
        action, agent_state = agent.act(obs, agent_state, training=False, reward=reward)
        action = check_action(action)
        obs, reward, terminated, truncated, _ = env.step(action)
        done = terminated or truncated
        add_step(steps, obs, action, reward, terminated)
        states.append(env.state())
    return finish_episode(steps), np.stack(states)


def reward_of(agent: Any, features: np.ndarray) -> np.ndarray:
    """The model's predicted reward for features ``[..., F]``."""
    with torch.no_grad():
        return agent.world_model.reward_of(torch.as_tensor(features, device=agent.device)).cpu().numpy()


def features_of(agent: Any, episode: Episode, horizon: int, stride: int) -> tuple[np.ndarray, ...]:
    """:func:`collodreamer.analysis.prediction.filtered_and_ahead` as arrays: the filtered features
    ``[T, F]``, the imagined ones ``[N, horizon, F]`` and the steps they stand for ``[N, horizon]``."""
    _, *tensors = filtered_and_ahead(agent, episode, horizon, stride)
    return tuple(tensor.cpu().numpy() for tensor in tensors)


def joined(rows: list[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
    """Rows of equally many arrays -> each column concatenated along its first axis."""
    return [np.concatenate(column) for column in zip(*rows, strict=True)]


def scores(
    agent: Any,
    parts: dict[str, slice],
    states: np.ndarray,
    predicted: np.ndarray,
    features: np.ndarray,
    rewards: np.ndarray,
) -> dict[str, dict[str, float | None]]:
    """:func:`quality` per part of the true ``states [N, S]`` of the probe's ``predicted`` ones, and
    of the model's reward head on ``features [N, F]`` against the real ``rewards [N]``."""
    result = {name: quality(states[:, part], predicted[:, part]) for name, part in parts.items()}
    return {**result, "reward": quality(rewards, reward_of(agent, features))}


def trained_on(run_dir: Path, env_frames: int, action_repeat: int, count: int) -> list[Episode]:
    """The last ``count`` readable episodes the run had collected by ``env_frames`` (the data a
    checkpoint saved then was trained on), newest first."""
    collected, frames = [], 0
    for _, steps, path in episode_files(RunDir(run_dir).episodes):
        frames += (steps - 1) * action_repeat
        if frames > env_frames:
            break
        collected.append(path)
    newest_first = readable_episodes(reversed(collected))
    return [episode for _, episode in itertools.islice(newest_first, count)]


def reward_scores(agent: Any, episodes: list[Episode], horizon: int, stride: int) -> dict[str, Any]:
    """:func:`quality` of the model's reward head on ``episodes``, filtered and imagined 1..``horizon``
    ahead."""
    rows = []
    for episode in episodes:
        features, imagined, ahead = features_of(agent, episode, horizon, stride)
        rows.append((features, episode["reward"], imagined, episode["reward"][ahead]))
    features, rewards, imagined, imagined_rewards = joined(rows)
    ahead = [quality(imagined_rewards[:, k], reward_of(agent, imagined[:, k])) for k in range(horizon)]
    return {
        "episodes": len(episodes),
        "filtered": quality(rewards, reward_of(agent, features)),
        "open_loop": along([{"reward": row} for row in ahead])["reward"],
    }


def diagnose_latent(
    run_dir: Path,
    episodes: int = 10,
    horizon: int = 15,
    stride: int = 5,
    checkpoint: Path | None = None,
    probe: str = "linear",
) -> dict[str, Any]:
    """R^2 and RMSE of ``probe`` probes (linear or mlp) from the run's filtered features to the task's
    state on fresh test episodes (each episode read by a probe fit on the others), and of the same
    probes on features imagined 1..``horizon`` steps ahead; the reward head's on those episodes and
    on as many of the newest it was trained on."""
    if episodes < 3:
        raise ConfigError(
            f"--episodes must be at least 3 (each is read by a probe fit on the others), got {episodes}"
        )
    if probe not in PROBES:
        raise ConfigError(f"--probe must be one of {', '.join(PROBES)}, got {probe!r}")
    config, agent, counters = load_agent(run_dir, checkpoint)
    seed_everything(config.seed, config.run.threads)
    env = make_env(config.env, env_seed(config.seed, "eval"))
    try:
        if not isinstance(env, DMCEnv):
            raise ConfigError(f"{config.env.task}: the latent probe reads a dm_control task's state")
        played = [play(agent, env) for _ in range(episodes)]
        parts = env.state_parts()
    finally:
        env.close()
    every_state = np.concatenate([states for _, states in played])
    parts = {name: part for name, part in parts.items() if every_state[:, part].std(0).max() > MOVES}
    rows = []
    for episode, states in played:
        features, imagined, ahead = features_of(agent, episode, horizon, stride)
        rows.append((features, states, episode["reward"], imagined, states[ahead], episode["reward"][ahead]))
    every_feature = np.concatenate([row[0] for row in rows])
    mean, std = every_feature.mean(0), every_feature.std(0) + 1e-6  # no labels: shared by every fold
    predicted = (leave_one_out if probe == "linear" else mlp_leave_one_out)(
        [design(row[0], mean, std) for row in rows],
        [row[1] for row in rows],
        [design(row[3].reshape(-1, row[3].shape[-1]), mean, std) for row in rows],
    )
    features, states, rewards, imagined, imagined_states, imagined_rewards = joined(rows)
    filtered_states, imagined_predicted = joined(predicted)
    imagined_predicted = imagined_predicted.reshape(*imagined.shape[:2], -1)
    columns = (imagined_states, imagined_predicted, imagined, imagined_rewards)
    open_loop = along([scores(agent, parts, *(column[:, k] for column in columns)) for k in range(horizon)])
    replayed = trained_on(run_dir, counters["env_frames"], config.env.action_repeat, episodes)
    return {
        "benchmark": "latent_probe",
        "probe": probe,
        "run_dir": str(run_dir),
        "env_frames": counters["env_frames"],
        "episodes": episodes,
        "mean_return": float(np.mean([episode["reward"].sum() for episode, _ in played])),
        "parts": {name: part.stop - part.start for name, part in parts.items()},
        "spread": {
            name: rmse(states[:, part], states[:, part].mean(0, keepdims=True))
            for name, part in parts.items()
        },
        "filtered": scores(agent, parts, states, filtered_states, features, rewards),
        "horizon": horizon,
        "stride": stride,
        "open_loop": open_loop,
        "reward_on_replay": reward_scores(agent, replayed, horizon, stride) if replayed else None,
    }
