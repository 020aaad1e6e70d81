"""Value iteration on known tabular models: the optimum every tabular result is measured
against, checked where it is known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from algos.core.agents import TableAgent
from algos.core.envs import EnvConfig, make_env
from algos.core.evaluation import play_episodes
from algos.core.metrics import score
from algos.core.optimum import optimal_q_table, value_iteration
from pipelines.config.compose import compose_and_check

FROZENLAKE = EnvConfig(id="FrozenLake-v1", kwargs={"map_name": "4x4", "is_slippery": False})


def test_non_slippery_frozenlake_by_hand():
    # SFFF / FHFH / FFFH / HFFG: the goal is 6 moves from the start, the only reward is
    # the 1 of the 6th, so the start's value is gamma^5; a state next to the goal is worth
    # 1 (its move there ends the episode), a hole nothing.
    env = make_env(FROZENLAKE)
    q = optimal_q_table(env, gamma=0.95)
    v = q.max(axis=1)
    assert v[0] == pytest.approx(0.95 ** 5)
    assert v[14] == pytest.approx(1.0) and v[11] == pytest.approx(0.0)  # 11: a hole
    assert v[15] == 0.0  # the goal ends the episode: nothing after it
    # Greedy on it: every reachable start state gets to the goal in 6 moves.
    mean, std, _ = play_episodes(FROZENLAKE, range(20), TableAgent(q).act, 99)
    assert (mean, std) == (1.0, 0.0)
    env.close()


def test_a_two_state_chain_by_hand():
    # State 0: action 0 stays (reward 0), action 1 moves to state 1 (reward 1); state 1:
    # either action ends the episode with reward 2. Q(1, .) = 2; Q(0, 1) = 1 + 0.5 * 2 = 2;
    # Q(0, 0) = 0 + 0.5 * max Q(0, .) = 1.
    model = {0: {0: [(1.0, 0, 0.0, False)], 1: [(1.0, 1, 1.0, False)]},
             1: {0: [(1.0, 1, 2.0, True)], 1: [(1.0, 1, 2.0, True)]}}
    q = value_iteration(model, 2, 2, gamma=0.5)
    np.testing.assert_allclose(q, [[1.0, 2.0], [2.0, 2.0]])
    with pytest.raises(ValueError, match="gamma=1.0"):
        value_iteration(model, 2, 2, gamma=1.0)


def test_the_optimal_taxi_policy_scores_4_853_on_the_course_seeds():
    # The figure the course's Taxi experiment is held to: mean 7.56, std 2.71 over its 100
    # evaluation seeds with its 99-step cap and gamma 0.95.
    cfg = compose_and_check(["experiment=taxi_course"]).cfg
    q = optimal_q_table(make_env(cfg.env), cfg.algo.gamma)
    mean, std, _ = play_episodes(cfg.env, cfg.algo.evaluation_seeds(), TableAgent(q).act,
                                 cfg.algo.max_steps)
    assert mean == pytest.approx(7.56) and std == pytest.approx(2.7067, abs=1e-4)
    assert score(mean, std) == pytest.approx(4.8533, abs=1e-4)
