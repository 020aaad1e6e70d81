"""The algorithms by config name: what the pipelines look up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from algos import dqn, q_learning, reinforce


@dataclass(frozen=True)
class Algorithm:
    """An algorithm's typed config and its train function."""

    name: str
    config_class: type
    train: Callable[..., Any]
    check_env: Callable[[Any], Any]
    """Raises ValueError when the algorithm cannot run on the given env."""
    replay_nbytes: Callable[[Any, Any], tuple[int, int]] = lambda cfg, obs_space: (0, 0)
    """(host bytes, learner-device bytes) of the replay memory a run allocates, from its
    config and the env's observation space (none: a table or one batch of episodes)."""
    budget: tuple[str, str] = ("total_steps", "train/env_steps")
    """(the config field that holds the training budget, the reported metric that counts
    toward it)."""


ALGORITHMS: dict[str, Algorithm] = {
    "q_learning": Algorithm(
        name="q_learning",
        config_class=q_learning.QLearningConfig,
        train=q_learning.train,
        check_env=q_learning.check_spaces,
        budget=("episodes", "train/episodes"),
    ),
    "dqn": Algorithm(
        name="dqn",
        config_class=dqn.DQNConfig,
        train=dqn.train,
        check_env=dqn.check_spaces,
        replay_nbytes=dqn.replay_nbytes,
    ),
    "reinforce": Algorithm(
        name="reinforce",
        config_class=reinforce.ReinforceConfig,
        train=reinforce.train,
        check_env=reinforce.check_spaces,
        budget=("episodes", "train/episodes"),
    ),
}


def get_algorithm(name: str) -> Algorithm:
    """The algorithm registered under `name`."""
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise KeyError(f"unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}") from None
