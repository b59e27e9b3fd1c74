"""How good is a ColloDreamer run's value network? Measured on its checkpoint and its real episodes
(``collodreamer diagnose value RUN_DIR``):

- accuracy: V(z_t) at the posterior's mean features of the run's last ``episodes`` (10) episodes against
  the discounted real reward-to-go ``G_t = sum_{j>=t} gamma^(j-t) r_j`` (V counts the reward of its own
  state), for the steps at least ``tail`` (300) steps before the episode's end (the reward-to-go is cut
  by the time limit: what it misses is at most ``gamma^tail`` of the value); Pearson correlation,
  bias (mean V - G), RMSE, and the means of both;
- the planner's view: ``plans`` (20) plans from replayed states, and at their terminal state
  ``mu(z_H, a_H)``: the share where the value's clip binds, and the norm of dV/dz there;
- batch norm and dropout: the mean |V_train - V_eval| of the same inputs in training and in eval mode,
  on a batch of replayed states from many episodes and on the knots of one plan.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from collodreamer.analysis.held_fixed import build_agent, filter_replay
from collodreamer.config import ConfigError


def reward_to_go(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t = sum_{j>=t} gamma^(j-t) r_j`` to the end of the episode."""
    out, total = torch.zeros_like(rewards), rewards.new_zeros(())
    for t in reversed(range(len(rewards))):
        total = rewards[t] + gamma * total
        out[t] = total
    return out


@torch.no_grad()
def value_accuracy(
    agent, replay, gamma: float, episodes: int = 10, tail: int = 300
) -> dict[str, float] | None:
    """V at the posterior mean features of the replay's last ``episodes`` episodes against the real
    discounted reward-to-go, for the steps at least ``tail`` before each episode's end (None when no
    episode is longer than that)."""
    rssm = agent.world_model.rssm
    values, returns = [], []
    for post, episode in list(zip(replay.posts, replay.episodes, strict=True))[-episodes:]:
        keep = episode["reward"].shape[0] - tail
        if keep <= 0:
            continue
        values.append(agent.value_of(rssm.mean_feature(post)[0, :keep]))
        returns.append(reward_to_go(episode["reward"].float(), gamma)[:keep])
    if not values:
        return None
    v, g = torch.cat(values).cpu().numpy(), torch.cat(returns).cpu().numpy()
    return {
        "steps": len(v),
        "correlation": float(np.corrcoef(v, g)[0, 1]),
        "bias": float(np.mean(v - g)),
        "rmse": float(np.sqrt(np.mean((v - g) ** 2))),
        "value_mean": float(np.mean(v)),
        "return_to_go_mean": float(np.mean(g)),
        "truncation_bound": gamma**tail,
    }


def raw_value(agent, features: torch.Tensor) -> torch.Tensor:
    """The value network's output before any clip."""
    return agent.critic.value.net(features).squeeze(-1)


def train_eval_gap(agent, features: torch.Tensor) -> float:
    network = agent.critic.value
    with torch.no_grad():
        evaluated = network(features)
        network.train()
        torch.manual_seed(0)
        trained = network(features)
        network.eval()
    return float((trained - evaluated).abs().mean())


def diagnose_value(run_dir: Path, episodes: int = 10, tail: int = 300, plans: int = 20) -> dict[str, Any]:
    """The value's accuracy on the run's last ``episodes`` episodes, the planner's view of it at the
    terminal states of ``plans`` plans, and its train/eval gap."""
    config, agent, payload = build_agent(run_dir, [])
    if config.agent != "collodreamer":
        raise ConfigError(f"{run_dir} is a {config.agent} run; its checkpoint holds no ColloDreamer value")
    agent.critic.value.load_state_dict(payload["agent"]["value"])
    gamma = config.value.gamma
    replay = filter_replay(agent, run_dir, config)
    rssm = agent.world_model.rssm

    accuracy = value_accuracy(agent, replay, gamma, episodes, tail)

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    starts = [replay.windows(1, 1, rng)[1] for _ in range(plans)]
    terminal, knots = [], None
    for post in starts:
        result = agent.plan(rssm.feature({k: v[:, 0] for k, v in post.items()}), None, training=False)
        plan = result.plan
        terminal.append(rssm.next_feature_mean(plan.features[:, -1], plan.actions[:, -1]))
        knots = plan.features[0] if knots is None else knots
    terminal = torch.cat(terminal)
    raw = raw_value(agent, terminal).detach()
    bounds = agent.critic.value.bounds
    binds = float(((raw < bounds[0]) | (raw > bounds[1])).float().mean()) if bounds else 0.0
    point = terminal.clone().requires_grad_(True)
    with torch.enable_grad():
        (gradient,) = torch.autograd.grad(agent.value_of(point).sum(), point)
    _, batch_post = replay.windows(config.replay.batch_size, config.replay.batch_length, rng)
    replayed = rssm.mean_feature(batch_post).flatten(0, 1)
    planner = {
        "plans": plans,
        "terminal_value_mean": float(agent.value_of(terminal).detach().mean()),
        "clip_binds_share": binds,
        "grad_norm_mean": float(gradient.norm(dim=-1).mean()),
        "grad_zero_share": float((gradient.norm(dim=-1) == 0).float().mean()),
    }
    gap = {"replay_batch": train_eval_gap(agent, replayed), "one_plan": train_eval_gap(agent, knots)}
    return {
        "benchmark": "value_diagnostics",
        "run": str(run_dir),
        "env_frames": payload["counters"]["env_frames"],
        "value": dict(vars(config.value)),
        "accuracy": accuracy,
        "planner": planner,
        "train_eval_gap": gap,
    }
