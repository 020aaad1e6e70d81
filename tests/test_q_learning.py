"""Tabular Q-learning: the update rule, the schedule, determinism, resume, and learning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from algos.core.envs import EnvConfig, make_env
from algos.core.reporting import MemoryReporter
from algos.core.schedules import exponential_epsilon
from algos.q_learning import QLearningConfig, check_spaces, evaluate, td_update, train
from pipelines.config.compose import compose_config

FROZENLAKE = EnvConfig("FrozenLake-v1", {"map_name": "4x4", "is_slippery": False})
SLIPPERY = EnvConfig("FrozenLake-v1", {"map_name": "4x4", "is_slippery": True})


def course(name: str):
    """The algo and env configs of a conf/experiment file."""
    cfg = compose_config([f"experiment={name}"]).cfg
    return cfg.algo, cfg.env


def test_td_update_matches_hand_worked_example():
    # Q(0,1) = 0.2; next state 1 has Q = [0.5, 2.0]; r = 1, lr = 0.7, gamma = 0.95:
    # target = 1 + 0.95 * 2.0 = 2.9; error = 2.9 - 0.2 = 2.7; Q(0,1) = 0.2 + 0.7 * 2.7 = 2.09
    table = [[0.0, 0.2], [0.5, 2.0]]
    error = td_update(table, 0, 1, 1.0, 1, False, lr=0.7, gamma=0.95)
    assert error == pytest.approx(2.7)
    assert table[0][1] == pytest.approx(2.09)
    assert table[1] == [0.5, 2.0] and table[0][0] == 0.0


def test_td_update_does_not_bootstrap_from_a_terminal_state():
    # Terminal: target = r = 1; Q(0,0) = 0.5 + 0.5 * (1 - 0.5) = 0.75, whatever Q(1) holds.
    table = [[0.5, 0.0], [10.0, 10.0]]
    td_update(table, 0, 0, 1.0, 1, True, lr=0.5, gamma=0.9)
    assert table[0][0] == pytest.approx(0.75)
    # The same step, truncated rather than terminated, bootstraps: 0.5 + 0.5 * (1 + 9 - 0.5)
    table = [[0.5, 0.0], [10.0, 10.0]]
    td_update(table, 0, 0, 1.0, 1, False, lr=0.5, gamma=0.9)
    assert table[0][0] == pytest.approx(5.25)


def test_epsilon_decays_exponentially_from_start_to_end():
    assert exponential_epsilon(0, 1.0, 0.05, 0.0005) == pytest.approx(1.0)
    assert exponential_epsilon(1000, 1.0, 0.05, 0.0005) == pytest.approx(
        0.05 + 0.95 * math.exp(-0.5)
    )
    assert exponential_epsilon(100_000, 1.0, 0.05, 0.005) == pytest.approx(0.05)
    values = [exponential_epsilon(e, 1.0, 0.05, 0.005) for e in range(0, 2000, 100)]
    assert values == sorted(values, reverse=True)


def test_training_reports_the_epsilon_of_its_schedule():
    reporter = MemoryReporter()
    cfg = QLearningConfig(episodes=400, report_every=200, epsilon_decay=0.01)
    train(cfg, FROZENLAKE, seed=0, reporter=reporter)
    # The last episode played (index 399) used the schedule's value at 399.
    assert reporter.reports[-1]["train/epsilon"] == pytest.approx(
        exponential_epsilon(399, 1.0, 0.05, 0.01)
    )


def test_same_seed_same_table_other_seed_other_table():
    cfg = QLearningConfig(episodes=300, report_every=300)
    a = train(cfg, SLIPPERY, seed=7).q_table
    b = train(cfg, SLIPPERY, seed=7).q_table
    c = train(cfg, SLIPPERY, seed=8).q_table
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_resuming_from_a_checkpoint_gives_the_uninterrupted_table():
    cfg = QLearningConfig(episodes=600, report_every=300)
    straight = train(cfg, SLIPPERY, seed=3).q_table
    first_half = MemoryReporter()
    train(QLearningConfig(episodes=300, report_every=300), SLIPPERY, seed=3, reporter=first_half)
    resumed = train(cfg, SLIPPERY, seed=3, state=first_half.last_state).q_table
    assert np.array_equal(straight, resumed)


def test_every_episode_return_is_reported_at_its_env_step():
    reporter = MemoryReporter()
    train(QLearningConfig(episodes=250, report_every=100), FROZENLAKE, seed=0, reporter=reporter)
    points = reporter.history["train/episode_return"]
    assert len(points) == 250
    steps = [p[0] for p in points]
    assert steps == sorted(steps) and steps[-1] == reporter.reports[-1]["step"]
    times = [p[2] for p in points]  # each episode stamped when it ended
    assert times == sorted(times) and times[0] < times[-1]
    assert [r["step"] for r in reporter.reports] == [steps[99], steps[199], steps[249]]


def test_evaluation_uses_one_fixed_seed_per_episode():
    q = np.zeros((500, 6))
    cfg = QLearningConfig(max_steps=99)
    m1, s1, r1 = evaluate(q, EnvConfig("Taxi-v3"), [1, 2, 3], cfg)
    m2, s2, r2 = evaluate(q, EnvConfig("Taxi-v3"), [1, 2, 3], cfg)
    assert len(r1) == 3 and r1 == r2
    # An all-zero table always moves south: never a drop-off, -1 for each of 99 steps.
    assert r1 == [-99.0, -99.0, -99.0] and s1 == 0.0


def test_q_learning_refuses_continuous_observations():
    env = make_env(EnvConfig("CartPole-v1"))
    with pytest.raises(ValueError, match="discrete"):
        check_spaces(env)


def test_course_settings_are_the_courses():
    fl, fl_env = course("frozenlake_course")
    assert (fl.lr, fl.gamma, fl.max_steps, fl.episodes) == (0.7, 0.95, 99, 10_000)
    assert (fl.epsilon_start, fl.epsilon_end, fl.epsilon_decay) == (1.0, 0.05, 0.0005)
    assert fl_env.kwargs == {"map_name": "4x4", "is_slippery": False}
    taxi, taxi_env = course("taxi_course")
    assert (taxi.lr, taxi.gamma, taxi.max_steps, taxi.episodes) == (0.7, 0.95, 99, 25_000)
    assert (taxi.epsilon_start, taxi.epsilon_end, taxi.epsilon_decay) == (1.0, 0.05, 0.005)
    assert taxi_env.id == "Taxi-v3"
    assert len(taxi.evaluation_seeds()) == 100 and len(fl.evaluation_seeds()) == 100


def test_frozenlake_course_settings_solve_the_lake():
    algo, env = course("frozenlake_course")
    result = train(algo, env, seed=0)
    assert result.metrics["eval/mean_return"] == 1.0


def test_taxi_course_settings_pass_the_course_mark_and_98_percent_of_the_optimum():
    from algos.core.agents import TableAgent
    from algos.core.envs import make_env
    from algos.core.evaluation import play_episodes
    from algos.core.optimum import optimal_q_table

    algo, env = course("taxi_course")
    result = train(algo, env, seed=0)
    assert result.metrics["eval/score"] >= 4.5, result.metrics
    assert result.metrics["eval/score"] == pytest.approx(
        result.metrics["eval/mean_return"] - result.metrics["eval/std_return"]
    )
    # The optimal policy (value iteration on Taxi's known model) on the same seeds and cap.
    optimum = TableAgent(optimal_q_table(make_env(env), algo.gamma))
    best, _, _ = play_episodes(env, algo.evaluation_seeds(), optimum.act, algo.max_steps)
    assert best == pytest.approx(7.56)
    assert result.metrics["eval/mean_return"] >= 0.98 * best, result.metrics


@pytest.mark.slow  # 40-75 s each: five seeds of 30,000 slippery episodes
@pytest.mark.parametrize("experiment", ["frozenlake_slippery", "frozenlake_slippery_mc"])
def test_slippery_frozenlake_reaches_95_percent_of_the_optimum_on_every_seed(experiment):
    # Q-learning (0.753 on average over seeds 0-4) and Monte Carlo control (0.742).
    from algos.core.agents import TableAgent
    from algos.core.envs import make_env
    from algos.core.evaluation import play_episodes
    from algos.core.optimum import optimal_q_table
    from algos.registry import get_algorithm

    algo, env = course(experiment)
    optimum = TableAgent(optimal_q_table(make_env(env), algo.gamma))
    best, _, _ = play_episodes(env, algo.evaluation_seeds(), optimum.act, algo.max_steps)
    assert best == pytest.approx(0.754, abs=0.002)  # success rate on seeds 0-999
    learn = get_algorithm(algo.name).train
    finals = [learn(algo, env, seed=seed).metrics["eval/mean_return"] for seed in range(5)]
    assert min(finals) >= 0.95 * best, (finals, best)
