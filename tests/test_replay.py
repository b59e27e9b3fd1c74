import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from collodreamer.config import make_config
from collodreamer.data import EpisodeStore, ReplayError
from collodreamer.data.replay import CompressedFrames
from collodreamer.training import Trainer


def make_episode(start: int, steps: int, action_dim: int = 2) -> dict[str, np.ndarray]:
    """An episode whose obs at step t is ``start + t``, so sampled sequences can be checked."""
    values = np.arange(start, start + steps, dtype=np.float32)
    is_first = np.zeros(steps, bool)
    is_first[0] = True
    action = np.repeat(values[:, None], action_dim, axis=1)
    action[0] = 0
    return {
        "obs": values[:, None].copy(),
        "action": action,
        "reward": values * 0.5,
        "is_first": is_first,
        "is_terminal": np.zeros(steps, bool),
    }


def test_round_trip_to_disk(tmp_path: Path):
    store = EpisodeStore(tmp_path, capacity=10**6, frames_per_step=2, seed=0)
    episodes = [make_episode(1000 * i, 30 + i) for i in range(3)]
    for episode in episodes:
        store.add(episode)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ep-000000-30.npz",
        "ep-000001-31.npz",
        "ep-000002-32.npz",
    ]
    again = EpisodeStore(tmp_path, capacity=10**6, frames_per_step=2, seed=0)
    assert again.load() == (2 * (29 + 30 + 31), 3)
    assert again.num_episodes == 3
    for original, loaded in zip(episodes, again._episodes, strict=True):
        for key, value in original.items():
            np.testing.assert_array_equal(value, loaded[key])
            assert value.dtype == loaded[key].dtype
    again.add(make_episode(5000, 10))  # numbering continues after a reload
    assert (tmp_path / "ep-000003-10.npz").exists()


def test_sequences_are_consecutive_and_cross_boundaries_with_is_first(tmp_path: Path):
    store = EpisodeStore(tmp_path, capacity=10**6, frames_per_step=1, seed=0)
    for i in range(4):
        store.add(make_episode(1000 * i, 12))
    batch = store.sample(batch_size=500, length=8)
    assert batch["obs"].shape == (500, 8, 1) and batch["action"].shape == (500, 8, 2)
    obs = batch["obs"][..., 0]
    crossed = 0
    for seq, first in zip(obs, batch["is_first"], strict=True):
        for t in range(1, 8):
            if first[t]:  # a new episode starts exactly here, at its step 0
                crossed += 1
                assert seq[t] % 1000 == 0 and seq[t] == seq[t - 1] - seq[t - 1] % 1000 + 1000
            else:
                assert seq[t] == seq[t - 1] + 1
        np.testing.assert_array_equal(first, obs_is_first(seq))
    assert crossed > 0
    np.testing.assert_allclose(batch["reward"], obs * 0.5)
    # Uniform over start positions: every one of the 48 - 8 + 1 starts appears.
    assert len(np.unique(obs[:, 0])) == 41


def obs_is_first(seq: np.ndarray) -> np.ndarray:
    return seq % 1000 == 0


def test_capacity_evicts_oldest_from_memory_but_keeps_files(tmp_path: Path):
    store = EpisodeStore(tmp_path, capacity=2 * 25, frames_per_step=2, seed=0)
    for i in range(4):
        store.add(make_episode(1000 * i, 10))
    assert store.num_episodes == 2  # 2 x 10 steps x 2 frames fit in 50 frames, 3 do not
    assert store.sample(50, 5)["obs"].min() >= 2000
    assert len(list(tmp_path.glob("ep-*.npz"))) == 4
    reloaded = EpisodeStore(tmp_path, capacity=2 * 25, frames_per_step=2, seed=0)
    reloaded.load()
    assert reloaded.num_episodes == 2 and reloaded.sample(20, 5)["obs"].min() >= 2000


