"""The algorithms by config name: what the pipelines look up."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from algos import configs
from algos.core import metrics as m
from algos.core.agents import Agent, AgentFileError, NetworkAgent, TableAgent, read_manifest
from algos.core.evaluation import held_out_seeds
from algos.core.metrics import ENV_STEPS, EPISODES

EVERY_REPORT = (m.ENV_STEPS, m.EVAL_MEAN_RETURN, m.EVAL_STD_RETURN, m.EVAL_SCORE,
                m.ENV_STEPS_PER_S, m.UPDATES_PER_S, m.EPISODE_RETURN_MEAN)
"""What every algorithm's reports carry (Reports.report), beside its own metrics."""


@dataclass(frozen=True)
class Algorithm:
    """An algorithm: its typed config, and the module that trains and evaluates it.

    The module is imported on first use, so that looking an algorithm up, composing and
    validating its config import no learner's libraries (a Q-learning sweep never imports
    torch). It defines

        train(cfg, env_cfg, seed, reporter=None, state=None) -> a result with agents()
        evaluate(model, env_cfg, seeds, cfg) -> (mean, std, returns): one episode per
            reset seed, played as the run's evaluations play (algos.core.evaluation)
        check_spaces(env): raises ValueError when the algorithm cannot run on the env

    and, where a run allocates replay memory, replay_nbytes(cfg, obs_space) -> (host
    bytes, learner-device bytes)."""

    name: str
    module: str
    """The module that implements it."""
    config_class: type
    """Its config dataclass (algos.configs); evaluation_seeds() gives the reset seed of
    each evaluation episode."""
    agent: type[TableAgent] | type[NetworkAgent] = NetworkAgent
    """How its trained agent acts and is saved and loaded (algos.core.agents): its train()
    result's agents() are of this class."""
    budget: tuple[str, str] = ("total_steps", ENV_STEPS)
    """(the config field that holds the training budget, the reported metric that counts
    toward it)."""
    mutable: tuple[str, ...] = ()
    """The config fields that may change during a run (Population Based Training's
    explore step): train() reads them from its config at each use, also after it
    continues from a checkpoint taken under other values."""
    reports: tuple[str, ...] = ()
    """The metrics of its reports beside EVERY_REPORT (what a sweep may rank by and a
    scheduler may count time in)."""

    @property
    def reported(self) -> tuple[str, ...]:
        """Every metric its reports carry."""
        return EVERY_REPORT + self.reports

    @property
    def code(self) -> ModuleType:
        """The module that implements it (imported now if it was not)."""
        return importlib.import_module(self.module)

    @property
    def train(self) -> Callable[..., Any]:
        """Its train function."""
        return self.code.train

    @property
    def evaluate(self) -> Callable[..., tuple[float, float, list[float]]]:
        """Its evaluate function."""
        return self.code.evaluate

    def check_env(self, env: Any) -> None:
        """Raises ValueError when the algorithm cannot run on `env`."""
        self.code.check_spaces(env)

    def replay_nbytes(self, cfg: Any, obs_space: Any) -> tuple[int, int]:
        """(host bytes, learner-device bytes) of the replay memory a run of `cfg` allocates
        (none: a table, or one batch of episodes)."""
        planned = getattr(self.code, "replay_nbytes", None)
        return planned(cfg, obs_space) if planned else (0, 0)

    def evaluation(self, cfg: Any) -> dict[str, Any]:
        """How a run of config `cfg` evaluates its agent: the reset seed of each episode,
        the held-out seeds of its final test (algos.core.evaluation.held_out_seeds), and
        the most steps of one ({"seeds": [...], "test_seeds": [...], "max_steps": int or
        None})."""
        seeds = cfg.evaluation_seeds()
        return {"seeds": seeds, "test_seeds": held_out_seeds(seeds),
                "max_steps": getattr(cfg, "max_steps", None)}


def _tabular(name: str, config_class: type, loss: str) -> Algorithm:
    """A tabular method (algos/q_learning.py's loop): a Q-table agent, a budget of
    episodes, the same mutable keys and reports but for its loss."""
    return Algorithm(
        name=name, module=f"algos.{name}", config_class=config_class, agent=TableAgent,
        budget=("episodes", EPISODES), mutable=("lr", "gamma", "epsilon_end", "epsilon_decay"),
        reports=(m.EPISODES, m.EPSILON, m.Q_MEAN, loss),
    )


ALGORITHMS: dict[str, Algorithm] = {
    "q_learning": _tabular("q_learning", configs.QLearningConfig, m.TD_LOSS),
    "monte_carlo": _tabular("monte_carlo", configs.MonteCarloConfig, m.MC_LOSS),
    "dqn": Algorithm(
        name="dqn",
        module="algos.dqn",
        config_class=configs.DQNConfig,
        mutable=("lr", "lr_end", "gamma", "exploration_fraction", "epsilon_end",
                 "target_update_interval", "max_grad_norm"),
        reports=(m.UPDATES, m.EPSILON, m.Q_MEAN, m.TD_LOSS, m.WORKER_RESTARTS),
    ),
    "reinforce": Algorithm(
        name="reinforce",
        module="algos.reinforce",
        config_class=configs.ReinforceConfig,
        budget=("episodes", EPISODES),
        mutable=("lr", "lr_end", "gamma", "episodes_per_update"),
        reports=(m.EPISODES, m.POLICY_LOSS, m.ENTROPY, m.WORKERS_PER_UPDATE,
                 m.WORKER_RESTARTS),
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
