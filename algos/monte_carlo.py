"""Tabular Monte Carlo control, course unit 2 (FrozenLake, Taxi): Q-learning's acting, the
update at the end of each episode.

Acting is epsilon-greedy with the same exponential decay of epsilon per episode as
Q-learning (algos/q_learning.py, whose loop, evaluation and checkpoints this shares).
When an episode ends, each step's return

    G_t = r_{t+1} + gamma r_{t+2} + ... + gamma^(T-t-1) r_T

moves the estimate of the pair taken there toward it:

    Q(S_t, A_t) <- Q(S_t, A_t) + lr * (G_t - Q(S_t, A_t))

at every visit of a pair (`first_visit=false`, the default) or at its first visit only;
with `lr=null` the step is 1 / N(S_t, A_t), so Q is the sample average of the returns seen.
The target is the return actually received (TD's target is r + gamma max Q(s', .), one
step on), but for an episode cut by a time limit (the env's, or `max_steps`) rather than
ended by the env: the rewards after the cut were never received, and a return that stops
there makes the pairs played just before it look nearly free (on Taxi, a bump against a
wall late in a cut episode scores about -1, which pulls the greedy policy toward loops;
measured in docs/algorithms/monte-carlo.md). With
`bootstrap_truncated` (the default) such an episode's returns get gamma^(T-t)
max_a Q(S_T, a) for what is missing, as Q-learning bootstraps at the cut (partial-episode
bootstrapping, Pardo et al. 2018, "Time Limits in Reinforcement Learning").
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from algos.configs import MonteCarloConfig
from algos.core import metrics as m
from algos.core.envs import EnvConfig
from algos.core.reporting import Reporter
from algos.q_learning import (
    QLearningResult,
    TabularRun,
    check_spaces,
    evaluate,
    greedy_action,
    train_tabular,
)

__all__ = ["check_spaces", "evaluate", "train", "episode_returns", "mc_update"]


def episode_returns(rewards: Sequence[float], gamma: float, tail: float = 0.0) -> list[float]:
    """G_t of each step t of an episode: the discounted sum of the rewards from t on, and
    of `tail`, the value of the state it was cut at (0: it ended)."""
    out = [0.0] * len(rewards)
    g = tail
    for t in range(len(rewards) - 1, -1, -1):
        g = rewards[t] + gamma * g
        out[t] = g
    return out


def mc_update(table: list[list[float]], counts: list[list[int]],
              episode: Sequence[tuple[int, int, float]], gamma: float, lr: float | None,
              first_visit: bool, tail: float = 0.0) -> tuple[float, int]:
    """Update `table` in place from one episode of (state, action, reward) steps and the
    value `tail` of the state it was cut at (0: it ended): each visit's pair (or each
    pair's first visit) moves toward its return, by `lr` or by 1 / N(s, a) (`counts`, kept
    in place). Returns (the sum of the squared errors G - Q(s, a) before each update, the
    number of updates)."""
    returns = episode_returns([r for _, _, r in episode], gamma, tail)
    first: dict[tuple[int, int], int] = {}
    for t, (s, a, _) in enumerate(episode):
        first.setdefault((s, a), t)
    sq_err, updates = 0.0, 0
    for t, (s, a, _) in enumerate(episode):
        if first_visit and first[(s, a)] != t:
            continue
        counts[s][a] += 1
        error = returns[t] - table[s][a]
        table[s][a] += (lr if lr is not None else 1.0 / counts[s][a]) * error
        sq_err += error * error
        updates += 1
    return sq_err, updates


class MonteCarloRun(TabularRun):
    """A Q-learning run's table, env, generators and counters, with the visit counts of
    the sample average, learning at each episode's end."""

    def __init__(self, env_cfg: EnvConfig, max_steps: int, seed: int,
                 state: Mapping[str, Any] | None = None) -> None:
        super().__init__(env_cfg, max_steps, seed, state)
        self.counts = [[0] * self.n_actions for _ in self.table]
        if state is not None:
            self.counts = np.asarray(state["counts"], dtype=np.int64).tolist()

    def state(self) -> dict[str, Any]:
        """The Q-learning run's state and the visit counts."""
        return {**super().state(), "counts": np.asarray(self.counts, dtype=np.int64)}

    def play_episode(self, epsilon: float, cfg: Any) -> tuple[float, int, float, int]:
        """One training episode, epsilon-greedy, then the Monte Carlo update: (its return,
        its steps, the sum of its squared errors, its updates)."""
        table, step = self.table, self.step_env
        explore, random_actions = self.actions(epsilon)
        s, _ = self.env.reset()
        episode: list[tuple[int, int, float]] = []
        terminated = False
        for t in range(self.cap):
            a = random_actions[t] if explore[t] else greedy_action(table[s])
            s2, r, terminated, truncated, _ = step(a)
            episode.append((s, a, float(r)))
            s = s2
            if terminated or truncated:
                break
        # Cut by a time limit, not ended: what the missing rewards are worth from s.
        tail = max(table[s]) if cfg.bootstrap_truncated and not terminated else 0.0
        sq_err, updates = mc_update(table, self.counts, episode, cfg.gamma, cfg.lr,
                                    cfg.first_visit, tail)
        self.episode += 1
        self.env_steps += len(episode)
        return sum(r for _, _, r in episode), len(episode), sq_err, updates


def train(cfg: MonteCarloConfig, env_cfg: EnvConfig, seed: int,
          reporter: Reporter | None = None,
          state: Mapping[str, Any] | None = None) -> QLearningResult:
    """Train a Q-table by Monte Carlo control; continue from a checkpoint `state`."""
    return train_tabular(MonteCarloRun(env_cfg, cfg.max_steps, seed, state), cfg, env_cfg,
                         reporter, state, m.MC_LOSS)
