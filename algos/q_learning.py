"""Tabular Q-learning, course unit 2 (FrozenLake, Taxi).

Acting is epsilon-greedy with the course's exponential decay of epsilon per episode;
learning is the one-step TD update

    Q(s, a) <- Q(s, a) + lr * (r + gamma * max_a' Q(s', a') - Q(s, a))

with no bootstrap from a terminal state (a truncated episode still bootstraps).
Evaluation plays the greedy policy on fixed reset seeds and scores mean - std.
A run is a function of (config, env config, seed): the same seed gives the same table.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from algos.configs import QLearningConfig
from algos.core import metrics as m
from algos.core.agents import TableAgent
from algos.core.envs import EnvConfig, make_env
from algos.core.finite import check_finite
from algos.core.reporting import BestEvaluation, Reporter, Reports
from algos.core.rng import generator_state, set_generator_state
from algos.core.schedules import exponential_epsilon


@dataclass
class QLearningResult:
    """What a finished run leaves: the table, its last metrics, and the table at its best
    evaluation."""

    q_table: np.ndarray
    metrics: dict[str, float] = field(default_factory=dict)
    best: BestEvaluation = field(default_factory=BestEvaluation)

    def agents(self) -> dict[str, TableAgent]:
        """The final and the best agent."""
        best = self.best.weights if self.best.weights is not None else self.q_table
        return {"final": TableAgent(self.q_table), "best": TableAgent(best)}

    def example_obs(self) -> np.ndarray:
        """A batch of observations (states) the agents take."""
        return np.arange(min(2, len(self.q_table)), dtype=np.int64)


def check_spaces(env: gym.Env) -> tuple[int, int]:
    """(number of states, number of actions); raises ValueError for non-tabular envs."""
    obs, act = env.observation_space, env.action_space
    if not isinstance(obs, gym.spaces.Discrete) or not isinstance(act, gym.spaces.Discrete):
        raise ValueError(
            f"a Q-table needs discrete observations and actions; "
            f"{env.spec.id if env.spec else env} has {obs} and {act}"
        )
    return int(obs.n), int(act.n)


def greedy_action(row: list[float]) -> int:
    """argmax of one table row, the first index on ties (as np.argmax)."""
    return row.index(max(row))


def fast_steps(env: gym.Env, max_steps: int) -> tuple[Callable, int]:
    """(the unwrapped env's step, the most steps of an episode). gym.make's wrappers are an
    order check, a passive checker and the time limit, which the cap reproduces: stepping
    the unwrapped env costs a third."""
    limit = env.spec.max_episode_steps if env.spec else None
    return env.unwrapped.step, min(max_steps, limit) if limit else max_steps


def evaluate(
    q_table: np.ndarray, env_cfg: EnvConfig, seeds: Sequence[int], cfg: QLearningConfig
) -> tuple[float, float, list[float]]:
    """Play the greedy policy one episode per reset seed, at most cfg.max_steps steps each:
    (mean, std, returns) as the course computes them."""
    env = make_env(env_cfg.full_games())
    # One env reset per seed and stepped as in train(): a table's greedy policy, one state
    # at a time, is many times faster than a vector env here.
    step, cap = fast_steps(env, cfg.max_steps)
    table = np.asarray(q_table).tolist()
    returns = []
    for seed in seeds:
        state, _ = env.reset(seed=int(seed))
        total = 0.0
        for _ in range(cap):
            state, reward, terminated, truncated, _ = step(greedy_action(table[state]))
            total += float(reward)
            if terminated or truncated:
                break
        returns.append(total)
    env.close()
    return float(np.mean(returns)), float(np.std(returns)), returns


def td_update(
    table: list[list[float]],
    state: int,
    action: int,
    reward: float,
    next_state: int,
    terminated: bool,
    lr: float,
    gamma: float,
) -> float:
    """One Q-learning update in place; returns the TD error before the update."""
    target = reward if terminated else reward + gamma * max(table[next_state])
    error = target - table[state][action]
    table[state][action] += lr * error
    return error


class TabularRun:
    """What a Q-learning run holds between episodes: the table (lists of floats: a row's
    max and index are faster on lists than on numpy for one state at a time), the env,
    its generators, the counters."""

    def __init__(self, env_cfg: EnvConfig, max_steps: int, seed: int,
                 state: Mapping[str, Any] | None = None) -> None:
        self.env = make_env(env_cfg)
        n_states, self.n_actions = check_spaces(self.env)
        self.step_env, self.cap = fast_steps(self.env, max_steps)
        self.rng = np.random.default_rng(seed)
        self.env.reset(seed=seed)  # seeds the env's generator; each episode resets again
        self.table = [[0.0] * self.n_actions for _ in range(n_states)]
        self.episode = self.env_steps = 0
        if state is not None:
            self.table = np.asarray(state["q_table"], dtype=np.float64).tolist()
            self.episode, self.env_steps = int(state["episode"]), int(state["env_steps"])
            set_generator_state(self.rng, state["rng"])
            set_generator_state(self.env.unwrapped.np_random, state["env_rng"])

    def q_table(self) -> np.ndarray:
        """The table as an array (a copy)."""
        return np.asarray(self.table)

    def state(self) -> dict[str, Any]:
        """Everything a checkpoint needs to continue exactly where this run is."""
        return {"q_table": self.q_table(), "episode": self.episode,
                "env_steps": self.env_steps, "rng": generator_state(self.rng),
                "env_rng": generator_state(self.env.unwrapped.np_random)}

    def actions(self, epsilon: float) -> tuple[list[bool], list[int]]:
        """An episode's exploration draws, made up front (one generator call each): per
        step, whether to explore, and the random action if so."""
        explore = (self.rng.random(self.cap) <= epsilon).tolist()
        return explore, self.rng.integers(self.n_actions, size=self.cap).tolist()

    def play_episode(self, epsilon: float, cfg: Any) -> tuple[float, int, float, int]:
        """One training episode, epsilon-greedy, with a TD update after every step:
        (its return, its steps, the sum of its squared TD errors, its updates)."""
        lr, gamma = cfg.lr, cfg.gamma
        table, step = self.table, self.step_env
        explore, random_actions = self.actions(epsilon)
        s, _ = self.env.reset()
        total = sq_td = 0.0
        steps = 0
        for t in range(self.cap):
            a = random_actions[t] if explore[t] else greedy_action(table[s])
            s2, r, terminated, truncated, _ = step(a)
            error = td_update(table, s, a, r, s2, terminated, lr, gamma)
            sq_td += error * error
            total += r
            steps += 1
            if terminated or truncated:
                break
            s = s2
        self.episode += 1
        self.env_steps += steps
        return float(total), steps, sq_td, steps


def train(cfg: QLearningConfig, env_cfg: EnvConfig, seed: int, reporter: Reporter | None = None,
          state: Mapping[str, Any] | None = None) -> QLearningResult:
    """Train a Q-table; continue from a checkpoint `state` when one is given."""
    return train_tabular(TabularRun(env_cfg, cfg.max_steps, seed, state), cfg, env_cfg,
                         reporter, state, m.TD_LOSS)


def train_tabular(run: TabularRun, cfg: Any, env_cfg: EnvConfig, reporter: Reporter | None,
                  state: Mapping[str, Any] | None, loss: str) -> QLearningResult:
    """The loop of the tabular methods (Q-learning, Monte Carlo): an episode at a time,
    epsilon decayed per episode, `run.play_episode(epsilon, cfg)` learning as its method
    does; the mean squared error of its updates reported as `loss`."""
    eval_seeds = cfg.evaluation_seeds()
    reports = Reports(reporter, cfg.report_every, cfg.episodes,
                      evaluate=lambda: evaluate(run.q_table(), env_cfg, eval_seeds, cfg),
                      weights=run.q_table, position=run.episode, state=state,
                      agent=lambda: TableAgent(run.q_table()))
    sq_err = 0.0
    while run.episode < cfg.episodes:
        epsilon = exponential_epsilon(run.episode, cfg.epsilon_start, cfg.epsilon_end,
                                      cfg.epsilon_decay)
        episode_return, steps, episode_sq_err, updates = run.play_episode(epsilon, cfg)
        # A NaN reward or a diverged value: stop at the episode it happened in.
        check_finite(run.env_steps, {loss: episode_sq_err})
        sq_err += episode_sq_err
        reports.episode(run.env_steps, episode_return)
        reports.count(run.env_steps, run.episode, steps, updates=updates)
        if reports.due(run.episode):
            reports.report(run.env_steps, run.episode, {
                m.EPISODES: float(run.episode),
                m.EPSILON: epsilon,
                m.Q_MEAN: float(np.mean(run.table)),
                loss: sq_err / max(reports.updates, 1),
            }, run.state())
            sq_err = 0.0
    run.env.close()
    return QLearningResult(q_table=run.q_table(), metrics=reports.metrics, best=reports.best)
