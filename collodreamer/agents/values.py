"""How ColloDreamer's value V(z) learns: one class per ``value.style``.

Each style owns its critic (V and the slow target V') and offers the hooks the agent calls: after
every planner iteration, after every plan, after every executed segment and on every replay batch.
A style does nothing in the hooks it does not use. ``V`` counts the reward of its own state,
``V(z) = r(z) + gamma V(z')`` (:func:`collodreamer.models.losses.value_targets`), as the planner's
terminal term needs it.

- ``inner``: Bellman targets from the current plan after every planner iteration (Algorithm 1);
- ``after``: from the executed segment's posterior states after each plan (Fig. 2);
- ``replay``: TD(lambda) targets of real rewards on the posterior sequences of every training batch;
- ``imagination``: Dreamer's actor and critic on imagined rollouts; the actor's rollout can also
  initialise the plans (``planner.init=policy``) and compete with them (``planner.candidates``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import torch

from collodreamer.agents.base import Sampler
from collodreamer.agents.dreamer import ImaginedBehaviour
from collodreamer.models import State, WorldModel
from collodreamer.models.losses import value_targets
from collodreamer.models.value import Critic
from collodreamer.planning import Plan, PlanResult
from collodreamer.schema import Config
from collodreamer.timing import timed

Tensor = torch.Tensor
Log = Callable[[dict[str, float]], None]


class ValueStyle:
    """A critic and the hooks through which it learns; the hooks do nothing unless a style uses them."""

    def __init__(
        self,
        config: Config,
        world_model: WorldModel,
        log: Log,
        reward: Callable[[Tensor], Tensor],
        critic: Critic | None = None,
    ) -> None:
        self.config = config
        self.world_model = world_model
        self.log = log
        self.reward = reward  # r(z) of the targets: the planner's, pessimistic where it is
        self.critic = critic or Critic(world_model.feature_dim, config.value, world_model.device)

    def value_of(self, feature: Tensor) -> Tensor:
        """V(z), counting the reward of z itself."""
        return self.critic.value(feature)

    def warm_start_policy(self) -> Callable[[Tensor], Tensor] | None:
        """A policy (feature -> action in [-1, 1]) learnt by this style, if any."""
        return None

    def on_iteration(self, plan: Plan) -> None:
        """After every planner iteration while training."""

    def on_plan(self, result: PlanResult) -> None:
        """After every finite plan while training."""

    def on_segment(self, features: Tensor, actions: Tensor) -> None:
        """After an executed segment while training: its posterior features ``[1, n, D]`` and actions."""

    def on_batch(self, batch: dict[str, Tensor], post: State) -> dict[str, float]:
        """On every training batch, with its posterior states; returns metrics."""
        return {}

    def learn_held_fixed(self, sample: Sampler, plan: Callable[[Tensor], Any], plans: int) -> None:
        """Learn on a held-fixed world model's replay (``sample``) what this style learns from plans
        (``plan(feature)`` plans while training) or segments: ``plans`` of them. Styles that learn
        from replay batches learnt in :meth:`on_batch`, which the agent's ``learn`` calls."""

    def state_dict(self) -> dict[str, Any]:
        return self.critic.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.critic.load_state_dict(state)


class PlanValue(ValueStyle):
    """Styles that learn from plans or segments: Bellman targets of Eq. 10 over a batch of the latest
    ones (``value.plan_batch``)."""

    def __init__(
        self, config: Config, world_model: WorldModel, log: Log, reward: Callable[[Tensor], Tensor]
    ) -> None:
        super().__init__(config, world_model, log, reward)
        # the latest plans (or segments) besides the current one in each value batch
        self.recent: deque[tuple[Tensor, Tensor]] = deque(maxlen=config.value.plan_batch - 1)

    def targets(self, features: Tensor, actions: Tensor) -> Tensor:
        """Bellman targets of Eq. 10 for knots ``[B, K, D]`` with actions ``[B, K, A]``:
        ``T_k = r(z_k) + gamma T_{k+1}``, ``T_{K-1} = r(z_{K-1}) + gamma V'(mu(z_{K-1}, a_{K-1}))``."""
        with torch.no_grad():
            rewards = self.reward(features)
            after = self.world_model.rssm.next_feature_mean(features[:, -1], actions[:, -1])
            bootstrap = self.critic.target(after)
            # The state after the last knot only bootstraps: its reward is never read, and with
            # lam = 1 only the last value enters.
            rewards = torch.cat([rewards, torch.zeros_like(bootstrap)[:, None]], 1)
            values = torch.cat([torch.zeros_like(rewards[:, :-1]), bootstrap[:, None]], 1)
            return value_targets(rewards, values, self.config.value.gamma, 1.0)[0]

    def update(self, features: Tensor, actions: Tensor) -> float:
        """One step on ``0.5 * (V(z_k) - T_k)^2`` over the knots of this plan and of up to
        ``plan_batch - 1`` recent ones (all of one length); V' follows by tau every period."""
        features, actions = features.detach(), actions.detach()
        if self.recent:
            features = torch.cat([features, *(f for f, _ in self.recent)])
            actions = torch.cat([actions, *(a for _, a in self.recent)])
        with timed("value"):
            targets = self.targets(features, actions)
            metrics = self.critic.update(features.flatten(0, 1), targets.flatten())
        self.log({**metrics, "value/target": targets[0].mean().item()})
        return metrics["value/loss"]


