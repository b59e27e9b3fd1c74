"""ColloDreamer's math (Eq. 9-11, Algorithm 1) against hand computations, and its switches."""

from dataclasses import replace

import pytest
import torch
from conftest import assert_dense_gauss_newton_step
from torch import nn

from collodreamer.agents import ModelBased, Planner, make_agent
from collodreamer.agents.collodreamer import (
    ColloDreamerAgent,
    latent_objective,
    linear_schedule,
    transition_log_ratio,
)
from collodreamer.config import ConfigError, make_config
from collodreamer.models.losses import value_targets
from collodreamer.models.value import ValueNetwork
from collodreamer.planning import collocate, random_plan
from collodreamer.planning.gauss_newton import gauss_newton_step
from collodreamer.planning.problem import (
    Objective,
    lagrangian,
    planned_return,
    rollout_features,
    rollout_return,
)
from collodreamer.schema import PlannerConfig, ValueConfig
from collodreamer.spec import EnvSpec


def test_plan_targets_by_hand_on_a_3_step_plan():
    """T_k = r_k + gamma T_{k+1} with T_H = r_H + gamma V'(mu(z_H, a_H)): lam = 1 on the knots
    followed by the bootstrap state."""
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0])  # r(z_0..z_3), H = 3; the bootstrap state's unused
    values = torch.tensor([0.0, 0.0, 0.0, 0.0, 10.0])  # V'(mu(z_3, a_3)) last
    g = 0.9
    expected = torch.tensor(
        [
            1 + g * 2 + g**2 * 3 + g**3 * 4 + g**4 * 10,
            2 + g * 3 + g**2 * 4 + g**3 * 10,
            3 + g * 4 + g**2 * 10,
            4 + g * 10,
        ]
    )
    targets, valid = value_targets(rewards, values, g, 1.0)
    assert torch.allclose(targets, expected) and valid.all()
    # gamma = 1 is Eq. 9: the plain sum of the remaining rewards plus the value.
    assert torch.allclose(value_targets(rewards, values, 1.0, 1.0)[0], torch.tensor([20.0, 19.0, 17.0, 14.0]))


def test_bellman_fixed_point_is_the_discounted_sum():
    """With a constant reward r, V = r / (1 - gamma) is the fixed point: targets computed from it
    reproduce it at every knot (the old targets, without gamma on V', gave about 106 r at 0.99)."""
    gamma, r = 0.99, 1.5
    fixed = r / (1 - gamma)
    rewards = torch.full((31,), r)
    values = torch.full((31,), fixed)
    for lam in (1.0, 0.95, 0.0):
        targets, _ = value_targets(rewards, values, gamma, lam)
        assert torch.allclose(targets, torch.full((30,), fixed))


def test_lambda_targets_by_hand_with_episode_boundaries():
    r = torch.tensor([0.0, 1.0, 2.0, 0.0, 3.0, 4.0])
    v = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    g, lam = 0.5, 0.5
    # Plain recursion: G_4 = r_4 + g * v_5, G_k = r_k + g ((1 - lam) v_{k+1} + lam G_{k+1}).
    g4 = 3 + g * 60
    g3 = 0 + g * (0.5 * 50 + 0.5 * g4)
    targets, valid = value_targets(r, v, g, lam)
    assert targets[4] == pytest.approx(g4) and targets[3] == pytest.approx(g3)
    assert valid.all()
    # A new episode starts at step 3 (its time limit cut the last one): G_2 is unknown, set to V'_2
    # and masked; G_1 bootstraps from it.
    first = torch.tensor([True, False, False, True, False, False])
    targets, valid = value_targets(r, v, g, lam, is_first=first)
    assert valid.tolist() == [True, True, False, True, True]
    assert targets[2] == pytest.approx(30.0)
    assert targets[1] == pytest.approx(1 + g * (0.5 * 30 + 0.5 * 30))
    assert targets[3] == pytest.approx(g3)
    # A terminal state at step 2 ends the future there: G_2 = r_2, and it is a valid target.
    terminal = torch.tensor([False, False, True, False, False, False])
    targets, valid = value_targets(r, v, g, lam, is_first=first, is_terminal=terminal)
    assert targets[2] == pytest.approx(2.0) and valid[2]
    assert targets[1] == pytest.approx(1 + g * (0.5 * 30 + 0.5 * 2))


