"""Evaluation: episodes played side by side in one vector env, one reset seed each.

Every algorithm's `evaluate` has one signature,

    evaluate(model, env_cfg, seeds, cfg) -> (mean, std, returns)

the algorithm's model (a Q-table, a network), the env, one reset seed per episode (the
run's own are `cfg.evaluation_seeds()`), and the algorithm's config for how it plays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from algos.core.envs import EnvConfig, make_vector_env

TEST_SEED = 10_000_000
"""Where the held-out seeds start (above every evaluation seed: they start there or right
after the largest evaluation seed)."""


def held_out_seeds(seeds: Sequence[int]) -> list[int]:
    """As many reset seeds as `seeds`, none of them among `seeds`: the held-out test of a
    run whose evaluations (and so its best-agent selection) played `seeds`."""
    start = max(TEST_SEED, max(seeds, default=-1) + 1)
    return list(range(start, start + len(seeds)))


class SeedRange:
    """Config mixin: evaluation episodes reset with seeds eval_seed, eval_seed + 1, ...,
    one per episode of eval_episodes."""

    eval_seed: int
    eval_episodes: int

    def evaluation_seeds(self) -> list[int]:
        """The reset seed of each evaluation episode."""
        return list(range(self.eval_seed, self.eval_seed + self.eval_episodes))


def play_episodes(
    env_cfg: EnvConfig,
    seeds: Sequence[int],
    act: Callable[[np.ndarray], np.ndarray],
    max_steps: int | None = None,
) -> tuple[float, float, list[float]]:
    """One episode per reset seed, side by side in one vector env, whole games (a life
    lost does not end one), actions from `act(observations)`; steps after an env's
    episode ended do not count. Returns (mean, std, returns)."""
    seeds = [int(s) for s in seeds]
    episodes = len(seeds)
    envs = make_vector_env(env_cfg.full_games(), episodes)  # evaluation: whole games
    # Contiguous seeds as the first one (env i resets with seed + i), others one per env:
    # ale-py's vector env takes them as an array, gymnasium's as a list of ints.
    if seeds == list(range(seeds[0], seeds[0] + episodes)):
        obs, _ = envs.reset(seed=seeds[0])
    else:
        per_env: Any = np.asarray(seeds) if env_cfg.kind == "atari" else seeds
        obs, _ = envs.reset(seed=per_env)
    returns = np.zeros(episodes)
    done = np.zeros(episodes, dtype=np.bool_)
    steps = 0
    while not done.all() and (max_steps is None or steps < max_steps):
        obs, rewards, terminated, truncated, _ = envs.step(act(obs))
        returns += np.where(done, 0.0, rewards)
        done |= terminated | truncated
        steps += 1
    envs.close()
    return float(returns.mean()), float(returns.std()), returns.tolist()
