"""Agents: one file each, one shared interface (:class:`Agent`)."""

from __future__ import annotations

import torch

from collodreamer.agents.base import Agent, ModelBased, Planner
from collodreamer.agents.collodreamer import ColloDreamerAgent
from collodreamer.agents.dreamer import DreamerAgent
from collodreamer.agents.latco import LatCoAgent
from collodreamer.agents.random_agent import RandomAgent
from collodreamer.config import ConfigError
from collodreamer.schema import Config
from collodreamer.spec import EnvSpec


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; any other name is used as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: '{name}' is not a torch device; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda was asked for but torch sees no CUDA device")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device: {name} is not here: torch sees {torch.cuda.device_count()} CUDA devices")
    return device


def make_agent(config: Config, spec: EnvSpec) -> Agent:
    """The agent ``config.agent`` names, built for ``spec``."""
    if config.agent == "random":
        return RandomAgent(spec, config.seed)
    device = resolve_device(config.device)
    if config.agent == "dreamer":
        return DreamerAgent(config, spec, device)
    if config.agent == "latco":
        return LatCoAgent(config, spec, device)
    if config.agent == "collodreamer":
        return ColloDreamerAgent(config, spec, device)
    raise ConfigError(f"agent: unknown agent '{config.agent}'")


__all__ = ["Agent", "ModelBased", "Planner", "make_agent", "resolve_device"]