GOAL = torch.tensor([0.2, 0.4])


def objective(value=None, gamma=0.9) -> Objective:
    return Objective(
        dynamics=lambda z, a: 0.9 * z + a,
        reward=lambda z: 1.0 - (z - GOAL).pow(2).sum(-1),
        action_dim=2,
        gamma=gamma,
        value=value,
    )


def test_discounted_objective_by_hand_on_a_3_step_plan():
    """Eq. 10 (without the constant r(z_0)): sum_k gamma^k r(z_k) + w gamma^(H+1) V(mu(z_H, a_H))."""
    plan = random_plan(torch.zeros(1, 2), horizon=3, action_dim=2, config=PlannerConfig())
    value = lambda z: 5.0 * z.sum(-1)  # noqa: E731
    g = 0.9
    z, a = plan.features[0], plan.actions[0]
    r = [1.0 - (z[k] - GOAL).pow(2).sum() for k in range(4)]
    terminal = 5.0 * (0.9 * z[3] + a[3]).sum()
    expected = g * r[1] + g**2 * r[2] + g**3 * r[3] + g**4 * terminal
    assert planned_return(objective(value, g), plan).item() == pytest.approx(expected.item(), rel=1e-5)
    eq9 = r[1] + r[2] + r[3] + terminal
    assert planned_return(objective(value, 1.0), plan).item() == pytest.approx(eq9.item(), rel=1e-5)
    weighted = replace(objective(value, g), value_weight=0.5)
    expected = g * r[1] + g**2 * r[2] + g**3 * r[3] + 0.5 * g**4 * terminal
    assert planned_return(weighted, plan).item() == pytest.approx(expected.item(), rel=1e-5)


def test_a_feasible_plan_promises_what_a_rollout_of_its_actions_predicts():
    """Eq. 10 at the knots equals Eq. 10 of the model rollout of the plan's actions when the knots are
    that rollout, and differs by the discounted reward of a knot moved off it."""
    start, actions = (
        torch.tensor([[0.5, -0.3]]),
        0.3 * torch.randn(1, 4, 2, generator=torch.Generator().manual_seed(0)),
    )
    features = torch.cat(
        [start[:, None], rollout_features(lambda z, a: 0.9 * z + a, start, actions[:, :-1])], 1
    )
    plan = replace(
        random_plan(start, horizon=3, action_dim=2, config=PlannerConfig()),
        features=features,
        actions=actions,
    )
    value, g = (lambda z: 5.0 * z.sum(-1)), 0.9
    rolled = rollout_return(objective(value, g), start, actions)
    assert planned_return(objective(value, g), plan).item() == pytest.approx(rolled.item(), rel=1e-6)
    moved = features.clone()
    moved[0, 2] = GOAL
    reward = lambda z: 1.0 - (z - GOAL).pow(2).sum(-1)  # noqa: E731
    expected = rolled + g**2 * (reward(GOAL) - reward(features[0, 2]))
    assert planned_return(objective(value, g), replace(plan, features=moved)).item() == pytest.approx(
        expected.item(), rel=1e-5
    )


def test_zero_value_plans_exactly_like_latco():
    zero = lambda z: torch.zeros(z.shape[:-1])  # noqa: E731
    config = PlannerConfig(horizon=6, iterations=15)
    start = torch.tensor([[0.5, -0.3]])
    torch.manual_seed(3)
    with_value = collocate(objective(zero), start, config)
    torch.manual_seed(3)
    latco = collocate(objective(None), start, config)
    assert torch.allclose(with_value.plan.features, latco.plan.features)
    assert torch.allclose(with_value.plan.actions, latco.plan.actions)
    assert with_value.diagnostics["planned_return"] == pytest.approx(latco.diagnostics["planned_return"])


