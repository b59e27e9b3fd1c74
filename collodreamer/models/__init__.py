"""Networks, the RSSM (Gaussian or categorical latents), the world-model loss and value math."""

from collodreamer.models.networks import MLP
from collodreamer.models.rssm import RSSM, State
from collodreamer.models.tensors import to_torch
from collodreamer.models.world_model import WorldModel

__all__ = ["MLP", "RSSM", "State", "WorldModel", "to_torch"]
