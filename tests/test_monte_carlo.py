"""Monte Carlo control: the returns and updates of hand-made episodes, worked by hand, and
learning that reaches the goal."""

from __future__ import annotations

import numpy as np
import pytest

from algos.core.reporting import MemoryReporter
from algos.monte_carlo import episode_returns, mc_update, train
from algos.registry import get_algorithm
from pipelines.config.compose import compose_and_check


def test_the_returns_of_a_hand_made_episode():
    # rewards 1, 0, 2 with gamma 0.5: G_2 = 2, G_1 = 0 + 0.5 * 2 = 1, G_0 = 1 + 0.5 * 1 = 1.5
    assert episode_returns([1.0, 0.0, 2.0], 0.5) == [1.5, 1.0, 2.0]
    assert episode_returns([], 0.9) == []
    assert episode_returns([-1.0, -1.0, 20.0], 1.0) == [18.0, 19.0, 20.0]


def test_a_cut_episode_goes_on_with_the_value_of_the_state_it_was_cut_at():
    # Two rewards of -1, cut (not ended) in a state worth -4, gamma 0.5:
    # G_1 = -1 + 0.5 * -4 = -3, G_0 = -1 + 0.5 * -3 = -2.5 (without the tail: -1.5, -1).
    assert episode_returns([-1.0, -1.0], 0.5, tail=-4.0) == [-2.5, -3.0]
    table, counts = fresh()
    mc_update(table, counts, [(0, 0, -1.0), (1, 1, -1.0)], 0.5, 1.0, False, tail=-4.0)
    assert table[0][0] == -2.5 and table[1][1] == -3.0


@pytest.mark.parametrize("bootstrap", [True, False])
def test_only_an_episode_cut_by_the_step_cap_bootstraps(bootstrap):
    # FrozenLake 4x4 not slippery, cap of 2 steps, greedy: from state 0 action 2 (right)
    # to 1, then 2 (right) to 2, cut there. Q(2, .) is preset to [0, 0.5, 0, 0]: with the
    # bootstrap G_1 = 0 + 0.9 * 0.5, G_0 = 0.9 * G_1; without it both are 0.
    from algos.monte_carlo import MonteCarloRun

    cfg = compose_and_check(["algo=monte_carlo", "env=frozenlake", "algo.max_steps=2",
                             "algo.lr=1.0", "algo.gamma=0.9",
                             f"algo.bootstrap_truncated={str(bootstrap).lower()}"]).cfg
    run = MonteCarloRun(cfg.env, cfg.algo.max_steps, seed=0)
    run.table[0][2] = run.table[1][2] = 0.01  # the greedy path: right, right
    run.table[2][1] = 0.5
    _, steps, _, _ = run.play_episode(0.0, cfg.algo)
    assert steps == 2
    tail = 0.9 * 0.5 if bootstrap else 0.0
    assert run.table[1][2] == pytest.approx(tail)
    assert run.table[0][2] == pytest.approx(0.9 * tail)
    # An episode the env ends (at the goal) never bootstraps: 0 -> down to 4, down to 8,
    # right to 9, down to 13, right to 14, right to 15, the goal (reward 1), no tail.
    ended = MonteCarloRun(cfg.env, 99, seed=0)
    for s, a in ((0, 1), (4, 1), (8, 2), (9, 1), (13, 2), (14, 2)):
        ended.table[s][a] = 0.01
    for row in ended.table[15:]:
        row[:] = [7.0] * 4  # the goal's row: a bootstrap would show
    ended.play_episode(0.0, cfg.algo)
    assert ended.table[14][2] == pytest.approx(1.0)


# An episode that visits (state 0, action 1) twice: steps (0,1,r=0), (2,0,r=0), (0,1,r=1).
# gamma 0.5: G = [0.25, 0.5, 1].
EPISODE = [(0, 1, 0.0), (2, 0, 0.0), (0, 1, 1.0)]


def fresh(n_states=3, n_actions=2):
    return [[0.0] * n_actions for _ in range(n_states)], [[0] * n_actions
                                                           for _ in range(n_states)]


