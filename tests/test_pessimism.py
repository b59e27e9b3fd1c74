"""The remedies against plans that exploit the model, each against a hand computation: ensemble
pessimism (reward and value heads), the trust region around an anchor, and candidates that compete
with the optimised plans."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import assert_dense_gauss_newton_step
from torch import nn

from collodreamer.agents import make_agent
from collodreamer.agents.latco import policy_feedback
from collodreamer.config import ConfigError, make_config
from collodreamer.models.ensemble import Ensemble, excess_disagreement, pessimistic
from collodreamer.models.value import Critic, ValueNetwork
from collodreamer.planning import Plan, PlanResult, collocate, random_plan, rollout_plan
from collodreamer.planning.planner import select_plans
from collodreamer.planning.problem import Objective, residuals, rollout_return, sampled_return
from collodreamer.schema import PlannerConfig, ValueConfig
from collodreamer.spec import EnvSpec


def test_pessimistic_estimate_by_hand():
    heads = torch.tensor([[1.0, 4.0], [3.0, 0.0]])  # two heads, two inputs
    # mean - kappa * population std: with two heads and kappa 1, the minimum of the two
    assert torch.allclose(pessimistic(heads, 1.0), torch.tensor([1.0, 0.0]))
    assert torch.allclose(pessimistic(heads, 0.5), torch.tensor([2.0 - 0.5, 2.0 - 1.0]))
    three = torch.tensor([[0.0], [3.0], [6.0]])
    assert pessimistic(three, 2.0).item() == pytest.approx(3.0 - 2.0 * (6.0**0.5))
    assert torch.equal(pessimistic(heads[:1], 5.0), heads[0])  # one head: itself
    ensemble = Ensemble(3, heads=4, units=8, layers=1)
    x = torch.randn(5, 3)
    assert ensemble(x).shape == (4, 5)
    assert not torch.allclose(ensemble(x)[0], ensemble(x)[1])  # each head its own initialisation


def test_value_heads_are_pessimistic_and_all_trained():
    config = ValueConfig(units=8, layers=1, heads=3, kappa=0.5, clip=True, clip_low=-1.0, clip_high=1.0)
    network = ValueNetwork(4, config)
    x = torch.randn(6, 4)
    heads = torch.stack([net(x).squeeze(-1).clamp(-1.0, 1.0) for net in (network.net, *network.more)])
    assert torch.allclose(network.heads(x), heads)
    assert torch.allclose(network(x), heads.mean(0) - 0.5 * heads.std(0, unbiased=False))
    # One head: the paper's network, with no extra parameters.
    single = ValueNetwork(4, replace(config, heads=1))
    assert len(single.more) == 0 and torch.allclose(single(x), single.net(x).squeeze(-1).clamp(-1.0, 1.0))
    # The critic's loss trains every head towards the targets.
    critic = Critic(4, replace(config, lr=1e-2, clip=False), torch.device("cpu"))
    targets = torch.full((6,), 0.3)
    before = (critic.value.heads(x) - targets).abs().mean(1)
    for _ in range(100):
        critic.update(x, targets)
    after = (critic.value.heads(x) - targets).abs().mean(1)
    assert torch.all(after < 0.5 * before)


def tiny(agent: str, *overrides: str):
    config = make_config(
        ["tiny"],
        [f"agent={agent}", "planner.horizon=4", "planner.replan_every=2", "planner.iterations=3", *overrides],
    )
    torch.manual_seed(0)
    return make_agent(config, EnvSpec((5,), 2))


def replay_batch() -> dict[str, np.ndarray]:
    """A replay batch of 3 sequences of 8 steps of the tiny agents' task (5 state dims, 2 actions), the
    same in every call (the tests' thresholds hold for it)."""
    rng = np.random.default_rng(0)
    return {
        "obs": rng.standard_normal((3, 8, 5)).astype(np.float32),
        "action": rng.uniform(-1, 1, (3, 8, 2)).astype(np.float32),
        "reward": rng.random((3, 8)).astype(np.float32),
        "is_first": np.zeros((3, 8), bool),
        "is_terminal": np.zeros((3, 8), bool),
    }


def test_planning_reward_subtracts_the_reward_heads_std():
    agent = tiny("latco", "pessimism.reward_heads=3", "pessimism.reward_kappa=2.0")
    z = torch.randn(7, agent.world_model.feature_dim, device=agent.device)
    heads = torch.stack([head(z).squeeze(-1) for head in agent.reward_heads.heads])
    expected = agent.world_model.reward_of(z) - 2.0 * heads.std(0, unbiased=False)
    assert torch.allclose(agent.planning_reward(z), expected)
    assert agent.objective().reward(z).shape == (7,)
    assert torch.allclose(tiny("latco").planning_reward(z), tiny("latco").world_model.reward_of(z))
    # The heads learn the replayed rewards at the posterior's mean features.
    batch = replay_batch()
    first = agent.train_step(batch)["pessimism/reward_loss"]
    for _ in range(100):
        last = agent.train_step(batch)["pessimism/reward_loss"]
    assert last < 0.5 * first
    with pytest.raises(ConfigError, match="reward_heads"):
        make_config(["tiny"], ["pessimism.reward_heads=1"])


def test_excess_disagreement_by_hand():
    # two heads, one input, two outputs: population stds |a - b| / 2 = [1, 2], so u = 1.5
    predictions = torch.tensor([[[0.0, 2.0]], [[2.0, 6.0]]])
    assert excess_disagreement(predictions, 1.0, 2.0).tolist() == [2.0 * (1.5 / 1.0 - 1.0)]
    assert excess_disagreement(predictions, 0.5, 1.0).tolist() == [1.5 / 0.5 - 1.0]
    assert excess_disagreement(predictions, 3.0, 2.0).tolist() == [0.0]  # within its level: no penalty
    assert excess_disagreement(predictions, 0.0, 2.0).tolist() == [0.0]  # level unknown yet
    assert Ensemble(3, heads=4, units=8, layers=1, out_dim=6)(torch.randn(5, 3)).shape == (4, 5, 6)


def test_state_heads_learn_the_embedding_and_penalise_where_they_disagree():
    agent = tiny("latco", "pessimism.state_heads=3", "pessimism.state_kappa=2.0")
    z = torch.randn(7, agent.world_model.feature_dim, device=agent.device)
    assert torch.equal(agent.planning_reward(z), agent.world_model.reward_of(z))  # no level yet
    batch = replay_batch()
    first = agent.train_step(batch)
    for _ in range(200):  # after 100 steps the loss is 0.46-0.50 of the first (6 seeds), after 200 0.12-0.14
        last = agent.train_step(batch)
    assert last["pessimism/state_loss"] < 0.5 * first["pessimism/state_loss"]
    level = agent.state_level
    assert level == pytest.approx(last["pessimism/state_level"]) and level > 0
    far = 100 * z  # far from every replayed state: the heads disagree
    expected = excess_disagreement(agent.state_heads(far), level, 2.0)
    assert torch.all(expected > 0)
    assert torch.allclose(agent.planning_reward(far), agent.world_model.reward_of(far) - expected)
    restored = tiny("latco", "pessimism.state_heads=3", "pessimism.state_kappa=2.0")
    restored.load_state_dict(agent.state_dict())
    assert restored.state_level == level
    assert torch.allclose(restored.planning_reward(far), agent.planning_reward(far))
    with pytest.raises(ConfigError, match="state_heads"):
        make_config(["tiny"], ["pessimism.state_heads=1"])


GOAL = torch.tensor([0.2, 0.4])


def objective(trust_weight: float = 0.0) -> Objective:
    return Objective(
        dynamics=lambda z, a: 0.9 * z + a,
        reward=lambda z: 1.0 - (z - GOAL).pow(2).sum(-1),
        action_dim=2,
        trust_weight=trust_weight,
    )


def test_trust_region_residual_and_gauss_newton_step_by_hand():
    """The residual s * sqrt(beta) * (a_k - anchor_k) enters the least squares, and the Gauss-Newton
    step is the dense solve of the linearised problem with it."""
    torch.manual_seed(0)
    plan = random_plan(torch.randn(1, 2), horizon=3, action_dim=2, config=PlannerConfig())
    plan.anchor = torch.zeros_like(plan.actions)
    obj = objective(trust_weight=4.0)
    base = residuals(objective(), plan)[0]
    full = residuals(obj, plan)[0]
    scale = 1.0 / (plan.lam.sqrt().mean() + plan.nu.sqrt().mean() + 1.0)
    assert torch.allclose(full[: len(base)], base)
    assert torch.allclose(full[len(base) :], scale * 2.0 * plan.actions[0].flatten())
    assert_dense_gauss_newton_step(obj, plan)
    # A strong trust region keeps the optimised actions nearer the anchor than a weak one.
    config = PlannerConfig(horizon=3, iterations=20)
    near = [
        collocate(
            objective(w), torch.zeros(1, 2), config, init=replace(plan, anchor=plan.anchor)
        ).plan.actions
        for w in (0.0, 100.0)
    ]
    assert near[1].abs().mean() < 0.5 * near[0].abs().mean()
    with pytest.raises(ConfigError, match="trust_weight"):
        make_config(["tiny"], ["planner.trust_weight=1"])  # random knots: nothing to hold them near


def test_candidates_compete_with_the_optimised_plans():
    start = torch.zeros(1, 2)
    config = PlannerConfig(horizon=3, iterations=1, plans=1)
    obj = objective()
    # A candidate that goes to the goal and stays, against a plan of one Gauss-Newton step from noise.
    to_goal = torch.stack([GOAL, -0.9 * GOAL + GOAL, -0.9 * GOAL + GOAL, -0.9 * GOAL + GOAL])[None]
    good = rollout_plan(obj, start, to_goal, config)
    assert torch.allclose(good.features[0, 1:], GOAL.expand(3, 2), atol=1e-6)  # feasible by construction
    torch.manual_seed(0)
    result = collocate(obj, start, config, candidates=good)
    assert result.diagnostics["candidate_share"] == 1.0
    assert torch.allclose(result.actions, to_goal.clamp(-1, 1))
    # A bad candidate loses to the optimised plan.
    bad = rollout_plan(obj, start, torch.ones(1, 4, 2), config)
    torch.manual_seed(0)
    result = collocate(obj, start, config, candidates=bad)
    assert result.diagnostics["candidate_share"] == 0.0
    assert rollout_return(obj, start, result.actions) > rollout_return(obj, start, torch.ones(1, 4, 2))
    # A margin: the optimised plan must beat the candidate's return R_c by more than margin * |R_c|.
    ours = rollout_return(obj, start, result.actions).item()
    theirs = rollout_return(obj, start, bad.actions.clamp(-1, 1)).item()
    needed = (ours - theirs) / abs(theirs)
    for margin, share in ((0.9 * needed, 0.0), (1.1 * needed, 1.0)):
        torch.manual_seed(0)
        chosen = collocate(obj, start, replace(config, candidate_margin=margin), candidates=bad)
        assert chosen.diagnostics["candidate_share"] == share
        # the diagnostics are the executed plan's, also where a margin executes the worse one
        executed = theirs if share else ours
        assert chosen.diagnostics["rollout_return"] == pytest.approx(executed, rel=1e-5)
    # A bias: the optimised plan's return loses it before it competes (the calibrated selection).
    for bias, share in ((0.9 * (ours - theirs), 0.0), (1.1 * (ours - theirs), 1.0)):
        torch.manual_seed(0)
        chosen = collocate(obj, start, config, candidates=bad, bias=bias)
        assert chosen.diagnostics["candidate_share"] == share
    # Two starts with two candidates each: each start chooses among its own.
    starts = torch.zeros(2, 2)
    both = Plan(*(torch.cat([a, b, b, a]) for a, b in zip(good.knots(), bad.knots(), strict=True)))
    torch.manual_seed(0)
    result = collocate(obj, starts, config, candidates=both)
    assert result.diagnostics["candidate_share"] == 1.0
    assert torch.allclose(result.actions, to_goal.clamp(-1, 1).expand(2, 4, 2))


def test_sampled_scores_prefer_the_plan_that_survives_the_models_spread():
    """Scored under mu, the plan onto a narrow peak of the reward wins; scored by the mean over draws of
    the sampled dynamics (``score_samples``), the plan onto a broad one does."""
    obj = Objective(
        dynamics=lambda z, a: a,
        reward=lambda z: 2 * torch.exp(-(z[..., 0] - 1).pow(2) / 1e-3) + torch.exp(-(z[..., 0] + 1).pow(2)),
        action_dim=1,
        sample_dynamics=lambda z, a: a + 0.3 * torch.randn_like(a),
    )
    start = torch.zeros(2, 1)
    narrow, broad = torch.ones(1, 2, 1), -torch.ones(1, 2, 1)
    plan = Plan(torch.zeros(2, 2, 1), torch.cat([narrow, broad]), torch.ones(2, 1), torch.ones(2, 2))
    assert rollout_return(obj, start[:1], narrow).item() == pytest.approx(2.0 + np.exp(-4.0), abs=1e-5)
    torch.manual_seed(0)
    sampled = sampled_return(obj, start, torch.cat([narrow, broad]), samples=2000)

    def bump(m: float, c: float, w: float) -> float:  # E[exp(-(z - c)^2 / w)] for z ~ N(m, 0.3^2)
        return (w / (w + 0.18)) ** 0.5 * np.exp(-((m - c) ** 2) / (w + 0.18))

    expected = [2 * bump(m, 1, 1e-3) + bump(m, -1, 1) for m in (1, -1)]  # about 0.18 and 0.92
    assert sampled.tolist() == pytest.approx(expected, abs=0.03)
    assert (
        select_plans(obj, plan, start, plans=2, iterations=0, optimised=1).diagnostics["candidate_share"] == 0
    )
    torch.manual_seed(0)
    chosen = select_plans(obj, plan, start, plans=2, iterations=0, optimised=1, samples=64)
    assert chosen.diagnostics["candidate_share"] == 1.0 and torch.equal(chosen.actions, broad)
    # With draws equal to mu the sampled score is mu's.
    same = replace(obj, sample_dynamics=obj.dynamics)
    assert torch.equal(sampled_return(same, start, plan.actions, 3), rollout_return(obj, start, plan.actions))
    with pytest.raises(ConfigError, match="score_samples"):
        make_config(["tiny"], ["planner.score_samples=-1"])


@pytest.mark.parametrize("candidates", ["[policy]", "[previous]", "[policy,previous]"])
def test_agents_plan_with_candidates(candidates):
    agent = tiny(
        "collodreamer", "value.style=imagination", f"planner.candidates={candidates}", "planner.init=shift"
    )
    feature = torch.randn(1, agent.world_model.feature_dim, device=agent.device)
    first = agent.plan(feature, None, training=False)
    second = agent.plan(feature, first, training=False)
    expected = 0 if candidates == "[previous]" else 1  # no previous plan before the first
    assert ("candidate_share" in first.diagnostics) == bool(expected)
    assert "candidate_share" in second.diagnostics
    # The policy's candidate is the actor's own rollout: feasible under the model.
    policy = agent.policy_plan(feature)
    predicted = agent.world_model.rssm.next_feature_mean(policy.features[:, :-1], policy.actions[:, :-1])
    assert torch.allclose(policy.features[:, 1:], predicted, atol=1e-5)


def test_policy_anchor_is_the_actors_rollout():
    agent = tiny("collodreamer", "value.style=imagination", "planner.init=policy", "planner.trust_weight=10")
    feature = torch.randn(1, agent.world_model.feature_dim, device=agent.device)
    init = agent.initial_plan(feature, None)
    assert torch.equal(init.anchor, init.actions)
    assert torch.allclose(init.actions[:, 0], agent.value.behaviour.actor.mode(feature))


def test_value_targets_use_the_pessimistic_reward():
    agent = tiny("collodreamer", "value.style=inner", "pessimism.reward_heads=2", "pessimism.reward_kappa=3")
    features = torch.randn(2, 4, agent.world_model.feature_dim, device=agent.device)
    actions = torch.rand(2, 4, 2, device=agent.device) * 2 - 1
    with torch.no_grad():
        for p in agent.critic.target.parameters():
            p.zero_()
    gamma = agent.config.value.gamma
    rewards = agent.planning_reward(features)
    # V' = 0 (a clip at 0 keeps it there): targets are the discounted sums of the pessimistic rewards.
    expected = torch.stack([sum(gamma**j * rewards[:, k + j] for j in range(4 - k)) for k in range(4)], 1)
    assert torch.allclose(agent.value.targets(features, actions), expected, atol=1e-5)
    assert not torch.allclose(rewards, agent.world_model.reward_of(features))


def test_ensemble_of_plain_modules_has_independent_gradients():
    ensemble = Ensemble(2, heads=2, units=4, layers=1)
    ensemble(torch.randn(3, 2))[0].sum().backward()
    grads = [
        any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
        for head in ensemble.heads
    ]
    assert grads == [True, False]
    assert isinstance(ensemble.heads, nn.ModuleList)


def test_policy_feedback_by_hand():
    weight = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
    policy = lambda z: z @ weight.T  # noqa: E731
    planned, knot, real = torch.tensor([[0.2, -0.4]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[1.2, 0.4]])
    # pi(z) - pi(z_plan) = W (0.2, 0.4) = (-0.3, 0.5); half of it added to the plan's action
    assert torch.allclose(policy_feedback(planned, knot, real, policy, 0.5), torch.tensor([[0.05, -0.15]]))
    assert torch.equal(policy_feedback(planned, knot, real, policy, 0.0), planned)
    # clipped to the action bounds
    assert torch.equal(policy_feedback(planned, knot, 10 * real, policy, 1.0).abs().max(), torch.tensor(1.0))


def test_feedback_executes_the_policys_plan_as_the_policy_on_real_states():
    agent = tiny(
        "collodreamer", "value.style=imagination", "planner.candidates=[policy]", "planner.feedback=1"
    )
    rng = np.random.default_rng(0)
    first = rng.normal(size=5).astype(np.float32)
    _, state = agent.act(first, None, training=False)
    # Replace the plan by the actor's rollout from the state the plan started at.
    start = state.plan.plan.features[:, 0]
    rollout = agent.policy_plan(start)
    state.plan = PlanResult(rollout, rollout.actions.clamp(-1, 1), state.plan.diagnostics)
    second = rng.normal(size=5).astype(np.float32)
    action, state = agent.act(second, state, training=False)
    feature = agent.world_model.rssm.feature(state.latent)
    actor = agent.value.behaviour.actor.mode(feature)
    assert torch.allclose(torch.as_tensor(action, device=actor.device), actor[0], atol=1e-6)
    assert not torch.allclose(actor, rollout.actions[:, 1], atol=1e-3)  # not the open-loop action


def test_feedback_needs_a_policy():
    with pytest.raises(ConfigError, match="planner.feedback"):
        make_config(["tiny"], ["agent=latco", "planner.feedback=1"])
    make_config(["tiny"], ["agent=latco", "planner.feedback=1", "planner.candidates=[policy]"])
