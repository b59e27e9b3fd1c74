"""ColloDreamer's math (Eq. 9-11, Algorithm 1) against hand computations, and its switches."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from collodreamer.agents.collodreamer import (
    ColloDreamerAgent,
    latent_objective,
    linear_schedule,
    transition_log_ratio,
)
from collodreamer.config import PlannerConfig, ValueConfig, make_config
from collodreamer.envs import EnvSpec
from collodreamer.models.losses import bellman_targets
from collodreamer.models.value import ValueNetwork
from collodreamer.planning.collocation import (
    Objective,
    collocate,
    gauss_newton_step,
    lagrangian,
    planned_return,
    random_plan,
    residuals,
)


def test_bellman_targets_by_hand_on_a_3_step_plan():
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0])  # r(z_0..z_3), H = 3
    bootstrap = torch.tensor(10.0)  # V'(mu(z_3, a_3))
    g = 0.9
    expected = torch.tensor(
        [
            1 + g * 2 + g**2 * 3 + g**3 * 4 + g**3 * 10,
            2 + g * 3 + g**2 * 4 + g**2 * 10,
            3 + g * 4 + g * 10,
            4 + 10,
        ]
    )
    assert torch.allclose(bellman_targets(rewards, bootstrap, g), expected)
    # gamma = 1 is Eq. 9: the plain sum of the remaining rewards plus the value.
    assert torch.allclose(bellman_targets(rewards, bootstrap, 1.0), torch.tensor([20.0, 19.0, 17.0, 14.0]))


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
    """Eq. 10 (without the constant r(z_0)): sum_k gamma^k r(z_k) + gamma^H V(mu(z_H, a_H))."""
    plan = random_plan(torch.zeros(1, 2), horizon=3, action_dim=2, config=PlannerConfig())
    value = lambda z: 5.0 * z.sum(-1)  # noqa: E731
    g = 0.9
    z, a = plan.features[0], plan.actions[0]
    r = [1.0 - (z[k] - GOAL).pow(2).sum() for k in range(4)]
    terminal = 5.0 * (0.9 * z[3] + a[3]).sum()
    expected = g * r[1] + g**2 * r[2] + g**3 * r[3] + g**3 * terminal
    assert planned_return(objective(value, g), plan).item() == pytest.approx(expected.item(), rel=1e-5)
    eq9 = r[1] + r[2] + r[3] + terminal
    assert planned_return(objective(value, 1.0), plan).item() == pytest.approx(eq9.item(), rel=1e-5)


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
    stepped = gauss_newton_step(obj, plan, damping=1e-3, line_search=False)[0]
    x0 = torch.cat([plan.features[0, 1:].flatten(), plan.actions[0].flatten()])

    def res(x):
        features = torch.cat([plan.features[:, :1], x[:6].reshape(1, 3, 2)], 1)
        return residuals(obj, replace(plan, features=features, actions=x[6:].reshape(1, 4, 2)))[0]

    J = torch.autograd.functional.jacobian(res, x0)
    dx = torch.linalg.solve(2 * J.T @ J + 1e-3 * torch.eye(len(x0)), 2 * J.T @ res(x0))
    got = torch.cat([stepped.features[0, 1:].flatten(), stepped.actions[0].flatten()])
    assert torch.allclose(got, x0 - dx, rtol=1e-4, atol=1e-4)
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
    config = make_config(["tiny"], ["agent=collodreamer", *[f"{k}={v}" for k, v in overrides.items()]])
    return ColloDreamerAgent(config, EnvSpec((5,), torch.float32, 2), torch.device("cpu"))


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
    assert all(p.grad is None for p in agent.value.parameters())


def test_latent_objective_formula():
    ratio = torch.tensor([[1.0, 2.0]])
    advantage = torch.tensor([[3.0, -1.0]], requires_grad=True)
    value = latent_objective(ratio, advantage, multiplier=4.0)
    assert value.item() == pytest.approx((3.0 - 2.0) / 2 / 4.0)
    assert not value.requires_grad  # the advantage is a constant


def test_value_update_reduces_value_loss_on_a_fixed_batch():
    agent = tiny_agent(**{"value.lr": 1e-3, "value.target_period": 1000})
    torch.manual_seed(0)
    features = torch.randn(4, 7, agent.world_model.feature_dim)
    actions = torch.rand(4, 7, 2) * 2 - 1
    targets = agent.value_targets(features, actions)  # V' stays fixed (target_period 1000)

    def loss() -> float:
        with torch.no_grad():
            return (0.5 * (agent.value(features) - targets).pow(2).mean()).item()

    before = loss()
    for _ in range(100):
        agent.update_value(features, actions)
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
    assert agent.value_updates == expected
    _, state = agent.act(obs, None, training=False)  # no value learning while testing
    assert agent.value_updates == expected
    assert "value/loss" in agent.metrics()


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


def test_collodreamer_defaults_follow_the_paper():
    config = make_config(overrides=["agent=collodreamer"])
    assert config.model.latent == "categorical" and config.model.kl_balancing
    assert config.model.deter == 300 and config.value.gamma == 0.99
    assert config.value.norm != "none" and config.value.dropout and config.value.clip
    assert make_config(overrides=["agent=latco"]).model.latent == "gaussian"
    # Agent defaults come first: presets and overrides still win.
    assert make_config(overrides=["agent=collodreamer", "model.deter=50"]).model.deter == 50
