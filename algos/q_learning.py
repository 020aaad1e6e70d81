"""Tabular Q-learning, course unit 2 (FrozenLake, Taxi).

Acting is epsilon-greedy with the course's exponential decay of epsilon per episode;
learning is the one-step TD update

    Q(s, a) <- Q(s, a) + lr * (r + gamma * max_a' Q(s', a') - Q(s, a))

with no bootstrap from a terminal state (a truncated episode still bootstraps).
Evaluation plays the greedy policy on fixed reset seeds and scores mean - std.
A run is a function of (config, env config, seed): the same seed gives the same table.
"""

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from algos.configs import QLearningConfig
from algos.core.agents import Best, TableAgent
from algos.core.envs import EnvConfig, make_env
from algos.core.finite import check_finite
from algos.core.reporting import NullReporter, Reporter
from algos.core.rng import generator_state, set_generator_state
from algos.core.schedules import exponential_epsilon
from algos.core.timing import Stopwatch


@dataclass
class QLearningResult:
    """What a finished run leaves: the table, its last metrics, and the table at its best
    evaluation."""

    q_table: np.ndarray
    metrics: dict[str, float] = field(default_factory=dict)
    best: Best = field(default_factory=Best)

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
            f"tabular Q-learning needs discrete observations and actions; "
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


def train(
    cfg: QLearningConfig,
    env_cfg: EnvConfig,
    seed: int,
    reporter: Reporter | None = None,
    state: Mapping[str, Any] | None = None,
) -> QLearningResult:
    """Train a Q-table; continue from a checkpoint `state` when one is given."""
    reporter = reporter or NullReporter()
    env = make_env(env_cfg)
    n_states, n_actions = check_spaces(env)
    step, cap = fast_steps(env, cfg.max_steps)
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)  # seeds the env's own generator; each episode resets again below
    if state is None:
        table = [[0.0] * n_actions for _ in range(n_states)]
        episode = env_steps = 0
        best = Best()
    else:
        table = np.asarray(state["q_table"], dtype=np.float64).tolist()
        episode, env_steps = int(state["episode"]), int(state["env_steps"])
        set_generator_state(rng, state["rng"])
        set_generator_state(env.unwrapped.np_random, state["env_rng"])
        best = Best.restore(state.get("best"))
    lr, gamma = cfg.lr, cfg.gamma
    eval_seeds = cfg.evaluation_seeds()
    returns: list[tuple[int, float, float]] = []  # (step, return, wall time)
    sq_td_sum, updates = 0.0, 0
    watch = Stopwatch()
    metrics: dict[str, float] = {}
    while episode < cfg.episodes:
        epsilon = exponential_epsilon(
            episode, cfg.epsilon_start, cfg.epsilon_end, cfg.epsilon_decay
        )
        explore = (rng.random(cap) <= epsilon).tolist()
        random_actions = rng.integers(n_actions, size=cap).tolist()
        s, _ = env.reset()
        total = 0.0
        for t in range(cap):
            a = random_actions[t] if explore[t] else greedy_action(table[s])
            s2, r, terminated, truncated, _ = step(a)
            error = td_update(table, s, a, r, s2, terminated, lr, gamma)
            sq_td_sum += error * error
            total += r
            if terminated or truncated:
                t += 1
                break
            s = s2
        else:
            t = cap
        env_steps += t
        updates += t
        episode += 1
        returns.append((env_steps, float(total), time.time()))
        if episode % cfg.report_every == 0 or episode == cfg.episodes:
            seconds = watch.lap()
            q = np.asarray(table)
            mean, std, _ = evaluate(q, env_cfg, eval_seeds, cfg)
            metrics = {
                "train/env_steps": float(env_steps),
                "train/episodes": float(episode),
                "train/epsilon": epsilon,
                "train/q_mean": float(q.mean()),
                "loss/td": sq_td_sum / max(updates, 1),
                "eval/mean_return": mean,
                "eval/std_return": std,
                "eval/score": mean - std,
                "perf/env_steps_per_s": updates / seconds if seconds > 0 else 0.0,
                "perf/updates_per_s": updates / seconds if seconds > 0 else 0.0,
            }
            check_finite(env_steps, {k: metrics[k] for k in ("loss/td", "train/q_mean")})
            best.offer(mean - std, env_steps, q.copy)
            checkpoint = {
                "q_table": q,
                "best": best.state(),
                "episode": episode,
                "env_steps": env_steps,
                "rng": generator_state(rng),
                "env_rng": generator_state(env.unwrapped.np_random),
            }
            reporter.report(
                env_steps,
                metrics,
                history={"train/episode_return": returns},
                state=checkpoint,
                final=episode == cfg.episodes,
            )
            returns, sq_td_sum, updates = [], 0.0, 0
            watch.lap()  # evaluation and reporting are not training time
    env.close()
    return QLearningResult(q_table=np.asarray(table), metrics=metrics, best=best)
