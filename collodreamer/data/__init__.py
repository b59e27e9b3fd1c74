"""Episodes on disk and the sequence sampler that feeds training."""

from collodreamer.data.replay import Episode, EpisodeStore, ReplayError

__all__ = ["Episode", "EpisodeStore", "ReplayError"]
