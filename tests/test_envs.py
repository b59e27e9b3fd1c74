import numpy as np
import pytest

from collodreamer.config import ConfigError, uses_pixels
from collodreamer.envs import PAPER_TASKS, DMCEnv, GymEnv, check_task, list_tasks, make_env, parse_task
from collodreamer.schema import EnvConfig


@pytest.mark.parametrize("task", PAPER_TASKS)
@pytest.mark.parametrize("obs", ["pixels", "state"])
def test_paper_tasks_load_with_right_shapes(task, obs):
    config = EnvConfig(task=task, obs=obs, time_limit=10)
    env = make_env(config, seed=0)
    first, info = env.reset()
    space = env.observation_space
    assert env.spec.pixels == uses_pixels(config) == (obs == "pixels")
    if obs == "pixels":
        assert first.shape == (64, 64, 3) and first.dtype == np.uint8
        assert first.std() > 1.0  # a real rendered scene, not a blank frame
    else:
        assert first.ndim == 1 and first.dtype == np.float32
    assert first.shape == space.shape and first.dtype == space.dtype and info == {}
    assert env.action_space.low.min() == -1 and env.action_space.high.max() == 1
    frames, done = 0, False
    while not done:
        obs_t, reward, terminated, truncated, _ = env.step(env.action_space.high)
        done = terminated or truncated
        frames += env.action_repeat
        assert obs_t.shape == space.shape and obs_t.dtype == space.dtype
        assert isinstance(reward, float) and not terminated
    assert frames == 10 and truncated  # the episode limit is in env frames, action repeat included
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
    action = np.full(single.action_space.shape, 0.3)
    rewards = [single.step(action)[1] for _ in range(20)]
    paired = [double.step(action)[1] for _ in range(10)]
    np.testing.assert_allclose(paired, np.add(rewards[0::2], rewards[1::2]), atol=1e-12)


def test_true_state_is_the_state_observation_then_the_bodies_positions_from_pixels_too():
    pixels = DMCEnv(EnvConfig(task="dmc:reacher_easy", obs="pixels"), seed=3)
    states = DMCEnv(EnvConfig(task="dmc:reacher_easy", obs="state"), seed=3)
    pixels.reset()
    states.reset()
    action = np.full(pixels.action_space.shape, 0.5)
    pixels.step(action)
    observed = states.step(action)[0]
    parts = pixels.state_parts()
    assert list(parts) == ["position", "to_target", "velocity", "body:arm", "body:hand", "body:finger"]
    state = pixels.state()
    assert state.shape == (15,) and parts["body:finger"] == slice(12, 15)
    np.testing.assert_allclose(state[:6], observed, atol=1e-6)  # what a state agent sees, same start
    np.testing.assert_allclose(state[parts["body:finger"]], pixels._env.physics.named.data.xpos["finger"])


def test_seeding_is_deterministic_and_seeds_differ():
    config = EnvConfig(task="dmc:cheetah_run", obs="state")
    (a, _), (b, _), (c, _) = DMCEnv(config, 4).reset(), DMCEnv(config, 4).reset(), DMCEnv(config, 5).reset()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    reseeded = DMCEnv(config, 5)
    reseeded.reset()
    np.testing.assert_array_equal(reseeded.reset(seed=4)[0], a)  # reset(seed=...) reseeds the task


def test_fast_render_looks_like_the_paper_render():
    fast = DMCEnv(EnvConfig(task="dmc:cheetah_run"), seed=0).reset()[0].astype(float)
    exact = DMCEnv(EnvConfig(task="dmc:cheetah_run", fast_render=False), seed=0).reset()[0]
    assert np.abs(fast - exact).mean() < 10.0  # near-identical images (0..255 scale)


def test_unknown_task_error_lists_valid_names():
    with pytest.raises(ConfigError) as error:
        parse_task("dmc:cheetah_fly")
    message = str(error.value)
    assert message.startswith("unknown task 'dmc:cheetah_fly'; valid tasks:")
    assert "dmc:cheetah_run" in message and "\n" not in message
    with pytest.raises(ConfigError, match="tasks look like dmc:cheetah_run or gym:Pendulum-v1"):
        parse_task("cheetah_run")


