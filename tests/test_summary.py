"""The per-configuration statistics of a sweep, on numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from pipelines.config.space import config_label
from pipelines.results.display import format_table
from pipelines.results.stats import Trial, interval, summarize, winners


def trial(env: str, config: str, seed: int, *values: float, status: str = "FINISHED"):
    return Trial(run_id=f"{env}-{config}-{seed}", env=env, config=config, seed=str(seed),
                 status=status, curve=[(1000 * (i + 1), v) for i, v in enumerate(values)])


def test_the_config_label_is_the_swept_overrides_without_the_seed_in_a_stable_order():
    assert config_label(["seed=3", "experiment=taxi_course", "algo.lr=0.3"]) == (
        "algo.lr=0.3 experiment=taxi_course")
    assert config_label(["seed=1"]) == "base"
    assert config_label(["tracking.uri=x", "cluster.num_cpus=2", "+algo.x=1"]) == "+algo.x=1"


def test_iqm_mean_and_ranking_by_hand():
    # last values 1, 2, 3, 4, 100: mean 22, IQM the middle half (trim 25% = 1 each side)
    # = (2 + 3 + 4) / 3 = 3. The other config: 5, 5, 5, 5, 0 -> mean 4, IQM 5.
    a = [trial("taxi", "lr=a", s, 0.0, v) for s, v in enumerate([1, 2, 3, 4, 100])]
    b = [trial("taxi", "lr=b", s, 9.0, v) for s, v in enumerate([5, 5, 5, 5, 0])]
    rows = summarize(a + b, "max")
    last = {r.config: r for r in rows if r.at == "last"}
    best = {r.config: r for r in rows if r.at == "best"}
    assert last["lr=a"].mean == 22 and last["lr=a"].iqm == pytest.approx(3)
    assert last["lr=a"].median == 3 and last["lr=a"].n == 5
    assert last["lr=a"].std == pytest.approx(math.sqrt(sum((x - 22) ** 2 for x in
                                                           [1, 2, 3, 4, 100]) / 4))
    assert last["lr=b"].mean == 4 and last["lr=b"].iqm == pytest.approx(5)
    # The lucky seed (100) carries the mean of a, not its IQM: b ranks first.
    assert last["lr=b"].rank == 1 and last["lr=a"].rank == 2
    assert last["lr=a"].top_run_id == "taxi-lr=a-4" and last["lr=a"].top_seed == "4"
    # best: each trial's best report (b's first report was 9 for every seed)
    assert best["lr=b"].mean == 9 and best["lr=b"].rank == 1
    for r in rows:
        assert r.iqm_low <= r.iqm <= r.iqm_high
        assert r.mean_low <= r.mean <= r.mean_high
    assert winners(rows)["taxi"].config == "lr=b"


def test_ranking_never_mixes_envs_and_follows_the_mode():
    trials = [trial("taxi", "x", 0, -5.0), trial("taxi", "y", 0, -1.0),
              trial("frozenlake", "x", 0, 0.5), trial("frozenlake", "y", 0, 0.9)]
    rows = summarize(trials, "max")
    ranked = {(r.env, r.config): r.rank for r in rows if r.at == "last"}
    assert ranked == {("taxi", "y"): 1, ("taxi", "x"): 2,
                      ("frozenlake", "y"): 1, ("frozenlake", "x"): 2}
    rows = summarize(trials, "min")
    assert {e: r.config for e, r in winners(rows).items()} == {"taxi": "x", "frozenlake": "x"}
    text = format_table(rows, "eval/score")
    assert text.index("frozenlake:") < text.index("taxi:")


def test_equal_iqms_rank_by_mean_not_by_name():
    # CartPole caps at 500: algo=ddqn ended 500, 500, 500, 500, 259.6 and algo=dqn 500 on
    # every seed, both an IQM of 500; the one that kept it on every seed ranks first.
    trials = [*(trial("cartpole", "algo=ddqn", s, v)
                for s, v in enumerate([500, 500, 500, 500, 259.6])),
              *(trial("cartpole", "algo=dqn", s, 500.0) for s in range(5))]
    rows = [r for r in summarize(trials, "max") if r.at == "last"]
    assert rows[0].iqm == rows[1].iqm == 500
    assert {r.config: r.rank for r in rows} == {"algo=dqn": 1, "algo=ddqn": 2}
    assert winners(summarize(trials, "min"))["cartpole"].config == "algo=ddqn"


def test_failed_and_unfinished_trials_are_counted_not_averaged():
    trials = [trial("taxi", "x", 0, 1.0, 2.0), trial("taxi", "x", 1, 1.0, math.nan),
              trial("taxi", "x", 2, 3.0, status="RUNNING")]
    row = next(r for r in summarize(trials, "max") if r.at == "last")
    assert (row.n, row.failed, row.unfinished, row.mean) == (2, 1, 1, 2.5)
    best = next(r for r in summarize(trials, "max") if r.at == "best")
    assert (best.n, best.mean) == (3, 2.0)  # the diverged trial's best finite report counts
    assert "n*" in format_table(summarize(trials, "max"), "eval/score")


def test_one_seed_has_no_interval_and_the_stratified_bootstrap_resamples_each_env():
    import numpy as np
    from scipy import stats

    from pipelines.results.stats import RESAMPLES, iqm

    assert all(math.isnan(x) for x in interval([[3.0]]))
    taxi, lake = [1.0, 2.0, 3.0, 5.0], [10.0, 11.0, 12.0, 15.0]
    low, high = interval([taxi, lake])
    # scipy's bootstrap at the same settings: each stratum resampled on its own, the IQM of
    # the pooled resample, 10,000 resamples, percentile method, the same generator.
    expected = stats.bootstrap(
        (np.asarray(taxi), np.asarray(lake)),
        lambda a, b, axis: iqm(np.concatenate([a, b], axis=axis), axis=axis),
        n_resamples=RESAMPLES, confidence_level=0.95, method="percentile", vectorized=True,
        axis=-1, rng=np.random.default_rng(0)).confidence_interval
    assert (low, high) == pytest.approx((expected.low, expected.high), rel=1e-12)
    assert low < iqm(np.array(taxi + lake)) < high and high - low > 1.0
    # Each stratum keeps its 4 values in every resample: the pooled IQM stays between the
    # IQMs of (1,1,1,1 | 10,10,10,10) and (5,5,5,5 | 15,15,15,15).
    assert 5.5 <= low and high <= 10.0
    mean_low, mean_high = interval([taxi + lake], np.mean)
    mean_expected = stats.bootstrap((np.asarray(taxi + lake),), np.mean, n_resamples=RESAMPLES,
                                    confidence_level=0.95, method="percentile",
                                    rng=np.random.default_rng(0)).confidence_interval
    assert (mean_low, mean_high) == pytest.approx((mean_expected.low, mean_expected.high))
    assert mean_high - mean_low > 1.0


def test_the_iqm_is_scipys_trimmed_mean_at_a_quarter():
    import numpy as np
    from scipy import stats

    from pipelines.results.stats import iqm

    rng = np.random.default_rng(1)
    for n in range(1, 12):
        x = rng.normal(size=(3, n))
        assert np.allclose(iqm(x), stats.trim_mean(x, 0.25, axis=-1))


def test_held_out_test_rows_are_reported_beside_the_ranking_they_did_not_decide():
    # Ranked by the last report (a first, mode min); each trial's held-out figure is its
    # own row, shown beside the winner: the same figure as the sweep metric where that is
    # an evaluation's (eval/x -> test/x), else test/score.
    from pipelines.results.display import best_lines
    from pipelines.results.stats import held_out_metric, held_out_mode

    assert held_out_metric("eval/mean_return") == "test/mean_return"
    assert held_out_metric("eval/score") == "test/score"
    assert held_out_metric("loss/td") == "test/score"

    a = [trial("taxi", "lr=a", s, v) for s, v in enumerate([1, 2, 3, 4])]
    b = [trial("taxi", "lr=b", s, v) for s, v in enumerate([5, 6, 7, 8])]
    for t, held_out in zip(a + b, [1, 1, 1, 1, 2, 3, 4, 100], strict=True):
        t.test = held_out
    b[0].test = math.nan  # not tested (a run that ended before its models were logged)
    rows = summarize(a + b, "min")
    test = {r.config: r for r in rows if r.at == "test"}
    # (three values: a quarter of 3 rounds to none cut, the IQM is their mean)
    assert test["lr=b"].n == 3 and test["lr=b"].iqm == pytest.approx((3 + 4 + 100) / 3)
    assert test["lr=a"].rank == 1 and test["lr=b"].rank == 2  # the ranking's, not theirs
    # ranked by a loss (min), the held-out figure is test/score, better high: the test
    # row's best run is the one that scored 100, not the lowest
    assert held_out_mode("loss/td", "min") == "max" and held_out_mode("eval/x", "min") == "min"
    top = {r.config: r for r in summarize(a + b, "min", "max") if r.at == "test"}
    assert top["lr=b"].top_run_id == b[3].run_id and test["lr=b"].top_run_id == b[1].run_id
    assert winners(rows)["taxi"].config == "lr=a"
    assert "on held-out seeds, test/score IQM 1 " in best_lines(rows)[0]
    assert "held-out test/score IQM [CI]" in format_table(rows, "loss/td")
    untested = summarize([trial("taxi", "x", 0, 1.0)], "max")
    assert [r.at for r in untested] == ["last", "best"]
    assert "held-out" not in format_table(untested, "eval/score")


def test_curves_of_runs_that_count_episodes_are_drawn_against_episodes():
    from pipelines.results.display import _by_episode, _grid_curves

    # Two seeds reporting at the same episodes (100, 200) after different env steps.
    a = trial("FrozenLake-v1", "algo=monte_carlo", 0, 0.2, 0.6)
    b = trial("FrozenLake-v1", "algo=monte_carlo", 1, 0.4, 1.0)
    b.curve = [(700, 0.4), (1500, 1.0)]
    a.episodes, b.episodes = {1000: 100.0, 2000: 200.0}, {700: 100.0, 1500: 200.0}
    assert _by_episode([a, b])
    x, values = _grid_curves([a, b], by_episode=True)
    assert (x[0], x[-1]) == (100.0, 200.0)
    assert values[:, 0].tolist() == [0.2, 0.4] and values[:, -1].tolist() == [0.6, 1.0]
    # Against env steps the grid is what both reached: 1000 to 1500.
    x, _ = _grid_curves([a, b])
    assert (x[0], x[-1]) == (1000.0, 1500.0)
    # One run that counts env steps (no episodes) puts the whole panel on env steps.
    assert not _by_episode([a, b, trial("FrozenLake-v1", "algo=dqn", 0, 0.1)])