def test_gauss_newton_with_value_solves_the_linearised_problem():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
    value = lambda z: 20 * net(z).squeeze(-1)  # noqa: E731
    obj = objective(value, 0.95)
    plan = random_plan(torch.randn(1, 2), horizon=3, action_dim=2, config=PlannerConfig())
    assert_dense_gauss_newton_step(obj, plan)
    assert lagrangian(obj, gauss_newton_step(obj, plan, 1e-3)[0]) < lagrangian(obj, plan)


def test_regulariser_switches_change_the_network():
    before = ValueNetwork(4, ValueConfig(units=8, layers=2, norm="before"))
    after = ValueNetwork(4, ValueConfig(units=8, layers=2, norm="after"))
    kinds = lambda net: [type(m).__name__ for m in net.net.net]  # noqa: E731
    assert kinds(before) == ["Linear", "BatchNorm1d", "ELU", "Linear", "BatchNorm1d", "ELU", "Linear"]
    assert kinds(after) == ["Linear", "ELU", "BatchNorm1d", "Linear", "ELU", "BatchNorm1d", "Linear"]
    assert "BatchNorm1d" not in kinds(ValueNetwork(4, ValueConfig(units=8, layers=2)))

    dropped = ValueNetwork(4, ValueConfig(units=64, layers=2, dropout=[0.5, 0.0]))
    assert [m.p for m in dropped.modules() if isinstance(m, nn.Dropout)] == [0.5]
    x = torch.randn(16, 4)
    dropped.eval()
    assert torch.equal(dropped(x), dropped(x))  # dropout off in eval mode
    dropped.train()
    torch.manual_seed(0)
    assert not torch.equal(dropped(x), dropped(x))  # and on in training mode

    clipped = ValueNetwork(4, ValueConfig(units=8, layers=1, clip=True, clip_low=-0.5, clip_high=0.25))
    with torch.no_grad():
        clipped.net.net[-1].bias.fill_(100.0)
    assert torch.all(clipped(x) == 0.25)
    with torch.no_grad():
        clipped.net.net[-1].bias.fill_(-100.0)
    assert torch.all(clipped(x) == -0.5)
    with pytest.raises(ValueError, match="one probability per hidden layer"):
        ValueNetwork(4, ValueConfig(units=8, layers=2, dropout=[0.1]))


def test_schedules_hit_their_ends():
    assert linear_schedule(1.0, 0.0, 0, 100) == 1.0
    assert linear_schedule(1.0, 0.0, 50, 100) == pytest.approx(0.5)
    assert linear_schedule(1.0, 0.0, 100, 100) == 0.0
    assert linear_schedule(0.1, 0.01, 10**6, 100) == 0.01


def tiny_agent(**overrides) -> ColloDreamerAgent:
    """A tiny ColloDreamer with the paper's value (the inner style these tests exercise)."""
    config = make_config(
        ["tiny", "collodreamer_paper"], ["agent=collodreamer", *[f"{k}={v}" for k, v in overrides.items()]]
    )
    return ColloDreamerAgent(config, EnvSpec((5,), 2), torch.device("cpu"))


def test_ratio_is_one_when_the_old_model_is_the_current_one():
    agent = tiny_agent(**{"latent_objective.enabled": "true"})
    torch.manual_seed(0)
    batch = {
        "obs": torch.randn(3, 8, 5),
        "action": torch.rand(3, 8, 2) * 2 - 1,
        "reward": torch.rand(3, 8),
        "is_first": torch.zeros(3, 8, dtype=torch.bool),
        "is_terminal": torch.zeros(3, 8, dtype=torch.bool),
    }
    _, post, prior, _ = agent.world_model.loss(batch)
    rssm, old = agent.world_model.rssm, agent.old_rssm
    stoch = post["stoch"].detach()
    previous = {"deter": post["deter"][:, :-1], "stoch": stoch[:, :-1]}
    log_prob = rssm.log_prob(prior, stoch)[:, 1:]
    old_log_prob = old.log_prob(old.img_step(previous, batch["action"][:, 1:], sample=False), stoch[:, 1:])
    assert torch.allclose(transition_log_ratio(log_prob, old_log_prob).exp(), torch.ones(3, 6), atol=1e-5)
    # With an older model the ratio moves, and J_latent carries gradient into the dynamics only.
    with torch.no_grad():
        for p in old.parameters():
            p.add_(0.1 * torch.randn_like(p))
    objective_value = agent.augmented_objective(batch, post, prior)
    objective_value.backward()
    assert agent.world_model.rssm.img_out[2].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in agent.critic.value.parameters())


