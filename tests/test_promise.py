"""The promise gap: what a plan promised for the steps it executed against what was paid for them,
checked on scripted episodes against sums written out by hand."""

import numpy as np
import pytest
import torch

from collodreamer.agents import make_agent
from collodreamer.agents.promise import by_kind, calibration_bias, executed_kind, update_gap
from collodreamer.config import ConfigError, make_config
from collodreamer.spec import EnvSpec

PAID = [0.0, 1.0, 0.5, 2.0, 0.0, 1.5, 3.0]  # the reward paid on arriving at each observation


def scripted_episode(agent_name: str, *overrides: str):
    """Seven steps of scripted observations and rewards with replanning every 3 steps: plans at steps
    0, 3 and 6, so the segments of the first two are complete (the third is cut by the episode)."""
    config = make_config(
        ["tiny"],
        [
            f"agent={agent_name}",
            "planner.horizon=4",
            "planner.iterations=2",
            "planner.replan_every=3",
            *overrides,
        ],
    )
    torch.manual_seed(0)
    agent = make_agent(config, EnvSpec((5,), 2))
    rng = np.random.default_rng(0)
    state, segments, features = None, [], []
    for reward in PAID:
        _, state = agent.act(rng.normal(size=5).astype(np.float32), state, training=False, reward=reward)
        features.append(state.segment.features[-1])
        if not segments or state.segment is not segments[-1]:
            segments.append(state.segment)
    return agent, segments, features, agent.metrics()


def by_hand(agent, segment) -> tuple[float, float, list[torch.Tensor]]:
    """The model's mean reward per step at the plan's knots for the executed steps, and along the
    executed actions rolled out from the segment's start, one step after another."""
    model = agent.world_model
    promised = sum(model.reward_of(segment.planned[:, k]).item() for k in (1, 2, 3)) / 3
    feature, rolled, rollout = segment.planned[:, 0], 0.0, []
    for action in segment.actions:
        feature = model.rssm.next_feature_mean(feature, action)
        rolled += model.reward_of(feature).item() / 3
        rollout.append(feature)
    return promised, rolled, rollout


@pytest.mark.parametrize("agent_name", ["latco", "dreamer"])
def test_promise_gap_by_hand_on_a_scripted_episode(agent_name):
    agent, segments, _, metrics = scripted_episode(agent_name)
    assert len(segments) == 3 and [len(s.paid) for s in segments] == [3, 3, 0]
    assert segments[0].paid == PAID[1:4] and segments[1].paid == PAID[4:7]  # a step's reward, one step on
    hand = [by_hand(agent, s) for s in segments[:2]]
    paid = (np.mean(PAID[1:4]) + np.mean(PAID[4:7])) / 2  # averaged over the two complete segments
    promised = (hand[0][0] + hand[1][0]) / 2
    rolled = (hand[0][1] + hand[1][1]) / 2
    assert metrics["plan/paid_reward"] == pytest.approx(paid)
    assert metrics["plan/promised_reward"] == pytest.approx(promised, rel=1e-5)
    assert metrics["plan/rollout_reward"] == pytest.approx(rolled, rel=1e-5)
    assert metrics["plan/promise_gap"] == pytest.approx(promised - paid, rel=1e-5)
    assert metrics["plan/rollout_gap"] == pytest.approx(rolled - paid, rel=1e-5)
    if agent_name == "dreamer":  # the actor's mode rollout stands for its plan: tested, so no noise
        actor, rssm = agent.actor, agent.world_model.rssm
        expected = rssm.next_feature_mean(segments[0].planned[:, 0], actor.mode(segments[0].planned[:, 0]))
        assert torch.allclose(segments[0].planned[:, 1], expected)
        assert torch.allclose(hand[0][2][0], expected)  # executed actions are the mode's
    else:
        assert "plan/value_gap" not in metrics  # latco has no value


