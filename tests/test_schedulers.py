"""Schedulers that adapt while a sweep runs (PBT, PB2, HyperBand), searches scored over
seeds, and what they leave in MLflow. Sweeps run through the real command line on a real
local Ray; the lineage and the hp/* schedules are read back from MLflow."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from algos.core.schedules import exponential_epsilon
from tests.helpers import assert_no_step_twice, run_cli

# Taxi Q-learning, four members, a report (and so a chance to exploit) every 1,000 of
# 6,000 episodes; the learning rates start low, so some members trail and copy others.
# One CPU: the members take turns, paused and resumed by PBT (pipelines/tune/fair_pbt.py).
PBT = ["sweep=taxi_pbt", "algo.episodes=6000", "algo.report_every=1000",
       "sweep.scheduler.perturbation_interval=1000", "tracking.system_metrics_every_s=0",
       "sweep.name=pbt", "cluster.num_cpus=1"]


def _runs(workdir, experiment: str):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("rlpipe.kind") == "sweep")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    return client, parent, children


def _history(client, run, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def _at(history, step):
    """The value of a stepped series in use at `step`."""
    return [v for s, v in history if s <= step][-1]


def _assert_steps_rise(client, run) -> None:
    """No metric of the run goes backwards or repeats a step (exploits included)."""
    assert_no_step_twice(client, run)
    for key in run.data.metrics:
        if key.startswith("system/"):
            continue
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert steps == sorted(steps), (key, steps)


@pytest.mark.slow  # 163 s on 2 busy shared cores (60-90 s idle): PBT on one CPU, a replay.
# In the default suite, Tune's exploits: test_private_api's small fair-PBT run; the
# lineage's bookkeeping: the two exploit tests below (without Ray).
def test_a_pbt_sweep_exploits_and_records_every_exploit_once(workdir):
    from pipelines.tracking.models import load_logged_agent

    # A population that starves (Tune's own member order: docs/schedulers.md) exploits in
    # a loop and never ends: it fails here, well before run_cli's default of 10 minutes.
    result = run_cli("pipelines.sweep", PBT, workdir, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    client, parent, children = _runs(workdir, "taxi_pbt")
    assert len(children) == 4
    exploits = {c.info.run_id: [json.loads(v) for k, v in sorted(c.data.tags.items())
                                if k.startswith("rlpipe.exploit.")] for c in children}
    records = [r for rs in exploits.values() for r in rs]
    # Every exploit Tune made (a line of its pbt_global.txt each: target, donor, their
    # iterations, the donor's config, the explored one) is recorded once on its member.
    tune_folder = workdir / "ray_results" / "pbt"
    logged = [json.loads(line) for line in
              (tune_folder / "pbt_global.txt").read_text().splitlines()]
    assert len(records) == len(logged) >= 1, (len(records), len(logged))
    mutated = ("algo.lr", "algo.epsilon_decay")
    assert sorted(tuple(r["new"][k] for k in mutated) for r in records) == sorted(
        tuple(line[5][k] for k in mutated) for line in logged)
    by_trial = {c.data.tags["tune.trial_id"]: c for c in children}
    budget = 6000
    for child in children:
        _assert_steps_rise(client, child)
        # Every member reached its budget (the fair scheduler's work): the algorithm's
        # episodes, which its run counts from its own start (shifted by its last exploit),
        # and Tune's last result of the trial.
        mine = exploits[child.info.run_id]
        shift = mine[-1]["shift"].get("train/episodes", 0.0) if mine else 0.0
        assert child.data.metrics["train/episodes"] - shift == budget, (child.data.tags[
            "tune.trial_id"], child.data.metrics["train/episodes"], shift)
        trial_dir = tune_folder / f"trial_{child.data.tags['tune.trial_id']}"
        last = json.loads((trial_dir / "result.json").read_text().splitlines()[-1])
        assert last["train/episodes"] == budget and last["done"], last
        lr, decay = (_history(client, child, f"hp/algo.{k}") for k in ("lr", "epsilon_decay"))
        assert lr[0][0] == 0 and decay[0][0] == 0  # each schedule starts at step 0
        for record in mine:
            # The exploit names its donor's trial and run, and the values before and after.
            donor = by_trial[record["donor_trial_id"]]
            assert record["donor_run_id"] == donor.info.run_id
            # The schedules hold the new values from the exploit's step (a point there
            # unless the value did not change, e.g. clipped to the range's end both times).
            assert _at(lr, record["step"]) == pytest.approx(record["new"]["algo.lr"])
            assert _at(decay, record["step"]) == pytest.approx(
                record["new"]["algo.epsilon_decay"])
            assert 0.01 <= record["new"]["algo.lr"] <= 1.0  # explored inside the range
            # The value in use after the exploit: the epsilon the member reported next is
            # the new decay's, at the episode the donor's table had reached.
            episodes = _history(client, child, "train/episodes")
            epsilons = dict(_history(client, child, "train/epsilon"))
            after = [(s, e) for s, e in episodes if s > record["step"]]
            if after and not any(r["step"] > record["step"] and r["step"] <= after[0][0]
                                 for r in mine if r is not record):
                step, own_episode = after[0]
                algo_episode = own_episode - record["shift"]["train/episodes"]
                expected = exponential_epsilon(int(algo_episode) - 1, 1.0, 0.05,
                                               record["new"]["algo.epsilon_decay"])
                assert epsilons[step] == pytest.approx(expected), (record, step)
    # The parent: a lineage table with a row per exploit, and the population plot.
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"lineage.json", "population.png", "summary.json"} <= artifacts
    table = json.loads(open(client.download_artifacts(parent.info.run_id, "lineage.json",
                                                      str(workdir))).read())
    assert len(table["data"]) == len(records)
    assert {"trial_id", "step", "donor_trial_id", "donor_run_id", "old.algo.lr",
            "new.algo.lr"} <= set(table["columns"])
    # Each row holds its exploit's values before and after, as the member's tag has them.
    rows = {(row["run_id"], row["step"]): row for row in
            (dict(zip(table["columns"], values, strict=True)) for values in table["data"])}
    for run_id, mine in exploits.items():
        for record in mine:
            row = rows[(run_id, record["step"])]
            assert set(record["old"]) == set(record["new"]) == set(mutated)
            for key in mutated:
                assert (row[f"old.{key}"], row[f"new.{key}"]) == (
                    record["old"][key], record["new"][key]), (key, row, record)
    tables = json.loads(parent.data.tags["mlflow.loggedArtifacts"])
    assert {"path": "lineage.json", "type": "table"} in tables
    assert parent.data.params["mutation.algo.lr"] == "tag(log, interval(0.01, 1.0))"
    assert "python -m pipelines.train replay=pbt/" in result.stdout or (
        "never exploited" in result.stdout)

    # The schedule found is reusable: a fresh train run follows a member's lineage (its
    # ancestors' values, then each explored configuration from the report it took it at)
    # and, Q-learning being deterministic, ends with the member's very Q-table.
    member = next(c for c in children if exploits[c.info.run_id])
    trial_id = member.data.tags["tune.trial_id"]
    replay = run_cli("pipelines.train", [f"replay=pbt/{trial_id}", "cluster.num_cpus=2"],
                     workdir)
    assert replay.returncode == 0, replay.stdout[-2000:] + replay.stderr[-3000:]
    run = next(r for r in client.search_runs(
        [client.get_experiment_by_name("q_learning-taxi").experiment_id])
        if r.data.tags.get("rlpipe.replay_of") == f"pbt/{trial_id}")
    _assert_steps_rise(client, run)
    uri = f"sqlite:///{workdir}/mlflow.db"
    tables = [load_logged_agent(f"models:/{r.data.tags['model.final']}", uri)[0].table
              for r in (member, run)]
    assert tables[0].shape == tables[1].shape == (500, 6)  # Taxi's states and actions
    assert np.array_equal(tables[0], tables[1])
    assert run.data.metrics["train/episodes"] == budget
    assert run.data.metrics["eval/score"] == pytest.approx(member.data.metrics["eval/score"])
    last = exploits[member.info.run_id][-1]["new"]
    assert _history(client, run, "hp/algo.lr")[-1][1] == pytest.approx(last["algo.lr"])
    assert len(_history(client, run, "hp/algo.lr")) >= 2  # it changed during the run
    assert "model.best" in run.data.tags


@pytest.mark.slow  # 99 s on 2 busy shared cores: the PB2 sweep, then 9 HyperBand trials
def test_pb2_perturbs_and_hyperband_stops_trials(workdir):
    from pipelines.private_api import tuner_scheduler
    from pipelines.tune.fair_pbt import FairPB2

    pb2 = run_cli("pipelines.sweep", PBT + [
        "sweep.scheduler.name=pb2", "sweep.name=pb2",
        "sweep.scheduler.mutations={algo.lr: 'interval(0.01, 1.0)'}"], workdir, timeout=300)
    assert pb2.returncode == 0, pb2.stdout[-2000:] + pb2.stderr[-3000:]
    client, parent, children = _runs(workdir, "taxi_pbt")
    # The override is merged into taxi_pbt's mutations: PB2 explores both, linearly.
    bounds = {"algo.lr": (0.01, 1.0), "algo.epsilon_decay": (0.0005, 0.05)}
    assert parent.data.params["mutation.algo.lr"] == "interval(0.01, 1.0)"
    # PB2 ran, not PBT: the scheduler Tune was given, as it pickled it beside the run.
    folder = workdir / "ray_results" / "pb2"
    assert type(tuner_scheduler(str(folder))) is FairPB2
    for child in children:
        _assert_steps_rise(client, child)
        # Every learning rate a member ran with is inside its interval (PB2's values are
        # float32: 0.01 comes back as 0.00999..., which the clip to the range puts back).
        lr = [v for _, v in _history(client, child, "hp/algo.lr")]
        assert lr and all(0.01 <= v <= 1.0 for v in lr), (child.data.tags["tune.trial_id"], lr)
    # And every value it explored is one of PB2's: its GP's choice, which it casts to
    # float32 (ray/tune/schedulers/pb2.py, _select_config), or the donor's own value (too
    # few results to fit the GP), or a bound the clip put it back to; never PBT's donor
    # value times 1.2 or 0.8 or a fresh draw (float64). One line of Tune's pbt_global.txt
    # per exploit (target, donor, their iterations, the donor's config, the explored one),
    # each recorded on its member.
    logged = [json.loads(line) for line in (folder / "pbt_global.txt").read_text().splitlines()]
    records = [json.loads(v) for c in children for k, v in c.data.tags.items()
               if k.startswith("rlpipe.exploit.")]
    assert len(records) == len(logged) >= 1, "PB2 perturbed no member"
    assert sorted(tuple(r["new"][k] for k in bounds) for r in records) == sorted(
        tuple(line[5][k] for k in bounds) for line in logged)
    for *_, donor, explored in logged:
        for key, (low, high) in bounds.items():
            value = explored[key]
            assert low <= value <= high and (value in (low, high) or value == donor[key]
                                             or float(np.float32(value)) == value), (
                key, donor, explored)
    # HyperBand on FrozenLake: 9 trials, rungs at 1, 3 and 9 reports of 100 episodes.
    hyperband = run_cli("pipelines.sweep", [
        "experiment=frozenlake_course", "algo.lr=interval(0.01,1.0)", "sweep.search=random",
        "sweep.num_samples=9", "algo.episodes=900", "algo.report_every=100",
        "sweep.scheduler.name=hyperband", "sweep.scheduler.time_attr=training_iteration",
        "sweep.scheduler.max_t=9", "sweep.scheduler.reduction_factor=3",
        "tracking.experiment=hb", "tracking.system_metrics_every_s=0", "sweep.name=hb",
        "cluster.num_cpus=2"], workdir)
    assert hyperband.returncode == 0, hyperband.stdout[-2000:] + hyperband.stderr[-3000:]
    client, parent, children = _runs(workdir, "hb")
    assert len(children) == 9
    episodes = [c.data.metrics["train/episodes"] for c in children]
    assert max(episodes) == 900 and min(episodes) < 900, episodes  # some were stopped
    stopped = [c for c in children if c.data.tags.get("tune.stopped_early") == "true"]
    assert len(stopped) == sum(e < 900 for e in episodes)
    assert all(c.info.status == "FINISHED" for c in children)


@pytest.mark.slow  # 46 s: eight trials (two configurations, four seeds) through Optuna
def test_seeds_per_config_tells_optuna_the_iqm_of_each_configuration(workdir):
    from pipelines.private_api import optuna_study
    from pipelines.results.stats import iqm
    from pipelines.tune.schedulers import read_feedback

    # Four seeds: the IQM (the mean of the middle two) is not the mean, as it is of three.
    result = run_cli("pipelines.sweep", [
        "sweep=taxi_optuna", "sweep.num_samples=2", "sweep.seeds_per_config=4", "seed=10",
        "algo.episodes=1000", "algo.report_every=500", "sweep.scheduler.name=none",
        "tracking.system_metrics_every_s=0", "sweep.name=seeds", "cluster.num_cpus=2"],
        workdir)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    client, parent, children = _runs(workdir, "taxi_optuna")
    assert len(children) == 8
    by_config: dict[str, list] = {}
    for c in children:
        by_config.setdefault(c.data.tags["config"], []).append(c)
    assert len(by_config) == 2  # the config tag holds no seed and no repeat index
    for runs in by_config.values():
        assert sorted(int(r.data.tags["seed"]) for r in runs) == [10, 11, 12, 13]
    folder = workdir / "ray_results" / "seeds"
    told = read_feedback(folder)
    assert len(told) == 2  # one answer per configuration, after its four trials
    finals = {c.data.tags["tune.trial_id"]: c.data.metrics["eval/score"] for c in children}
    for record in told:
        assert len(record["trial_ids"]) == 4
        scores = [finals[t] for t in record["trial_ids"]]
        assert record["scores"] == pytest.approx(scores)
        assert record["told"] == pytest.approx(float(iqm(np.array(scores))))
    # What Optuna itself holds (its study, as Tune saved the searcher beside the run): one
    # trial per configuration, its value the IQM the repeater told, not the mean.
    study = optuna_study(str(folder))
    values = {json.dumps(t.params, sort_keys=True): t.value for t in study.trials}
    assert len(study.trials) == 2 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert values == {json.dumps(r["config"], sort_keys=True): r["told"] for r in told}
    assert any(r["told"] != pytest.approx(float(np.mean(r["scores"]))) for r in told), told
    assert parent.data.params["sweep.seeds_per_config"] == "4"


def test_the_seed_repeater_tells_its_searcher_the_iqm_once_a_configuration_is_done(
        tmp_path):
    # The repeater's own arithmetic, without Ray (the slow test above runs it in a sweep):
    # one configuration, four seeds (the Repeater's index 0..3 in each trial's config);
    # the searcher hears nothing until the fourth finishes, then the IQM of the four.
    from ray.tune.search import Searcher

    from pipelines.tune.seed_repeater import SeedRepeater

    class Recording(Searcher):
        def __init__(self):
            super().__init__(metric="eval/score", mode="max")
            self.told = []

        def suggest(self, trial_id):
            return {"algo.lr": 0.5}

        def on_trial_complete(self, trial_id, result=None, error=False):
            self.told.append((trial_id, result))

    inner = Recording()
    feedback = tmp_path / "feedback.jsonl"
    repeater = SeedRepeater(inner, repeat=4, feedback=str(feedback))
    configs = [repeater.suggest(f"t{i}") for i in range(4)]
    assert [c["__trial_index__"] for c in configs] == [0, 1, 2, 3]
    for i, score in enumerate([1.0, 9.0, 3.0, 5.0]):
        assert inner.told == []
        repeater.on_trial_complete(f"t{i}", {"eval/score": score})
    assert inner.told == [("t0", {"eval/score": 4.0})]  # IQM: the mean of 3 and 5
    (record,) = [json.loads(line) for line in feedback.read_text().splitlines()]
    assert record["scores"] == [1.0, 9.0, 3.0, 5.0] and record["told"] == 4.0


def test_an_exploit_continues_the_members_steps_and_a_retry_finds_it_again():
    from types import SimpleNamespace

    from pipelines.tracking.lineage import Origin, continuation

    def run(metrics, records=()):
        tags = {f"rlpipe.exploit.{r['n']}": json.dumps(r) for r in records}
        return SimpleNamespace(data=SimpleNamespace(metrics=metrics, tags=tags))

    donor = Origin(step=900, run_key="u/t2", trial_id="t2",
                   counters={"train/env_steps": 700.0, "train/episodes": 20.0},
                   shift={"train/env_steps": 200.0}, path="/s/t2/checkpoint_3")
    mine = run({"train/env_steps": 1_000.0, "train/episodes": 30.0})
    go_on = continuation("u/t1", donor, mine, "run-2")
    # The member's run goes on at its own step 1,000: the donor's 700 + x logs at 1,000 + x.
    assert go_on.step == 1_000 and go_on.new_exploit
    assert go_on.shift == {"train/env_steps": 300.0, "train/episodes": 10.0}
    assert go_on.exploit["donor_run_id"] == "run-2" and go_on.exploit["donor_step"] == 900
    record = {**go_on.exploit, "old": {}, "new": {}}
    # A retry before the member reported again restores the same checkpoint: no new
    # exploit; after a report, copying the same checkpoint again is a new one.
    again = continuation("u/t1", donor, run({"train/env_steps": 1_000.0}, [record]))
    assert not again.new_exploit and again.step == 1_000 and again.shift == go_on.shift
    later = continuation("u/t1", donor, run({"train/env_steps": 1_300.0, "train/episodes":
                                             40.0}, [record]))
    assert later.new_exploit and later.step == 1_300 and later.exploit["n"] == 2
    # Its own checkpoint keeps the shift it was taken with.
    own = Origin(step=1_300, run_key="u/t1", counters={"train/env_steps": 1_000.0},
                 shift={"train/env_steps": 300.0})
    assert continuation("u/t1", own, mine) .shift == {"train/env_steps": 300.0}
    assert continuation("u/t1", None, mine).step == 0


def test_a_member_restarted_behind_its_run_logs_its_values_past_the_runs_last_step(
        tmp_path):
    # A sweep killed after an exploit, resumed: Tune restarts the member from the state it
    # last recorded (here: from scratch, with its first values), behind what its run holds.
    # Its values go just past the run's last step, and a new exploit made before it
    # reported anew goes past those: no hp/ step twice, none backwards.
    from pipelines.tracking.lineage import Continuation, Origin, continuation, record_start
    from pipelines.tracking.run_logger import RunLogger, get_or_create_experiment

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = get_or_create_experiment(uri, "e")
    first = RunLogger.create(uri, experiment, "u/t1", "t1", {}, {})
    keys, client = ["algo.lr"], first.client
    record_start(first, None, keys, {"algo.lr": 0.01}, Continuation())
    first.log(1_000, {"eval/score": 1.0})
    donor = Origin(step=900, run_key="u/t2", trial_id="t2",
                   counters={"train/env_steps": 700.0}, path="/s/t2/checkpoint_1")
    go_on = continuation("u/t1", donor, client.get_run(first.run_id))
    record_start(first, client.get_run(first.run_id), keys, {"algo.lr": 0.3}, go_on)
    first.log(1_300, {"eval/score": 2.0})

    run = client.get_run(first.run_id)
    again = RunLogger.continue_run(uri, run)  # the resumed sweep's restart, from scratch
    record_start(again, run, keys, {"algo.lr": 0.01}, continuation("u/t1", None, run))
    run = client.get_run(first.run_id)
    go_on = continuation("u/t1", donor, run)  # exploited again before it reported anew
    record_start(again, run, keys, {"algo.lr": 0.2}, go_on)
    lr = _history(client, run, "hp/algo.lr")
    assert lr == [(0, 0.01), (1_000, 0.3), (1_301, 0.01), (1_302, 0.2)]
    assert go_on.exploit["step"] == 1_302 and go_on.exploit["env_steps"] == 1_300
    assert [m.step for m in client.get_metric_history(run.info.run_id, "pbt/exploits")] == [
        1_000, 1_302]


@pytest.mark.parametrize("algo", ["dqn", "reinforce"])
def test_a_new_learning_rate_survives_the_optimizers_restore(algo):
    # ray#62173: Adam's state_dict carries the lr it was saved with; a run continued from
    # a checkpoint under a new lr (PBT's explore) must train with the new one.
    from algos.core.envs import EnvConfig
    from algos.core.reporting import MemoryReporter
    from algos.registry import get_algorithm

    algorithm = get_algorithm(algo)
    budget = ({"total_steps": 600, "learning_starts": 100, "eval_every": 300,
               "eval_episodes": 1, "buffer_size": 1000} if algo == "dqn" else
              {"episodes": 6, "eval_every": 3, "eval_episodes": 1})
    cfg = algorithm.config_class(lr=1e-3, **budget)
    first = MemoryReporter()
    algorithm.train(cfg, EnvConfig(id="CartPole-v1"), 0, first)
    saved = first.last_state
    assert saved["optimizer"]["param_groups"][0]["lr"] == 1e-3
    more = dict(budget)
    key = "total_steps" if algo == "dqn" else "episodes"
    more[key] *= 2
    second = MemoryReporter()
    algorithm.train(algorithm.config_class(lr=4e-3, **more), EnvConfig(id="CartPole-v1"), 0,
                    second, saved)
    assert second.last_state["optimizer"]["param_groups"][0]["lr"] == 4e-3
    assert all(math.isfinite(r["eval/score"]) for r in second.reports)
