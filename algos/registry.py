"""The algorithms by config name: what the pipelines look up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from algos import dqn, q_learning, reinforce
from algos.core.agents import Agent, AgentFileError, NetworkAgent, TableAgent, read_manifest


@dataclass(frozen=True)
class Algorithm:
    """An algorithm's typed config, its train and evaluate functions."""

    name: str
    config_class: type
    """Its config dataclass; evaluation_seeds() gives the reset seed of each evaluation
    episode."""
    train: Callable[..., Any]
    """train(cfg, env_cfg, seed, reporter=None, state=None) -> a result with agents()."""
    evaluate: Callable[..., tuple[float, float, list[float]]]
    """evaluate(model, env_cfg, seeds, cfg) -> (mean, std, returns): one episode per reset
    seed, played as the run's evaluations play (algos.core.evaluation)."""
    check_env: Callable[[Any], Any]
    """Raises ValueError when the algorithm cannot run on the given env."""
    replay_nbytes: Callable[[Any, Any], tuple[int, int]] = lambda cfg, obs_space: (0, 0)
    """(host bytes, learner-device bytes) of the replay memory a run allocates, from its
    config and the env's observation space (none: a table or one batch of episodes)."""
    agent: type = NetworkAgent
    """How its trained agent acts and is saved and loaded (algos.core.agents): its train()
    result's agents() are of this class."""
    budget: tuple[str, str] = ("total_steps", "train/env_steps")
    """(the config field that holds the training budget, the reported metric that counts
    toward it)."""

    def evaluation(self, cfg: Any) -> dict[str, Any]:
        """How a run of config `cfg` evaluated its agent: the reset seed of each episode and
        the most steps of one ({"seeds": [...], "max_steps": int or None})."""
        return {"seeds": cfg.evaluation_seeds(), "max_steps": getattr(cfg, "max_steps", None)}


ALGORITHMS: dict[str, Algorithm] = {
    "q_learning": Algorithm(
        name="q_learning",
        config_class=q_learning.QLearningConfig,
        train=q_learning.train,
        evaluate=q_learning.evaluate,
        check_env=q_learning.check_spaces,
        agent=TableAgent,
        budget=("episodes", "train/episodes"),
    ),
    "dqn": Algorithm(
        name="dqn",
        config_class=dqn.DQNConfig,
        train=dqn.train,
        evaluate=dqn.evaluate,
        check_env=dqn.check_spaces,
        replay_nbytes=dqn.replay_nbytes,
    ),
    "reinforce": Algorithm(
        name="reinforce",
        config_class=reinforce.ReinforceConfig,
        train=reinforce.train,
        evaluate=reinforce.evaluate,
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


def load_agent(folder: str | Path) -> tuple[Agent, dict[str, Any]]:
    """The agent saved in `folder` (algos.core.agents.save_agent) and its manifest, its
    files checked against their recorded SHA-256 first."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest["algo"] not in ALGORITHMS:
        raise AgentFileError(f"{folder}: an agent of algorithm {manifest['algo']!r}; known: "
                             f"{', '.join(ALGORITHMS)}")
    algorithm = get_algorithm(manifest["algo"])
    return algorithm.agent.load(folder, manifest["spec"]), manifest
