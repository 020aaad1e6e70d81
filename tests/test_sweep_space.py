"""Sweep plans from Hydra overrides, their Tune domains, and history thinning (no Ray)."""

from __future__ import annotations

import pytest
from ray import tune

from pipelines.config import UserError
from pipelines.space import plan_sweep, tune_space
from pipelines.trial import thin


def test_quickstart_sweeps_experiments_learning_rates_and_seeds():
    plan = plan_sweep(["sweep=quickstart"])
    dims = {d.key: d.values for d in plan.dims}
    assert dims == {
        "experiment": ["frozenlake_course", "taxi_course"],
        "algo.lr": ["0.3", "0.7"],
        "seed": ["0", "1"],
    }
    assert plan.size == 8 and plan.fixed == ["sweep=quickstart"]


def test_command_line_overrides_replace_the_sweep_files_params():
    plan = plan_sweep(["sweep=quickstart", "seed=5", "algo.lr=0.1,0.2,0.3"])
    assert {d.key for d in plan.dims} == {"experiment", "algo.lr"}
    assert "seed=5" in plan.fixed and plan.size == 6
    assert plan.base.cfg.seed == 5


def test_an_interval_over_an_int_key_samples_ints():
    plan = plan_sweep(["algo.episodes=interval(100,1000)", "algo.lr=tag(log,interval(0.01,1))"])
    episodes, lr = plan.dims
    assert episodes.integer and not episodes.log
    assert episodes.override(345.6) == "algo.episodes=346"
    assert lr.log and not lr.integer and lr.override(0.5) == "algo.lr=0.5"


def test_domains_per_search_kind():
    plan = plan_sweep(["algo.lr=tag(log,interval(0.01,1))", "seed=range(0,3)"])
    auto = tune_space(plan, "auto")
    assert auto["seed"] == tune.grid_search(["0", "1", "2"])
    assert isinstance(auto["algo.lr"], tune.search.sample.Float)
    random = tune_space(plan, "random")
    assert isinstance(random["seed"], tune.search.sample.Categorical)
    with pytest.raises(UserError, match="sweep.search=grid"):
        tune_space(plan, "grid")


def test_every_trial_of_a_grid_is_validated_before_anything_runs():
    with pytest.raises(UserError, match=r"algo.gamma.*\(in the trial .*algo.gamma=1.5"):
        plan_sweep(["algo.gamma=0.9,1.5", "seed=0,1"])


def test_thinning_averages_consecutive_points_at_their_last_step():
    series = [(i * 10, float(i)) for i in range(1, 1001)]
    thinned = thin(series, 200)
    assert len(thinned) == 200
    assert thinned[0] == (50, 3.0)  # mean of 1..5, stepped at the 5th point
    assert thinned[-1] == (10_000, 998.0)
    assert thin(series[:150], 200) == series[:150]
    assert thin(series, 0) == series
