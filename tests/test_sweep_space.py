"""Sweep plans from Hydra overrides, their Tune domains, and history downsampling (no Ray)."""

from __future__ import annotations

import pytest
from ray import tune

from pipelines.config.compose import UserError
from pipelines.config.space import plan_sweep, tune_space
from pipelines.tracking.buffer import downsample


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


def test_downsampling_averages_consecutive_points_at_their_last_step():
    series = [(i * 10, float(i)) for i in range(1, 1001)]
    downsampled = downsample(series, 200)
    assert len(downsampled) == 200
    assert downsampled[0] == (50, 3.0)  # mean of 1..5, stepped at the 5th point
    assert downsampled[-1] == (10_000, 998.0)
    assert downsample(series[:150], 200) == series[:150]
    assert downsample(series, 0) == series


@pytest.mark.parametrize("search", ["auto", "random", "optuna"])
def test_a_log_interval_samples_log_uniformly_and_a_plain_one_uniformly(search):
    import numpy as np

    plan = plan_sweep(["algo.lr=tag(log,interval(0.01,1))", "algo.gamma=interval(0.8,0.9)"])
    space = tune_space(plan, search)
    assert isinstance(space["algo.lr"].get_sampler(), tune.search.sample.LogUniform)
    assert not isinstance(space["algo.gamma"].get_sampler(), tune.search.sample.LogUniform)
    rng = np.random.default_rng(0)
    lr = np.asarray(space["algo.lr"].sample(size=4000, random_state=rng))
    gamma = np.asarray(space["algo.gamma"].sample(size=4000, random_state=rng))
    assert lr.min() >= 0.01 and lr.max() <= 1 and gamma.min() >= 0.8 and gamma.max() <= 0.9
    # Log-uniform on [0.01, 1]: half the draws under the geometric midpoint 0.1 (uniform:
    # 9%), a quarter under 0.0316.
    assert abs(np.mean(lr < 0.1) - 0.5) < 0.03 and abs(np.mean(lr < 10 ** -1.5) - 0.25) < 0.03
    assert abs(np.mean(gamma < 0.85) - 0.5) < 0.03


def test_a_resume_reads_the_context_an_older_launch_saved():
    # An older rlpipe.json: settings without the budget and the progress settings, with a
    # key no longer used; it still rebuilds the context a resume needs.
    from pipelines.tune.context import RunSettings, TrialContext

    old = {"name": "s", "uid": "u", "fixed": [], "tracking_uri": "sqlite:///x.db",
           "experiment_id": "1", "experiment_name": "e", "parent_run_id": "p",
           "git_commit": "c", "space": {}, "cluster": {},
           "settings": {"kind": "sweep", "metric": "eval/score", "mode": "max",
                        "search": "grid", "num_samples": 1, "env": "taxi",
                        "register": False, "cluster": {"kind": "local"}}}
    ctx = TrialContext.from_json(old)
    assert isinstance(ctx.settings, RunSettings) and ctx.settings.kind == "sweep"
    assert ctx.settings.budget == ("train/env_steps", 0.0) and ctx.settings.trials == 0
    assert ctx.settings.progress.every_s == 10.0 and ctx.settings.cluster.kind == "local"
    assert TrialContext.from_json(ctx.to_json()) == ctx  # and round-trips