def test_latent_objective_formula():
    ratio = torch.tensor([[1.0, 2.0]])
    advantage = torch.tensor([[3.0, -1.0]], requires_grad=True)
    value = latent_objective(ratio, advantage, multiplier=4.0)
    assert value.item() == pytest.approx((3.0 - 2.0) / 2 / 4.0)
    assert not value.requires_grad  # the advantage is a constant


def test_value_update_reduces_value_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    agent = tiny_agent(**{"value.lr": 1e-3, "value.target_period": 1000})
    features = torch.randn(4, 7, agent.world_model.feature_dim)
    actions = torch.rand(4, 7, 2) * 2 - 1
    targets = agent.value.targets(features, actions)  # V' stays fixed (target_period 1000)

    def loss() -> float:
        with torch.no_grad():
            return (0.5 * (agent.critic.value(features) - targets).pow(2).mean()).item()

    before = loss()
    for _ in range(100):
        agent.value.update(features, actions)
    assert loss() < 0.75 * before


@pytest.mark.parametrize("style", ["inner", "after"])
def test_value_training_styles(style):
    agent = tiny_agent(
        **{
            "value.style": style,
            "value.after_updates": 3,
            "planner.horizon": 4,
            "planner.iterations": 5,
            "planner.replan_every": 2,
        }
    )
    obs = torch.randn(5).numpy()
    state = None
    for _ in range(5):  # plans at steps 0, 2, 4: the segments of the first two are complete
        _, state = agent.act(obs, state, training=True)
    expected = {"inner": 3 * 5, "after": 2 * 3}[style]
    assert agent.critic.updates == expected
    _, state = agent.act(obs, None, training=False)  # no value learning while testing
    assert agent.critic.updates == expected
    assert "value/loss" in agent.metrics()


def test_acting_with_the_actor_while_training_plans_only_in_tests():
    overrides = ["agent=collodreamer", "planner.train_acting=actor", "planner.replan_every=2"]
    config = make_config(["tiny"], overrides)
    agent = ColloDreamerAgent(config, EnvSpec((5,), 2), torch.device("cpu"))
    plans = []
    planner = agent.plan
    agent.plan = lambda *args: plans.append(1) or planner(*args)
    obs, state = torch.randn(5).numpy(), None
    for _ in range(5):  # the actor's segments of 2 steps are measured as Dreamer's are
        action, state = agent.act(obs, state, training=True)
        assert action.shape == (2,) and abs(action).max() <= 1.0
    assert plans == [] and "plan/promise_gap" in agent.metrics()
    agent.act(obs, None, training=False)
    assert plans == [1]
    with pytest.raises(ConfigError, match="planner.train_acting=actor needs an actor"):
        make_config(["tiny"], ["agent=latco", "planner.train_acting=actor"])


def test_amortised_policy_learns_the_plans_and_initialises_them():
    agent = tiny_agent(
        **{
            "planner.init": "policy",
            "planner.horizon": 4,
            "planner.replan_every": 4,
            "planner.iterations": 5,
            "policy.updates": 50,
        }
    )
    feature = torch.randn(1, agent.world_model.feature_dim)
    result = agent.plan(feature, None, training=True)
    init = agent.initial_plan(feature, result)
    assert torch.equal(init.features[:, 0], feature)
    # The rollout is dynamically feasible: every knot follows from the one before.
    predicted = agent.world_model.rssm.next_feature_mean(init.features[:, :-1], init.actions[:, :-1])
    assert torch.allclose(init.features[:, 1:], predicted, atol=1e-5)
    assert agent.metrics()["policy/loss"] < 1.0


