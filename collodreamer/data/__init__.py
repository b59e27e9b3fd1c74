"""Episodes on disk and the sequence sampler that feeds training."""

from collodreamer.data.episode import Episode, add_step, episode_problem, finish_episode, start_episode
from collodreamer.data.replay import EpisodeStore, ReplayError

__all__ = [
    "Episode",
    "EpisodeStore",
    "ReplayError",
    "add_step",
    "episode_problem",
    "finish_episode",
    "start_episode",
]