def test_every_suite_task_parses():
    tasks = list_tasks()
    assert len(tasks) >= 50
    assert parse_task("dmc:ball_in_cup_catch") == ("ball_in_cup", "catch")
    assert parse_task("dmc:finger_turn_hard") == ("finger", "turn_hard")


# --- Gymnasium environments (gym:<id>) -------------------------------------------------------------


def test_gym_pendulum_steps_with_repeat_time_limit_and_rescaled_actions():
    config = EnvConfig(task="gym:Pendulum-v1", obs="state", action_repeat=2, time_limit=10)
    env = make_env(config, seed=3)
    assert isinstance(env, GymEnv) and env.spec.obs_shape == (3,) and env.spec.action_dim == 1
    obs, _ = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (3,)
    frames, done = 0, False
    while not done:
        _, _, terminated, truncated, _ = env.step(np.array([1.0]))
        done = terminated or truncated
        frames += env.action_repeat
    assert frames == 10 and truncated and not terminated
    # [-1, 1] is rescaled to Pendulum's torque bounds [-2, 2]: a = 0.5 applies a torque of 1, the same
    # physics as Gymnasium's own environment stepped with 1 (same seed), two frames per step.
    import gymnasium

    raw = gymnasium.make("Pendulum-v1")
    raw.reset(seed=11)
    ours = make_env(EnvConfig(task="gym:Pendulum-v1", obs="state", action_repeat=2), seed=11)
    expected = [raw.step(np.array([1.0], np.float32))[1] for _ in range(4)]
    rewards = [ours.step(np.array([0.5]))[1] for _ in range(2)]
    np.testing.assert_allclose(rewards, np.add(expected[0::2], expected[1::2]), rtol=1e-6)


def test_gym_seeding_and_state_dict_continue_the_same_draws():
    config = EnvConfig(task="gym:Pendulum-v1", obs="state")
    a, b, c = make_env(config, 4), make_env(config, 4), make_env(config, 5)
    first = a.reset()[0]
    np.testing.assert_array_equal(first, b.reset()[0])
    assert not np.array_equal(first, c.reset()[0])
    saved = a.state_dict()
    after = a.reset()[0]
    c.load_state_dict(saved)  # as a resumed run: the next episode starts where a's did
    np.testing.assert_array_equal(c.reset()[0], after)


def test_gym_pixels_are_resized_renders():
    pytest.importorskip("pygame", reason="Gymnasium renders classic-control tasks with pygame")
    env = make_env(EnvConfig(task="gym:Pendulum-v1", obs="pixels", time_limit=10), seed=0)
    obs, _ = env.reset()
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and obs.std() > 1.0
    assert env.step(np.zeros(1))[0].shape == (64, 64, 3)
    assert env.render(128).shape == (128, 128, 3)


@pytest.mark.parametrize(
    "task, message",
    [
        ("gym:NoSuchTask-v0", "unknown task 'gym:NoSuchTask-v0': Environment `NoSuchTask` doesn't exist."),
        ("gym:CartPole-v1", "task 'gym:CartPole-v1' has Discrete(2) actions: only continuous (Box) actions"),
    ],
)
def test_unknown_or_discrete_gym_task_is_a_one_line_error(task, message):
    with pytest.raises(ConfigError) as error:
        make_env(EnvConfig(task=task, obs="state"), seed=0)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    if "NoSuch" in task:
        with pytest.raises(ConfigError, match="unknown task"):
            check_task(task)  # what sweep specs are checked with


def test_tasks_command_lists_dmc_tasks_and_says_how_to_name_gym_ones(capsys):
    from collodreamer.cli import main

    assert main(["tasks"]) == 0
    out, err = capsys.readouterr()
    assert "dmc:cheetah_run" in out.splitlines() and "gym:<id>" in err and "gym:Pendulum-v1" in err