class InnerValue(PlanValue):
    """``inner`` (Algorithm 1): a value step on the current plan after every ``value.update_every``-th
    planner iteration."""

    def __init__(
        self, config: Config, world_model: WorldModel, log: Log, reward: Callable[[Tensor], Tensor]
    ) -> None:
        super().__init__(config, world_model, log, reward)
        self.iterations = 0  # planner iterations while training, for value.update_every

    def on_iteration(self, plan: Plan) -> None:
        self.iterations += 1
        if self.iterations % self.config.value.update_every == 0:
            self.update(plan.features, plan.actions)

    def on_plan(self, result: PlanResult) -> None:
        self.recent.append((result.plan.features.detach(), result.plan.actions.detach()))

    def learn_held_fixed(self, sample: Sampler, plan: Callable[[Tensor], Any], plans: int) -> None:
        rssm = self.world_model.rssm
        for _ in range(plans):
            post = sample(1, 1)[1]
            plan(rssm.feature({k: v[:, 0] for k, v in post.items()}))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "value_iterations": self.iterations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        # checkpoints before the value styles were classes kept the count with the agent's counters
        self.iterations = state.get("value_iterations", state.get("counters", {}).get("iterations", 0))


class AfterValue(PlanValue):
    """``after`` (Fig. 2): ``value.after_updates`` steps on the encoded real latents of each executed
    segment, bootstrapped after its last."""

    def on_segment(self, features: Tensor, actions: Tensor) -> None:
        for _ in range(self.config.value.after_updates):
            self.update(features, actions)
        self.recent.append((features, actions))

    def learn_held_fixed(self, sample: Sampler, plan: Callable[[Tensor], Any], plans: int) -> None:
        steps = self.config.planner.replan_every
        for _ in range(plans):
            data, post = sample(1, steps + 1)
            features = self.world_model.rssm.feature(post)[:, :-1]
            for _ in range(self.config.value.after_updates):
                self.update(features, data["action"][:, 1:])


class ReplayValue(ValueStyle):
    """``replay``: TD(lambda) targets of the real rewards along replayed sequences, bootstrapped by V'
    at the posterior's mean features (the kind of feature the planner's knots are)."""

    def on_batch(self, batch: dict[str, Tensor], post: State) -> dict[str, float]:
        with timed("value"):
            features = self.world_model.rssm.mean_feature(post).detach()
            with torch.no_grad():
                values = self.critic.target(features)
            targets, valid = value_targets(
                batch["reward"].float(),
                values,
                self.config.value.gamma,
                self.config.value.lam,
                batch["is_first"],
                batch["is_terminal"],
            )
            weights = valid.float() / valid.float().mean().clamp(min=1e-6)
            metrics = self.critic.update(features[:, :-1], targets, weights)
        return {**metrics, "value/target": targets[valid].mean().item() if valid.any() else 0.0}


class ImaginationValue(ValueStyle):
    """``imagination``: Dreamer's actor and critic learnt on imagined rollouts of the world model.
    Dreamer's critic predicts the rewards from the next state on, so the planner's V adds the
    state's own reward: ``V(z) = r(z) + gamma V_dreamer(z)``."""

    def __init__(
        self, config: Config, world_model: WorldModel, log: Log, reward: Callable[[Tensor], Tensor]
    ) -> None:
        self.behaviour = ImaginedBehaviour(config, world_model, world_model.action_dim, reward)
        super().__init__(config, world_model, log, reward, self.behaviour.critic)

    def value_of(self, feature: Tensor) -> Tensor:
        return self.behaviour.value_of(feature)

    def warm_start_policy(self) -> Callable[[Tensor], Tensor] | None:
        return self.behaviour.actor.mode

    def on_batch(self, batch: dict[str, Tensor], post: State) -> dict[str, float]:
        return self.behaviour.train(post)

    def state_dict(self) -> dict[str, Any]:
        return self.behaviour.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.behaviour.load_state_dict(state)


STYLES: dict[str, type[ValueStyle]] = {
    "inner": InnerValue,
    "after": AfterValue,
    "replay": ReplayValue,
    "imagination": ImaginationValue,
}


def make_value_style(
    config: Config, world_model: WorldModel, log: Log, reward: Callable[[Tensor], Tensor]
) -> ValueStyle:
    """The value learner ``config.value.style`` names; ``reward`` is the r(z) of its targets."""
    return STYLES[config.value.style](config, world_model, log, reward)