def test_every_visit_updates_each_visit_in_turn():
    table, counts = fresh()
    sq_err, updates = mc_update(table, counts, EPISODE, gamma=0.5, lr=0.1, first_visit=False)
    # (0,1) first moves toward 0.25: 0.025; then toward 1: 0.025 + 0.1 * (1 - 0.025)
    assert table[0][1] == pytest.approx(0.025 + 0.1 * 0.975)
    assert table[2][0] == pytest.approx(0.05)  # 0.1 * 0.5
    assert updates == 3 and counts[0][1] == 2 and counts[2][0] == 1
    assert sq_err == pytest.approx(0.25 ** 2 + 0.5 ** 2 + 0.975 ** 2)


def test_first_visit_updates_a_pair_once_with_its_first_return():
    table, counts = fresh()
    _, updates = mc_update(table, counts, EPISODE, gamma=0.5, lr=0.1, first_visit=True)
    assert table[0][1] == pytest.approx(0.025)  # toward G_0 = 0.25 only
    assert table[2][0] == pytest.approx(0.05)
    assert updates == 2 and counts[0][1] == 1


def test_lr_null_is_the_sample_average_of_the_returns_seen():
    table, counts = fresh()
    # every visit: (0,1) sees 0.25 and 1 -> mean 0.625; a second episode gives it a
    # return of 2 at its only visit -> mean of 0.25, 1, 2
    mc_update(table, counts, EPISODE, gamma=0.5, lr=None, first_visit=False)
    assert table[0][1] == pytest.approx(0.625)
    mc_update(table, counts, [(0, 1, 2.0)], gamma=0.5, lr=None, first_visit=False)
    assert table[0][1] == pytest.approx((0.25 + 1 + 2) / 3)
    assert table[2][0] == pytest.approx(0.5) and counts[0][1] == 3


@pytest.mark.parametrize("first_visit", [False, True])
def test_monte_carlo_solves_frozenlake_and_resumes_where_it_stopped(first_visit):
    # The course's FrozenLake schedule (epsilon decay 0.0005 an episode); with a decay of
    # 0.002, seed 0 of neither Monte Carlo nor Q-learning finds the goal in 3,000 episodes.
    args = ["algo=monte_carlo", "env=frozenlake", "algo.episodes=4000", "algo.report_every=500",
            f"algo.first_visit={str(first_visit).lower()}"]
    cfg = compose_and_check(args).cfg
    reporter = MemoryReporter()
    result = train(cfg.algo, cfg.env, 0, reporter)
    assert result.metrics["eval/mean_return"] == 1.0  # every evaluation seed to the goal
    assert "loss/mc" in reporter.reports[-1] and "loss/td" not in reporter.reports[-1]
    # A checkpoint's state (the table, the visit counts, the generators) continues exactly.
    halfway = compose_and_check(args[:2] + ["algo.episodes=2000"] + args[3:]).cfg
    first = MemoryReporter()
    train(halfway.algo, halfway.env, 0, first)
    resumed = train(cfg.algo, cfg.env, 0, MemoryReporter(), state=first.last_state)
    assert np.array_equal(resumed.q_table, result.q_table)


def test_monte_carlo_is_registered_as_a_table_agent_with_its_own_loss():
    algorithm = get_algorithm("monte_carlo")
    assert algorithm.agent.__name__ == "TableAgent" and "loss/mc" in algorithm.reported
    assert {"lr", "epsilon_end"} <= set(algorithm.mutable)


@pytest.mark.slow  # 15 s; Q-learning's entry points run in the default suite
def test_train_and_evaluate_run_monte_carlo_unchanged(workdir):
    import json

    from mlflow import MlflowClient

    from tests.helpers import run_cli, run_in_process

    result = run_cli("pipelines.train", ["algo=monte_carlo", "env=frozenlake",
                                         "algo.episodes=2000", "algo.report_every=1000"],
                     workdir, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name(
        "monte_carlo-frozenlake").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.params["algo.first_visit"] == "False"
    assert run.data.metrics["eval/mean_return"] == 1.0 and "loss/mc" in run.data.metrics
    played = run_in_process("pipelines.evaluate", [f"evaluate.run_id={run.info.run_id}"],
                            workdir)
    assert played.returncode == 0, played.stderr
    assert json.loads(played.last_line)["mean_return"] == 1.0
