import numpy as np
import pytest

from collodreamer.config import ConfigError, EnvConfig
from collodreamer.envs import PAPER_TASKS, DMCEnv, list_tasks, parse_task


@pytest.mark.parametrize("task", PAPER_TASKS)
@pytest.mark.parametrize("obs", ["pixels", "state"])
def test_paper_tasks_load_with_right_shapes(task, obs):
    env = DMCEnv(EnvConfig(task=task, obs=obs, time_limit=10), seed=0)
    first = env.reset()
    if obs == "pixels":
        assert first.shape == (64, 64, 3) and first.dtype == np.uint8
        assert first.std() > 1.0  # a real rendered scene, not a blank frame
    else:
        assert first.ndim == 1 and first.dtype == np.float32 and first.shape == env.obs_shape
    assert first.shape == env.obs_shape and first.dtype == env.obs_dtype
    frames, done = 0, False
    while not done:
        obs_t, reward, done, info = env.step(np.ones(env.action_dim))
        frames += env.config.action_repeat
        assert obs_t.shape == env.obs_shape and obs_t.dtype == env.obs_dtype
        assert isinstance(reward, float) and not info["terminal"]
    assert frames == 10  # the episode limit is in env frames, action repeat included
    env.close()


def test_dreamer_cameras():
    quadruped = DMCEnv(EnvConfig(task="dmc:quadruped_walk"), seed=0)
    reacher = DMCEnv(EnvConfig(task="dmc:reacher_easy"), seed=0)
    assert quadruped._camera == 2 and reacher._camera == 0


def test_action_repeat_sums_rewards():
    config = EnvConfig(task="dmc:reacher_easy", obs="state", action_repeat=1)
    single, double = (
        DMCEnv(config, seed=1),
        DMCEnv(EnvConfig(task="dmc:reacher_easy", obs="state", action_repeat=2), seed=1),
    )
    single.reset()
    double.reset()
    action = np.full(single.action_dim, 0.3)
    rewards = [single.step(action)[1] for _ in range(20)]
    paired = [double.step(action)[1] for _ in range(10)]
    np.testing.assert_allclose(paired, np.add(rewards[0::2], rewards[1::2]), atol=1e-12)


def test_seeding_is_deterministic_and_seeds_differ():
    config = EnvConfig(task="dmc:cheetah_run", obs="state")
    a, b, c = DMCEnv(config, 4).reset(), DMCEnv(config, 4).reset(), DMCEnv(config, 5).reset()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_fast_render_looks_like_the_paper_render():
    fast = DMCEnv(EnvConfig(task="dmc:cheetah_run"), seed=0).reset().astype(float)
    exact = DMCEnv(EnvConfig(task="dmc:cheetah_run", fast_render=False), seed=0).reset()
    assert np.abs(fast - exact).mean() < 10.0  # near-identical images (0..255 scale)


def test_unknown_task_error_lists_valid_names():
    with pytest.raises(ConfigError) as error:
        parse_task("dmc:cheetah_fly")
    message = str(error.value)
    assert message.startswith("unknown task 'dmc:cheetah_fly'; valid tasks:")
    assert "dmc:cheetah_run" in message and "\n" not in message
    with pytest.raises(ConfigError, match="tasks look like dmc:cheetah_run"):
        parse_task("cheetah_run")


def test_every_suite_task_parses():
    tasks = list_tasks()
    assert len(tasks) >= 50
    assert parse_task("dmc:ball_in_cup_catch") == ("ball_in_cup", "catch")
    assert parse_task("dmc:finger_turn_hard") == ("finger", "turn_hard")
