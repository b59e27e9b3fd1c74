"""The recurrent state-space model (PlaNet/Dreamer): a GRU deterministic path ``h`` and a stochastic
latent ``s`` that is Gaussian (DreamerV1) or ``stoch`` categoricals of ``classes`` classes with
straight-through gradients (DreamerV2). The feature of a state is ``z = [s, h]``.

Every function is batched over any leading dimensions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from collodreamer.models.losses import categorical_kl, gaussian_kl
from collodreamer.schema import ModelConfig

State = dict[str, torch.Tensor]


class GRUCell(nn.Module):
    """A GRU cell written with one linear layer (optionally layer-normed, as in DreamerV2), so that
    torch.func transforms (vmap, jacrev) see only plain tensor ops."""

    def __init__(self, in_dim: int, size: int, norm: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim + size, 3 * size, bias=not norm)
        self.norm = nn.LayerNorm(3 * size) if norm else nn.Identity()

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        reset, cand, update = self.norm(self.linear(torch.cat([x, h], -1))).chunk(3, -1)
        reset = torch.sigmoid(reset)
        cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update - 1.0)  # bias towards keeping the old state early in training
        return update * cand + (1.0 - update) * h

    def forward_with_jacobian(
        self, x: torch.Tensor, h: torch.Tensor, dx: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The new state ``[N, H]`` and its Jacobian ``[N, H, M + H]`` with respect to ``[u, h]``,
        given ``dx = dx/du`` ``[N, X, M]`` for some input ``u`` of x."""
        size = h.shape[-1]
        weight_x, weight_h = self.linear.weight.split([x.shape[-1], size], 1)
        pre = self.linear(torch.cat([x, h], -1))
        jac = torch.cat([weight_x @ dx, weight_h.expand(x.shape[0], -1, -1)], -1)  # d pre / d [u, h]
        if isinstance(self.norm, nn.LayerNorm):
            mean = pre.mean(-1, keepdim=True)
            sigma = (pre.var(-1, unbiased=False, keepdim=True) + self.norm.eps).sqrt()
            normed = (pre - mean) / sigma
            pre = normed * self.norm.weight + self.norm.bias
            # d LN(p) = gamma / sigma * (dp - mean(dp) - normed * mean(normed * dp))
            centred = (
                jac
                - jac.mean(1, keepdim=True)
                - normed[..., None] * (normed[..., None] * jac).mean(1, keepdim=True)
            )
            jac = (self.norm.weight / sigma)[..., None] * centred
        reset, cand, update = pre.chunk(3, -1)
        d_reset, d_cand, d_update = jac.chunk(3, 1)
        reset = torch.sigmoid(reset)
        new_cand = torch.tanh(reset * cand)
        update = torch.sigmoid(update - 1.0)
        d_reset = (reset * (1 - reset))[..., None] * d_reset
        d_new_cand = (1 - new_cand**2)[..., None] * (reset[..., None] * d_cand + cand[..., None] * d_reset)
        d_update = (update * (1 - update))[..., None] * d_update
        jac = update[..., None] * d_new_cand + (new_cand - h)[..., None] * d_update
        jac[..., -size:] += torch.diag_embed(1.0 - update)
        return update * new_cand + (1.0 - update) * h, jac


