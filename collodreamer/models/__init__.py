"""Networks, the RSSM (Gaussian or categorical latents), the world-model loss and value math."""

from collodreamer.models.networks import MLP
from collodreamer.models.rssm import RSSM, State, flatten
from collodreamer.models.tensors import frozen, to_torch
from collodreamer.models.world_model import WorldModel

__all__ = ["MLP", "RSSM", "State", "WorldModel", "flatten", "frozen", "to_torch"]