def test_collodreamer_defaults_follow_the_paper_in_the_model_and_the_preset_in_the_value():
    config = make_config(overrides=["agent=collodreamer"])
    assert config.model.latent == "categorical" and config.model.kl_balancing
    assert config.model.deter == 300 and config.value.gamma == 0.99
    # It acts with the actor beside the planner; the paper's value and planner are a preset.
    assert config.value.style == "imagination" and config.planner.candidates == ["policy"]
    assert config.planner.feedback == 1.0
    paper = make_config(["collodreamer_paper"], ["agent=collodreamer"])
    assert paper.value.style == "inner" and paper.value.norm != "none" and paper.value.dropout
    assert paper.value.clip and paper.planner.candidates == [] and paper.planner.feedback == 0.0
    assert make_config(overrides=["agent=latco"]).model.latent == "gaussian"
    # Agent defaults come first: presets and overrides still win.
    assert make_config(overrides=["agent=collodreamer", "model.deter=50"]).model.deter == 50


def test_straight_through_clip_keeps_the_gradient_that_a_hard_clip_zeroes():
    x = torch.randn(32, 4)
    for mode, expect_gradient in (("hard", False), ("straight_through", True)):
        torch.manual_seed(0)
        net = ValueNetwork(4, ValueConfig(units=8, layers=1, clip=True, clip_high=1.0, clip_mode=mode))
        with torch.no_grad():
            net.net.net[-1].bias.fill_(-100.0)  # every value below clip_low = 0
        z = x.clone().requires_grad_(True)
        value = net(z)
        assert torch.all(value == 0.0)  # the forward is clipped either way
        value.sum().backward()
        assert (z.grad.abs().sum() > 0) == expect_gradient


def test_layer_norm_option_and_batch_norm_statistics_across_plans():
    kinds = lambda net: [type(m).__name__ for m in net.net.net]  # noqa: E731
    assert kinds(ValueNetwork(4, ValueConfig(units=8, layers=1, norm="layer"))) == [
        "Linear",
        "LayerNorm",
        "ELU",
        "Linear",
    ]
    # plan_batch = 3: each value update sees the current plan and the two latest plans before it.
    agent = tiny_agent(
        **{"value.plan_batch": 3, "planner.horizon": 4, "planner.replan_every": 4, "planner.iterations": 2}
    )
    sizes = []
    agent.critic.update = lambda features, targets, weights=None: (
        sizes.append(len(features))
        or {  # type: ignore[method-assign]
            "value/loss": 0.0
        }
    )
    for _ in range(4):
        agent.plan(torch.randn(1, agent.world_model.feature_dim), None, training=True)
    assert sizes == [5, 5, 10, 10, 15, 15, 15, 15]  # 5 knots per plan, up to 3 plans


def replay_batch(length: int = 6) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    first = torch.zeros(2, length, dtype=torch.bool)
    first[:, 0] = True
    first[1, 3] = True  # the second sequence crosses into a new episode at step 3
    return {
        "obs": torch.randn(2, length, 5),
        "action": torch.rand(2, length, 2) * 2 - 1,
        "reward": torch.rand(2, length),
        "is_first": first,
        "is_terminal": torch.zeros(2, length, dtype=torch.bool),
    }


def test_replay_style_targets_are_real_discounted_rewards():
    """With V' = 0 and lambda = 1, the replay style's targets are the discounted sums of the real
    rewards to the end of the sequence or episode, by hand."""
    agent = tiny_agent(
        **{"value.style": "replay", "value.lam": 1.0, "value.gamma": 0.5, "value.clip": "false"}
    )
    with torch.no_grad():
        for p in agent.critic.target.parameters():
            p.zero_()
    captured = {}

    def capture(features, targets, weights=None):
        captured.update(features=features, targets=targets, weights=weights)
        return {"value/loss": 0.0}

    agent.critic.update = capture  # type: ignore[method-assign]
    batch = replay_batch()
    metrics = agent.train_step({k: v.numpy() for k, v in batch.items()})
    r = batch["reward"]
    assert captured["features"].shape == (2, 5, agent.world_model.feature_dim)
    expected0 = [sum(0.5**j * r[0, k + j].item() for j in range(5 - k)) for k in range(5)]
    assert torch.allclose(captured["targets"][0], torch.tensor(expected0), atol=1e-5)
    # Sequence 1: steps 0-2 end their episode at the cut (step 2 has no known future: masked).
    expected1 = [r[1, 0] + 0.5 * r[1, 1], r[1, 1]]
    assert torch.allclose(captured["targets"][1, :2], torch.stack(expected1), atol=1e-5)
    assert captured["weights"][1, 2] == 0 and captured["weights"][1, 3] > 0
    assert "model/loss" in metrics and "value/target" in metrics


