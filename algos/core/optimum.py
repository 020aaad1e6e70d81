"""The optimal policy of a tabular env whose dynamics are known: value iteration.

gymnasium's toy-text envs (FrozenLake, Taxi, CliffWalking) publish their model as
`env.unwrapped.P[state][action] = [(probability, next state, reward, terminated), ...]`,
so the optimum every tabular result can be measured against is computed, not learned:

    Q(s, a) = sum_{s'} p(s' | s, a) (r + gamma max_a' Q(s', a') [s' not terminal])

iterated until no value moves by more than `tol`. The greedy policy of that Q-table is
optimal for the discounted return; played with the same step cap and seeds as an
experiment's evaluation, it gives the figures a learned agent is compared with.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def transition_arrays(model: dict[int, dict[int, list[tuple]]], n_states: int,
                      n_actions: int) -> tuple[np.ndarray, np.ndarray]:
    """(p, r): p[s, a, s'] the probability of s' (0 where s' ends the episode: its value
    never counts), and r[s, a] the expected reward of the step."""
    p = np.zeros((n_states, n_actions, n_states))
    r = np.zeros((n_states, n_actions))
    for s in range(n_states):
        for a in range(n_actions):
            for prob, nxt, reward, terminated in model[s][a]:
                r[s, a] += prob * reward
                if not terminated:
                    p[s, a, nxt] += prob
    return p, r


def value_iteration(model: dict[int, dict[int, list[tuple]]], n_states: int, n_actions: int,
                    gamma: float, tol: float = 1e-12, max_sweeps: int = 100_000) -> np.ndarray:
    """The optimal Q-table (states x actions) of a known model, to within `tol`."""
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma={gamma}: value iteration here needs 0 < gamma < 1")
    p, r = transition_arrays(model, n_states, n_actions)
    q = np.zeros((n_states, n_actions))
    for _ in range(max_sweeps):
        updated = r + gamma * p @ q.max(axis=1)
        if np.max(np.abs(updated - q)) <= tol:
            return updated
        q = updated
    raise RuntimeError(f"value iteration did not converge within {max_sweeps} sweeps")


def optimal_q_table(env: Any, gamma: float) -> np.ndarray:
    """The optimal Q-table of a gymnasium toy-text env (an env made with make_env, or
    gymnasium.make): from its published model `env.unwrapped.P`."""
    inner = env.unwrapped
    if not hasattr(inner, "P"):
        raise ValueError(f"{inner.spec.id if inner.spec else inner}: publishes no model "
                         "(env.unwrapped.P); value iteration needs one")
    return value_iteration(inner.P, int(env.observation_space.n), int(env.action_space.n),
                           gamma)
