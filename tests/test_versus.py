"""Sweeps compared (python -m pipelines.report report.against=...): real sweeps whose
configurations differ by design, and the refusals of what cannot be compared."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from tests.helpers import run_cli, run_in_process, runs_of

TAXI = ["experiment=taxi_course", "algo.report_every=300"]
BUDGETS = "budgets"
"""Taxi with 300 episodes (it cannot learn) and 3,000 (it reaches the course's 4.5), on
seeds 0-2: a real sweep, through the command line."""
AGAIN = "again"
"""The 3,000-episode configuration on seeds 3-5."""
ODD = "odd"
"""One seed each of FrozenLake, Taxi, and Taxi with a lower step cap (scored unlike the
others)."""


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite store holding `budgets`, a sweep run by pipelines.sweep, and `again` and
    `odd`, whose runs are trained in this process and logged as a sweep's trials are
    (helpers.logged_run, under a parent run tagged as the driver tags it)."""
    workdir = tmp_path_factory.mktemp("versus")
    result = run_cli("pipelines.sweep", [
        *TAXI, "algo.episodes=300,3000", "seed=range(0,3)", "cluster.num_cpus=2",
        f"sweep.name={BUDGETS}", "tracking.system_metrics_every_s=0"], workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (workdir / "budgets.out").write_text(result.stdout)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    logged_sweep(uri, AGAIN, [([*TAXI, "algo.episodes=3000", f"seed={seed}"], "base")
                              for seed in (3, 4, 5)])
    logged_sweep(uri, ODD, [
        (["experiment=frozenlake_course", "algo.episodes=300", "seed=0"],
         "algo.max_steps=99 experiment=frozenlake_course"),
        ([*TAXI, "algo.episodes=300", "seed=0"], "algo.max_steps=99 experiment=taxi_course"),
        ([*TAXI, "algo.episodes=300", "algo.max_steps=50", "seed=0"],
         "algo.max_steps=50 experiment=taxi_course")])
    return workdir


def logged_sweep(uri: str, name: str, trials: list[tuple[list[str], str]]) -> None:
    """A sweep `name` in experiment `sweeps`: a parent run, and per (overrides, config
    label) a trained run logged as its child with a trial's tags."""
    from tests.helpers import logged_run

    client = MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("sweeps").experiment_id
    parent = client.create_run(experiment_id, run_name=name,
                               tags={"rlpipe.kind": "sweep", "sweep": name})
    client.log_param(parent.info.run_id, "sweep.metric", "eval/score")
    for args, config in trials:
        composed, _, run_id, _ = logged_run(args, uri, "sweeps")
        for key, value in {"mlflow.parentRunId": parent.info.run_id, "sweep": name,
                           "env": composed.choices["env"], "seed": composed.cfg.seed,
                           "config": config}.items():
            client.set_tag(run_id, key, str(value))
        client.set_terminated(run_id)
    client.set_terminated(parent.info.run_id)


def client_of(workdir) -> MlflowClient:
    return MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")


def test_a_sweep_compares_each_configuration_with_its_envs_best(store):
    # 300 Taxi episodes against 3,000: every run of the first scores below every run of
    # the second, so P(X > best) is 0 with an interval of no width, and two seeds tell.
    out = (store / "budgets.out").read_text()
    line = next(x for x in out.splitlines() if x.startswith("Against the best on taxi"))
    assert line.startswith("Against the best on taxi (algo.episodes=3000): "
                           "algo.episodes=300 worse, P(X > best) 0.00 [0.00, 0.00], "
                           "2 seeds a configuration tell"), line
    client = client_of(store)
    _, parents, _ = runs_of(client, "sweeps", name=BUDGETS)
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"comparisons.json", "profiles.png"} <= artifacts


def test_two_configurations_of_one_sweep_by_their_tags(store):
    result = run_in_process("pipelines.report", [
        f"report.sweep={BUDGETS}", "report.config='algo.episodes=3000'",
        "report.against_config='algo.episodes=300'", "report.seeds_for=1"], store)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("taxi: "))
    assert line.startswith("taxi: algo.episodes=3000 against algo.episodes=300: better; "
                           "P(X > Y) 1.00 [1.00, 1.00]"), line
    assert "(n 3 and 3); 2 seeds a configuration tell" in line
    assert "a difference of 1: " in line
    # Written to a run of its own in the sweep's experiment, the sweep's runs untouched.
    client = client_of(store)
    exp, parents, children = runs_of(client, "sweeps", name=BUDGETS)
    runs = client.search_runs([exp.experiment_id],
                              filter_string="tags.`rlpipe.kind` = 'compare'")
    assert [r.info.run_name for r in runs] == [f"compare-{BUDGETS}-{BUDGETS}"]
    tags = runs[0].data.tags
    assert (tags["compare.sweep"], tags["compare.against"]) == (BUDGETS, BUDGETS)
    table = json.loads(open(client.download_artifacts(runs[0].info.run_id,
                                                      "comparisons.json", str(store))).read())
    row = dict(zip(table["columns"], table["data"][0], strict=True))
    assert (row["verdict"], row["probability"], row["seeds_needed"]) == ("better", 1.0, 2)
    assert row["iqm_difference_low"] > 100  # about -121 against 4.8
    assert all(r.info.status == "FINISHED" for r in parents + children)