def test_value_part_of_the_promise():
    """ColloDreamer's value at the plan's knot after the segment, along the rollout and at the real
    filtered state reached, and the slope |dV/dz| at the knot."""
    agent, segments, features, metrics = scripted_episode("collodreamer")
    values = []
    for segment, reached in ((segments[0], features[3]), (segments[1], features[6])):
        _, _, rollout = by_hand(agent, segment)
        knot = segment.planned[:, 3].clone().requires_grad_(True)
        promised = agent.value_of(knot)
        (gradient,) = torch.autograd.grad(promised.sum(), knot)
        real = agent.value_of(reached).item()
        values.append((promised.item(), agent.value_of(rollout[-1]).item(), real, gradient.norm().item()))
    mean = np.mean(values, axis=0)
    assert metrics["plan/value_promised"] == pytest.approx(mean[0], rel=1e-5)
    assert metrics["plan/value_rollout"] == pytest.approx(mean[1], rel=1e-5)
    assert metrics["plan/value_real"] == pytest.approx(mean[2], rel=1e-5)
    assert metrics["plan/value_gap"] == pytest.approx(mean[0] - mean[2], rel=1e-4, abs=1e-6)
    assert metrics["plan/value_grad"] == pytest.approx(mean[3], rel=1e-5)


def test_promise_by_kind_of_plan_executed():
    """Where candidates compete, each segment's promise is logged again under the kind of plan that
    was executed; its average over a test is over that kind's segments only."""
    gap = {"plan/promise_gap": 0.5, "plan/paid_reward": 1.0}
    assert by_kind(gap, executed_kind({"candidate_share": 1.0})) == {
        "plan/candidate/promise_gap": 0.5,
        "plan/candidate/paid_reward": 1.0,
    }
    assert by_kind(gap, executed_kind({"candidate_share": 0.0})) == {
        "plan/optimised/promise_gap": 0.5,
        "plan/optimised/paid_reward": 1.0,
    }
    assert by_kind(gap, executed_kind({"dynamics_violation": 0.0})) == {}  # no candidates competed
    *_, metrics = scripted_episode("collodreamer", "value.style=imagination", "planner.candidates=[policy]")
    kinds = [k for k in ("candidate", "optimised") if f"plan/{k}/promise_gap" in metrics]
    assert kinds and all(f"plan/{k}/rollout_gap" in metrics for k in kinds)
    if len(kinds) == 1:  # both complete segments of one kind: the overall average is that kind's
        assert metrics[f"plan/{kinds[0]}/promise_gap"] == pytest.approx(metrics["plan/promise_gap"])
    _, _, _, latco = scripted_episode("latco")
    assert not any(key.startswith(("plan/candidate/", "plan/optimised/")) for key in latco)


def test_running_gaps_and_the_calibration_bias_by_hand():
    gaps: dict[str, float] = {}
    update_gap(gaps, "optimised", 0.8, rate=0.25)
    assert gaps == {"optimised": 0.8}
    assert calibration_bias(gaps, 10.0) == 0.0  # no candidate executed yet: nothing to compare with
    update_gap(gaps, "candidate", 0.2, rate=0.25)
    update_gap(gaps, "optimised", 0.4, rate=0.25)
    assert gaps == pytest.approx({"optimised": 0.8 + 0.25 * (0.4 - 0.8), "candidate": 0.2})
    assert calibration_bias(gaps, 10.0) == pytest.approx((0.7 - 0.2) * 10.0)
    gaps["candidate"] = 0.9  # candidates over-promise more: the optimised plans gain
    assert calibration_bias(gaps, 10.0) == pytest.approx(-2.0)


def test_calibrated_agent_keeps_its_gaps_and_biases_its_plans():
    rate = ("value.style=imagination", "planner.candidates=[policy]", "planner.calibration_rate=0.5")
    agent, _, _, metrics = scripted_episode("collodreamer", *rate)
    kinds = [k for k in ("candidate", "optimised") if f"plan/{k}/rollout_gap" in metrics]
    assert set(agent.gaps) == set(kinds)
    for kind in kinds:
        assert np.isfinite(agent.gaps[kind])
    assert "plan/calibration_bias" in metrics
    restored = make_agent(agent.config, EnvSpec((5,), 2))
    restored.load_state_dict(agent.state_dict())
    assert restored.gaps == agent.gaps
    agent.gaps = {"optimised": 1.0, "candidate": 0.5}
    gamma, horizon = agent.objective().gamma, agent.config.planner.horizon
    assert agent.candidate_bias() == pytest.approx(0.5 * sum(gamma**k for k in range(1, horizon + 1)))
    _, _, _, plain = scripted_episode("collodreamer", *rate[:2])
    assert "plan/calibration_bias" not in plain
    with pytest.raises(ConfigError, match="calibration_rate"):
        make_config(["tiny"], ["planner.calibration_rate=2"])