def test_imagination_style_trains_dreamers_critic_and_warm_starts_plans():
    agent = tiny_agent(
        **{
            "value.style": "imagination",
            "planner.init": "policy",
            "planner.horizon": 4,
            "planner.replan_every": 4,
            "planner.iterations": 2,
        }
    )
    assert agent.policy is None and agent.value.behaviour is not None
    batch = replay_batch()
    metrics = agent.train_step({k: v.numpy() for k, v in batch.items()})
    assert agent.critic.updates == 1 and "actor/loss" in metrics
    # The planner's terminal value counts the reward of its own state: r(z) + gamma V_dreamer(z).
    feature = torch.randn(3, agent.world_model.feature_dim)
    expected = agent.world_model.reward_of(feature) + agent.config.value.gamma * agent.critic.value(feature)
    assert torch.allclose(agent.value_of(feature), expected)
    # Plans start from the actor's rollout.
    init = agent.initial_plan(feature[:1], None)
    assert torch.allclose(init.actions[:, 0], agent.value.behaviour.actor.mode(feature[:1]))
    # No value learning inside the planner for this style.
    agent.plan(feature[:1], None, training=True)
    assert agent.critic.updates == 1


def test_categorical_reward_head_learns_at_mean_features():
    """The planner scores class probabilities; the reward loss includes the head at the posterior's
    probabilities, and training lowers the error there."""
    agent = tiny_agent()  # collodreamer's defaults: categorical latents
    assert agent.world_model.rssm.categorical
    batch = replay_batch()
    _, post, _, metrics = agent.world_model.loss(batch)
    assert "model/reward_mean_feature_loss" in metrics
    first = metrics["model/reward_mean_feature_loss"]
    for _ in range(200):
        agent.world_model.train_step(batch)
    _, _, _, metrics = agent.world_model.loss(batch)
    assert metrics["model/reward_mean_feature_loss"] < 0.5 * first
    mean = agent.world_model.rssm.mean_feature(post)
    probs = mean[..., : agent.world_model.rssm.stoch_dim].reshape(2, 6, 4, 4)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 6, 4), atol=1e-5)  # probabilities, not one-hots


def test_latent_objective_enters_the_world_model_step():
    agent = tiny_agent(**{"latent_objective.enabled": "true", "latent_objective.target_period": 2})
    batch = {k: v.numpy() for k, v in replay_batch().items()}
    metrics = agent.train_step(batch)
    assert {"latent/objective", "latent/weight", "model/loss"} <= set(metrics)
    rssm, old = agent.world_model.rssm, agent.old_rssm
    assert not torch.equal(rssm.img_out[2].weight, old.img_out[2].weight)  # the model moved, "old" not
    agent.train_step(batch)  # the second update copies the dynamics into the old model
    assert torch.equal(rssm.img_out[2].weight, old.img_out[2].weight)


def test_optional_capabilities_are_declared_protocols():
    expected = {"random": (False, False), "dreamer": (True, False), "latco": (True, True)}
    expected["collodreamer"] = (True, True)
    for name, (model_based, planner) in expected.items():
        agent = make_agent(make_config(["tiny"], [f"agent={name}"]), EnvSpec((5,), 2))
        assert (isinstance(agent, ModelBased), isinstance(agent, Planner)) == (model_based, planner)