def test_the_same_configuration_on_other_seeds_shows_no_difference(store):
    before = sweep_runs(client_of(store))
    result = run_in_process("pipelines.report", [
        f"report.sweep={BUDGETS}", "report.config='algo.episodes=3000'",
        f"report.against={AGAIN}"], store)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("taxi: "))
    assert line.startswith(f"taxi: {BUDGETS}: algo.episodes=3000 against {AGAIN}: base: "
                           "no difference shown at 95%"), line
    # Nothing written to either sweep's runs: their tags, params and metrics as before.
    assert sweep_runs(client_of(store)) == before


def sweep_runs(client) -> dict:
    """The runs of both compared sweeps: run id -> (tags, params, metrics)."""
    runs = [r for name in (BUDGETS, AGAIN) for part in runs_of(client, "sweeps", name)[1:]
            for r in part]
    return {r.info.run_id: (r.data.tags, r.data.params, r.data.metrics) for r in runs}


@pytest.mark.parametrize("args,expected", [
    (["report.against=nope"], "report.against=nope: no sweep of that name; sweeps there:"),
    (["report.against=odd", "report.against_config='algo.max_steps=99 experiment="
      "frozenlake_course'"], "report.against=odd: no env in common with report.sweep="
     "budgets (budgets: taxi; odd: frozenlake)"),
    (["report.against=odd", "report.against_config='algo.max_steps=50 experiment="
      "taxi_course'"], "report.against=odd: its runs on taxi are scored unlike budgets's: "
     "algo.max_steps=99 in budgets, 50 in odd"),
    (["report.against=odd", "report.against_config='algo.max_steps=99 experiment="
      "taxi_course'"], "report.against=odd: configuration algo.max_steps=99 experiment="
     "taxi_course on taxi has 1 scored seed(s); comparing needs 2 or more"),
    (["report.against=budgets"], "report.against=budgets: the sweep itself"),
    (["report.config=nope"], "report.config: compared with nothing; give "
     "report.against=<sweep>, or both report.config and report.against_config"),
    (["report.config=nope", "report.against_config='algo.episodes=300'"],
     "report.config=nope: no configuration of that name in sweep budgets; there: "
     "algo.episodes=300, algo.episodes=3000"),
    (["report.seeds_for=-1", "report.against=again"], "report.seeds_for=-1.0: must be > 0"),
])
def test_what_cannot_be_compared_exits_2_with_one_line_and_writes_nothing(store, args,
                                                                          expected):
    client = client_of(store)
    exp = client.get_experiment_by_name("sweeps")
    before = len(client.search_runs([exp.experiment_id]))
    result = run_in_process("pipelines.report", [f"report.sweep={BUDGETS}", *args], store)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0], lines[0]
    assert len(client.search_runs([exp.experiment_id])) == before