def test_corrupt_and_truncated_files_are_reported_and_kept(tmp_path: Path, caplog):
    store = EpisodeStore(tmp_path, capacity=10**6, frames_per_step=1, seed=0)
    for i in range(3):
        store.add(make_episode(1000 * i, 10))
    good = tmp_path / "ep-000000-10.npz"
    truncated = tmp_path / "ep-000001-10.npz"
    truncated.write_bytes(truncated.read_bytes()[:100])
    garbage = tmp_path / "ep-000002-10.npz"
    garbage.write_bytes(b"not an npz file at all")
    reloaded = EpisodeStore(tmp_path, capacity=10**6, frames_per_step=1, seed=0)
    assert reloaded.load() == (9, 1)
    assert reloaded.num_episodes == 1
    assert truncated.name in caplog.text and garbage.name in caplog.text
    assert good.exists() and truncated.exists() and garbage.exists()


def test_malformed_episode_is_rejected(tmp_path: Path):
    store = EpisodeStore(tmp_path, capacity=10**6, frames_per_step=1, seed=0)
    episode = make_episode(0, 10)
    episode["reward"] = episode["reward"][:5]
    with pytest.raises(ValueError, match="different lengths"):
        store.add(episode)
    assert not list(tmp_path.iterdir())


def test_episode_file_with_a_single_value_is_skipped_on_load(tmp_path: Path, caplog):
    episode = make_episode(0, 10)
    episode["reward"] = np.float32(1.0)
    np.savez_compressed(tmp_path / "ep-000000-10.npz", **episode)
    store = EpisodeStore(tmp_path, capacity=10**6, frames_per_step=1, seed=0)
    assert store.load() == (0, 0)
    assert "['reward'] hold a single value" in caplog.text


def test_episodes_of_other_shapes_are_refused(tmp_path: Path):
    store = EpisodeStore(tmp_path, capacity=10**6, frames_per_step=1, seed=0)
    store.add(make_episode(0, 10, action_dim=2))
    store.check_shapes((1,), 2)
    with pytest.raises(
        ReplayError, match=r"observations \(1,\) and 2 actions, this run's task gives \(5,\) and 2"
    ):
        store.check_shapes((5,), 2)


def test_too_little_data_is_a_clear_error(tmp_path: Path):
    store = EpisodeStore(tmp_path, capacity=10**6, frames_per_step=1, seed=0)
    store.add(make_episode(0, 5))
    with pytest.raises(ReplayError, match="holds 5 steps, fewer than one sequence of 8"):
        store.sample(2, 8)


def test_sampler_state_resumes_the_same_stream(tmp_path: Path):
    store = EpisodeStore(tmp_path, capacity=10**6, frames_per_step=1, seed=3)
    for i in range(3):
        store.add(make_episode(1000 * i, 20))
    store.sample(4, 6)
    state = store.state_dict()
    expected = store.sample(4, 6)["obs"]
    resumed = EpisodeStore(tmp_path, capacity=10**6, frames_per_step=1, seed=99)
    resumed.load()
    resumed.load_state_dict(state)
    np.testing.assert_array_equal(resumed.sample(4, 6)["obs"], expected)


@pytest.mark.slow  # a pixel run on real dm_control
def test_pixel_episodes_are_held_compressed_in_memory(tmp_path: Path):
    """Frames of a real pixel run take a fraction of their raw size in memory (reacher: about a tenth),
    and read back exactly."""
    config = make_config(
        ["tiny"], ["env.task=dmc:reacher_easy", "env.obs=pixels", "run.steps=200", "run.eval_start=100000"]
    )
    Trainer(config, tmp_path / "run").run()
    files = sorted((tmp_path / "run" / "episodes").glob("ep-*.npz"))
    raw = [np.load(path)["obs"] for path in files]
    tracemalloc.start()
    store = EpisodeStore.read(tmp_path / "run" / "episodes", 2)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    raw_bytes = sum(frames.nbytes for frames in raw)
    assert held < raw_bytes / 3 and store.nbytes < raw_bytes / 3, (held, store.nbytes, raw_bytes)
    frames = store._episodes[0]["obs"]
    assert isinstance(frames, CompressedFrames) and frames.shape == raw[0].shape
    for start, stop in ((0, 51), (0, 1), (7, 8), (3, 30), (8, 16), (45, 51), (50, 51)):
        np.testing.assert_array_equal(frames[start:stop], raw[0][start:stop])
    np.testing.assert_array_equal(store.episodes[1]["obs"], raw[1])
    batch = store.sample(16, 8)
    assert batch["obs"].shape == (16, 8, 64, 64, 3) and batch["obs"].dtype == np.uint8
