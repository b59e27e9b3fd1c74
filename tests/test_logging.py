"""Metric averaging, shared by the training loop's logger and the planning agents."""

import json
from pathlib import Path

import torch

from collodreamer.agents import make_agent
from collodreamer.averages import Averages
from collodreamer.config import make_config
from collodreamer.spec import EnvSpec
from collodreamer.training.logger import Logger


def test_averages_are_means_since_the_last_take():
    averages = Averages()
    averages.add({"a": 1.0, "b": 4})
    averages.add({"a": 2.0})
    averages.add({"a": 6.0, "c": torch.tensor(0.5)})
    assert averages.take() == {"a": 3.0, "b": 4.0, "c": 0.5}
    assert averages.take() == {}  # started anew
    averages.add({"b": 1.0})
    assert averages.take() == {"b": 1.0}


def test_logger_and_planning_agents_average_the_same_way(tmp_path: Path):
    config = make_config(["tiny"], ["agent=latco", "env.obs=state"])
    logger = Logger(tmp_path, lambda: 0.0, config, 0)
    agent = make_agent(config, EnvSpec((6,), 2))
    for value in (1.0, 2.0, 4.5):
        logger.add({"model/loss": value})
        agent.log({"plan/ms": value})
    assert agent.metrics() == {"plan/ms": 2.5} and agent.metrics() == {}
    logger.write(100, {"train/return": 7.0})
    logger.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {
        "step": 100,
        "model/loss": 2.5,
        "train/return": 7.0,
        "elapsed_s": 0.0,
    }
