"""Pure math of the world model and of value learning, each checked against its equation in tests."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Stats = dict[str, torch.Tensor]


def gaussian_kl(
    mean_p: torch.Tensor, std_p: torch.Tensor, mean_q: torch.Tensor, std_q: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean_p, std_p^2) || N(mean_q, std_q^2)) of diagonal Gaussians, summed over the last axis:
    the KL term of Eq. 4 for Gaussian latents (posterior p, prior q)."""
    var_ratio = (std_p / std_q) ** 2
    term = ((mean_p - mean_q) / std_q) ** 2
    return 0.5 * (var_ratio + term - 1.0 - torch.log(var_ratio)).sum(-1)


def categorical_kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of independent categoricals given log-probabilities ``[..., variables, classes]``,
    summed over variables and classes: the KL term of Eq. 4 for categorical latents (Fig. 12)."""
    return (logp.exp() * (logp - logq)).sum((-2, -1))


def kl_loss(
    kl: Callable[[Stats, Stats], torch.Tensor],
    post: Stats,
    prior: Stats,
    balance: float | None,
    free_nats: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The KL term of Eq. 4 with free nats, optionally balanced as in Listing 1.

    Balanced: ``alpha * max(mean KL(sg(post) || prior), free) + (1 - alpha) * max(mean KL(post ||
    sg(prior)), free)`` with ``alpha = balance``: the prior is pulled towards the posterior faster than
    the posterior is regularised. Unbalanced (``balance=None``): ``max(mean KL(post || prior), free)``.
    Returns (loss, mean KL value for logging).
    """
    value = kl(post, prior)
    free = torch.as_tensor(free_nats, dtype=value.dtype, device=value.device)
    if balance is None:
        return torch.maximum(value.mean(), free), value.mean().detach()
    sg = {k: v.detach() for k, v in post.items()}, {k: v.detach() for k, v in prior.items()}
    prior_side = torch.maximum(kl(sg[0], prior).mean(), free)
    post_side = torch.maximum(kl(post, sg[1]).mean(), free)
    return balance * prior_side + (1.0 - balance) * post_side, value.mean().detach()


def gaussian_nll(mean: torch.Tensor, target: torch.Tensor, event_dims: int) -> torch.Tensor:
    """Negative log-likelihood under a unit-variance Gaussian, without the constant:
    ``0.5 * sum (target - mean)^2`` over the last ``event_dims`` axes (Eq. 4's reconstruction and
    reward terms)."""
    squared = 0.5 * (target - mean) ** 2
    return squared.sum(tuple(range(-event_dims, 0))) if event_dims else squared


def image_nll(mean: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``gaussian_nll(mean, target, 3).mean()`` for images ``[..., H, W, C]`` (Eq. 4's reconstruction
    term), fused: one pass over the pixels forward and one backward where the elementwise form takes
    eight (a fifth of a pixel world-model update on a CPU)."""
    return 0.5 * F.mse_loss(mean, target, reduction="sum") / target.shape[:-3].numel()


def tanh_gaussian_entropy(mean: torch.Tensor, std: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One-sample estimate of the entropy of ``a = tanh(u)``, ``u ~ N(mean, std^2)``, summed over the
    last axis: by the change of variables ``H[a] = H[u] + E[log(1 - tanh(u)^2)]`` (SAC, Haarnoja et al.
    2018, App. C) with ``u = mean + std * noise``. Saturated actions (``|a|`` near 1) have very low
    entropy, so a bonus on it keeps the squashed policy out of the flat ends of tanh."""
    u = mean + std * noise
    gaussian = torch.log(std) + 0.5 * math.log(2.0 * math.pi * math.e)
    log_jacobian = 2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u))  # log(1 - tanh(u)^2)
    return (gaussian + log_jacobian).sum(-1)


def lambda_returns(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """TD(lambda) returns of an imagined trajectory (Dreamer, Eq. 6 of Hafner et al. 2019): the
    targets of :func:`value_targets` in Dreamer's convention, where a state's value leaves out its own
    reward.

    Time-major inputs ``[H, ...]`` for the transitions ``s_t -> s_{t+1}``: ``rewards[t] = r(s_{t+1})``,
    ``values[t] = v(s_{t+1})``. Returns ``R[t]`` for ``t = 0..H-1``:

        R_t = r_t + gamma * ((1 - lam) * v_t + lam * R_{t+1}),   R_H := v_{H-1}
    """
    pad = torch.zeros_like(rewards[:1])
    shifted_rewards = torch.cat([rewards, pad]).movedim(0, -1)
    shifted_values = torch.cat([pad, values]).movedim(0, -1)
    return value_targets(shifted_rewards, shifted_values, gamma, lam)[0].movedim(-1, 0).contiguous()


def value_targets(
    rewards: torch.Tensor,
    values: torch.Tensor,
    gamma: float,
    lam: float,
    is_first: torch.Tensor | None = None,
    is_terminal: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TD(lambda) targets for a value that counts the reward of its own state,
    ``V(z_k) = r(z_k) + gamma * V(z_{k+1})`` (Eq. 10's terminal value in Bellman form).

    ``rewards [..., K]`` are ``r(z_0..z_{K-1})`` and ``values [..., K]`` the target network's
    ``V'(z_0..z_{K-1})``; the last state only bootstraps. For ``k = 0..K-2``:

        G_k = r_k + gamma * ((1 - lam) * V'_{k+1} + lam * G_{k+1}),   G_{K-1} := V'_{K-1}

    ``lam = 1`` gives the plain discounted sum ``sum_{j=k}^{K-2} gamma^(j-k) r_j + gamma^(K-1-k) V'_{K-1}``
    (a plan's targets, with ``z_{K-1} = mu(z_H, a_H)``). Replayed sequences may cross episodes:
    where ``is_terminal[k]`` the future is zero (``G_k = r_k``); where ``is_first[k+1]`` the episode
    was cut by its time limit, ``G_k`` is unknown: it is set to ``V'_k`` for the steps before it and
    left out of the loss. Returns the targets and a mask of valid ones, both ``[..., K-1]``.
    """
    steps = rewards.shape[-1] - 1
    terminal = is_terminal[..., :steps] if is_terminal is not None else torch.zeros_like(rewards[..., :steps])
    terminal = terminal.bool()
    cut = is_first[..., 1:].bool() & ~terminal if is_first is not None else torch.zeros_like(terminal)
    base, targets = values[..., -1], []
    for k in reversed(range(steps)):
        target = rewards[..., k] + gamma * ((1.0 - lam) * values[..., k + 1] + lam * base)
        target = torch.where(terminal[..., k], rewards[..., k], target)
        base = torch.where(cut[..., k], values[..., k], target)
        targets.append(base)
    return torch.stack(targets[::-1], -1), ~cut