class RSSM(nn.Module):
    def __init__(self, config: ModelConfig, action_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.config = config
        self.categorical = config.latent == "categorical"
        self.stoch_dim = config.stoch * config.classes if self.categorical else config.stoch
        self.feature_dim = self.stoch_dim + config.deter
        stats_dim = self.stoch_dim if self.categorical else 2 * config.stoch
        hidden = config.hidden
        self.img_in = nn.Sequential(nn.Linear(self.stoch_dim + action_dim, hidden), nn.ELU())
        self.gru = GRUCell(hidden, config.deter, config.gru_norm)
        self.img_out = nn.Sequential(nn.Linear(config.deter, hidden), nn.ELU(), nn.Linear(hidden, stats_dim))
        self.obs_out = nn.Sequential(
            nn.Linear(config.deter + embed_dim, hidden), nn.ELU(), nn.Linear(hidden, stats_dim)
        )

    # --- distributions -------------------------------------------------------------------------
    def _stats(self, raw: torch.Tensor) -> State:
        if self.categorical:
            logits = raw.reshape(*raw.shape[:-1], self.config.stoch, self.config.classes)
            probs = torch.softmax(logits, -1)
            if self.config.unimix > 0:
                probs = (1.0 - self.config.unimix) * probs + self.config.unimix / self.config.classes
            return {"logp": torch.log(probs)}
        mean, std = raw.chunk(2, -1)
        return {"mean": mean, "std": F.softplus(std) + self.config.min_std}

    def _sample(self, stats: State) -> torch.Tensor:
        """A reparameterised sample: Gaussian noise, or a one-hot draw with straight-through gradients."""
        if self.categorical:
            logp = stats["logp"]
            gumbel = -torch.log(-torch.log(torch.rand_like(logp).clamp(1e-20, 1.0)))
            one_hot = F.one_hot((logp + gumbel).argmax(-1), self.config.classes).to(logp.dtype)
            probs = logp.exp()
            return (one_hot + probs - probs.detach()).flatten(-2)
        return stats["mean"] + stats["std"] * torch.randn_like(stats["std"])

    def _mean(self, stats: State) -> torch.Tensor:
        """The mean of the stochastic latent (class probabilities for categoricals)."""
        return stats["logp"].exp().flatten(-2) if self.categorical else stats["mean"]

    def log_prob(self, stats: State, stoch: torch.Tensor) -> torch.Tensor:
        """log q(s) of a stochastic latent ``stoch`` (flattened one-hot for categoricals) per state."""
        if self.categorical:
            one_hot = stoch.reshape(*stoch.shape[:-1], self.config.stoch, self.config.classes)
            return (one_hot * stats["logp"]).sum((-2, -1))
        normal = torch.distributions.Normal(stats["mean"], stats["std"])
        return normal.log_prob(stoch).sum(-1)

    def kl(self, post: State, prior: State) -> torch.Tensor:
        """KL(post || prior) per state."""
        if self.categorical:
            return categorical_kl(post["logp"], prior["logp"])
        return gaussian_kl(post["mean"], post["std"], prior["mean"], prior["std"])

    # --- steps ---------------------------------------------------------------------------------
    def initial(self, batch_shape: tuple[int, ...], device: torch.device) -> State:
        zeros = torch.zeros
        return {
            "deter": zeros(*batch_shape, self.config.deter, device=device),
            "stoch": zeros(*batch_shape, self.stoch_dim, device=device),
        }

    def feature(self, state: State) -> torch.Tensor:
        return torch.cat([state["stoch"], state["deter"]], -1)

    def mean_feature(self, state: State) -> torch.Tensor:
        """The feature with the stochastic latent's mean in place of its sample (class probabilities
        for categoricals): the kind of feature the planner's knots are, since mu(z, a) is a mean."""
        return torch.cat([self._mean(state), state["deter"]], -1)

    def _deter_step(self, stoch: torch.Tensor, deter: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.gru(self.img_in(torch.cat([stoch, action], -1)), deter)

    def img_step(self, state: State, action: torch.Tensor, sample: bool = True) -> State:
        """The prior q(s_{t+1} | s_t, a_t) (Eq. 2): one step of imagination."""
        deter = self._deter_step(state["stoch"], state["deter"], action)
        stats = self._stats(self.img_out(deter))
        stoch = self._sample(stats) if sample else self._mean(stats)
        return {"deter": deter, "stoch": stoch, **stats}

    def _posterior(self, deter: torch.Tensor, embed_in: torch.Tensor) -> State:
        """The posterior given the new deterministic state and the observation's share of the first
        layer of ``obs_out`` (``embed_in``, see :meth:`_embed_in`)."""
        first, rest = self.obs_out[0], self.obs_out[1:]
        deter_in = F.linear(deter, first.weight[:, : self.config.deter])
        stats = self._stats(rest(deter_in + embed_in))
        return {"deter": deter, "stoch": self._sample(stats), **stats}

    def _embed_in(self, embed: torch.Tensor) -> torch.Tensor:
        """The observation embedding's share of ``obs_out``'s first layer (with its bias): computed for a
        whole sequence at once, outside the recurrence."""
        first = self.obs_out[0]
        return F.linear(embed, first.weight[:, self.config.deter :], first.bias)

    def obs_step(
        self, state: State, action: torch.Tensor, embed: torch.Tensor, is_first: torch.Tensor
    ) -> State:
        """The posterior p(s_{t+1} | s_t, a_t, o_{t+1}) (Eq. 1); resets where is_first."""
        keep = (~is_first).to(action.dtype).unsqueeze(-1)
        deter = self._deter_step(state["stoch"] * keep, state["deter"] * keep, action * keep)
        return self._posterior(deter, self._embed_in(embed))

    def observe(
        self, embed: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor
    ) -> tuple[State, State]:
        """Filter a batch of sequences ``[B, T, ...]``; returns posteriors and priors ``[B, T, ...]``
        (the priors' distribution statistics and deterministic states: the KL needs no prior sample).

        ``action[:, t]`` is the action that led to step ``t`` (the replay layout). Only the recurrence
        runs step by step; the observation's share of the posterior layer and the prior's statistics
        are computed for the whole sequence at once."""
        state = self.initial(embed.shape[:1], embed.device)
        embed_in = self._embed_in(embed)
        keep = (~is_first).to(action.dtype).unsqueeze(-1)
        posts = []
        for t in range(embed.shape[1]):
            deter = self._deter_step(
                state["stoch"] * keep[:, t], state["deter"] * keep[:, t], action[:, t] * keep[:, t]
            )
            state = self._posterior(deter, embed_in[:, t])
            posts.append(state)
        post = stack(posts, 1)
        prior = {"deter": post["deter"], **self._stats(self.img_out(post["deter"]))}
        return post, prior

    def imagine(
        self, start: State, actions: torch.Tensor | Callable[[torch.Tensor], torch.Tensor], horizon: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Roll the prior forward ``horizon`` steps from ``start`` under given actions ``[H, ...]`` or a
        policy (feature -> action). Returns time-major features ``[H+1, ...]`` (the start first) and
        the actions taken ``[H, ...]``."""
        state = {"deter": start["deter"], "stoch": start["stoch"]}
        features, taken = [self.feature(state)], []
        for t in range(horizon):
            action = actions(features[-1]) if callable(actions) else actions[t]
            state = self.img_step(state, action)
            features.append(self.feature(state))
            taken.append(action)
        return torch.stack(features), torch.stack(taken)

    def _next_prior(self, feature: torch.Tensor, action: torch.Tensor) -> tuple[State, torch.Tensor]:
        """The prior's statistics and deterministic state after taking ``action`` from feature ``z``."""
        stoch, deter = feature.split([self.stoch_dim, self.config.deter], -1)
        deter = self._deter_step(stoch, deter, action)
        return self._stats(self.img_out(deter)), deter

    def next_feature_mean(self, feature: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """mu(z, a): the feature of the prior's mean after taking ``action`` from feature ``z``.

        This is the planner's dynamics function (Eq. 5); it is a deterministic function of z and a.
        """
        stats, deter = self._next_prior(feature, action)
        return torch.cat([self._mean(stats), deter], -1)

    def next_feature_sample(self, feature: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """A draw of the prior's feature after taking ``action`` from feature ``z``: the stochastic twin of
        :meth:`next_feature_mean` (Eq. 2 sampled, the deterministic state the same)."""
        stats, deter = self._next_prior(feature, action)
        return torch.cat([self._sample(stats), deter], -1)

    def next_feature_mean_jacobian(
        self, feature: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """mu(z, a) ``[N, D]`` and its Jacobian with respect to ``[z, a]`` ``[N, D, D + A]``, by hand.

        The chain rule through this network's layers costs a fraction of autograd's Jacobian, which
        pushes D cotangents through every weight matrix; tests check it against ``torch.func.jacrev``.
        """
        stoch, deter = feature.split([self.stoch_dim, self.config.deter], -1)
        inputs = torch.cat([stoch, action], -1)
        linear_in = self.img_in[0]
        x, dx = _elu_jacobian(linear_in(inputs), linear_in.weight)  # d x / d [s, a]
        deter, d_deter = self.gru.forward_with_jacobian(x, deter, dx)  # columns [s, a, h]
        first, last = self.img_out[0], self.img_out[2]
        hidden, d_hidden = _elu_jacobian(first(deter), first.weight)
        if self.categorical:
            logits = last(hidden).reshape(-1, self.config.stoch, self.config.classes)
            probs = torch.softmax(logits, -1)
            d_logits = (last.weight @ d_hidden @ d_deter).reshape(
                -1, self.config.stoch, self.config.classes, d_deter.shape[-1]
            )
            # d softmax = p * (dl - sum_k p_k dl_k), per categorical variable
            d_probs = probs[..., None] * (d_logits - (probs[..., None] * d_logits).sum(2, keepdim=True))
            mean = (1.0 - self.config.unimix) * probs + self.config.unimix / self.config.classes
            mean, d_mean = mean.flatten(1), (1.0 - self.config.unimix) * d_probs.flatten(1, 2)
        else:
            weight, bias = last.weight[: self.config.stoch], last.bias[: self.config.stoch]
            mean = hidden @ weight.T + bias
            d_mean = weight @ d_hidden @ d_deter
        jac = torch.cat([d_mean, d_deter], 1)  # columns ordered [s, a, h]
        s_cols, a_cols, h_cols = jac.split([self.stoch_dim, action.shape[-1], self.config.deter], -1)
        return torch.cat([mean, deter], -1), torch.cat([s_cols, h_cols, a_cols], -1)


def _elu_jacobian(pre: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``elu(pre)`` and ``diag(elu'(pre)) @ weight`` for a linear layer's output ``pre``."""
    slope = torch.where(pre > 0, torch.ones_like(pre), pre.exp())
    return F.elu(pre), slope[..., None] * weight


def stack(states: list[State], dim: int) -> State:
    return {k: torch.stack([s[k] for s in states], dim) for k in states[0]}


def flatten(state: State) -> State:
    """Merge batch and time: ``[B, T, ...] -> [B*T, ...]``."""
    return {k: v.reshape(-1, *v.shape[2:]) for k, v in state.items()}
