"""Schedulers that adapt while a sweep runs (PBT, PB2, HyperBand), searches scored over
seeds, and what they leave in MLflow. Sweeps run through the real command line on a real
local Ray; the lineage and the hp/* schedules are read back from MLflow."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from algos.core.schedules import exponential_epsilon
from tests.conftest import assert_no_step_twice, run_cli

# Taxi Q-learning, four members, a report (and so a chance to exploit) every 1,000 of
# 6,000 episodes; the learning rates start low, so some members trail and copy others.
# One CPU: the members take turns, paused and resumed by PBT (pipelines/fair_pbt.py).
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


def test_a_pbt_sweep_exploits_and_records_every_exploit_once(workdir):
    result = run_cli("pipelines.sweep", PBT, workdir)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    client, parent, children = _runs(workdir, "taxi_pbt")
    assert len(children) == 4
    exploits = {c.info.run_id: [json.loads(v) for k, v in sorted(c.data.tags.items())
                                if k.startswith("rlpipe.exploit.")] for c in children}
    assert sum(map(len, exploits.values())) >= 1, "no member exploited"
    by_trial = {c.data.tags["tune.trial_id"]: c for c in children}
    for child in children:
        _assert_steps_rise(client, child)
        lr, decay = (_history(client, child, f"hp/algo.{k}") for k in ("lr", "epsilon_decay"))
        assert lr[0][0] == 0 and decay[0][0] == 0  # each schedule starts at step 0
        for record in exploits[child.info.run_id]:
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
                                 for r in exploits[child.info.run_id] if r is not record):
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
    assert len(table["data"]) == sum(map(len, exploits.values()))
    assert {"trial_id", "step", "donor_trial_id", "donor_run_id", "old.algo.lr",
            "new.algo.lr"} <= set(table["columns"])
    tables = json.loads(parent.data.tags["mlflow.loggedArtifacts"])
    assert {"path": "lineage.json", "type": "table"} in tables
    assert parent.data.params["mutation.algo.lr"] == "tag(log, interval(0.01, 1.0))"
    assert "python -m pipelines.train replay=pbt/" in result.stdout or (
        "never exploited" in result.stdout)

    # The schedule found is reusable: a fresh train run follows a member's lineage (its
    # ancestors' values, then each explored configuration from the report it took it at)
    # and, Q-learning being deterministic, ends where the member ended.
    member = next(c for c in children if exploits[c.info.run_id])
    trial_id = member.data.tags["tune.trial_id"]
    replay = run_cli("pipelines.train", [f"replay=pbt/{trial_id}", "cluster.num_cpus=2"],
                     workdir)
    assert replay.returncode == 0, replay.stdout[-2000:] + replay.stderr[-3000:]
    run = next(r for r in client.search_runs(
        [client.get_experiment_by_name("q_learning-taxi").experiment_id])
        if r.data.tags.get("rlpipe.replay_of") == f"pbt/{trial_id}")
    _assert_steps_rise(client, run)
    assert run.data.metrics["train/episodes"] == 6000
    assert run.data.metrics["eval/score"] == pytest.approx(member.data.metrics["eval/score"])
    last = exploits[member.info.run_id][-1]["new"]
    assert _history(client, run, "hp/algo.lr")[-1][1] == pytest.approx(last["algo.lr"])
    assert len(_history(client, run, "hp/algo.lr")) >= 2  # it changed during the run
    assert "model.best" in run.data.tags


@pytest.mark.slow  # 50 s; the PBT test above keeps exploits in the default suite
def test_pb2_perturbs_and_hyperband_stops_trials(workdir):
    pb2 = run_cli("pipelines.sweep", PBT + [
        "sweep.scheduler.name=pb2", "sweep.name=pb2",
        "sweep.scheduler.mutations={algo.lr: 'interval(0.01, 1.0)'}"], workdir)
    assert pb2.returncode == 0, pb2.stdout[-2000:] + pb2.stderr[-3000:]
    client, parent, children = _runs(workdir, "taxi_pbt")
    exploited = [c for c in children if "rlpipe.exploits" in c.data.tags]
    assert exploited, "PB2 perturbed no member"
    for child in children:
        _assert_steps_rise(client, child)
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


@pytest.mark.slow  # 22 s: nine trials through Optuna and the repeater
def test_seeds_per_config_tells_optuna_the_iqm_of_each_configuration(workdir):
    from pipelines.schedulers import read_feedback
    from pipelines.stats import iqm

    result = run_cli("pipelines.sweep", [
        "sweep=taxi_optuna", "sweep.num_samples=2", "sweep.seeds_per_config=3", "seed=10",
        "algo.episodes=1000", "algo.report_every=500", "sweep.scheduler.name=none",
        "tracking.system_metrics_every_s=0", "sweep.name=seeds", "cluster.num_cpus=2"],
        workdir)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    client, parent, children = _runs(workdir, "taxi_optuna")
    assert len(children) == 6
    by_config: dict[str, list] = {}
    for c in children:
        by_config.setdefault(c.data.tags["config"], []).append(c)
    assert len(by_config) == 2  # the config tag holds no seed and no repeat index
    for runs in by_config.values():
        assert sorted(int(r.data.tags["seed"]) for r in runs) == [10, 11, 12]
    told = read_feedback(workdir / "ray_results" / "seeds")
    assert len(told) == 2  # one answer per configuration, after its three trials
    finals = {c.data.tags["tune.trial_id"]: c.data.metrics["eval/score"] for c in children}
    for record in told:
        assert len(record["trial_ids"]) == 3
        scores = [finals[t] for t in record["trial_ids"]]
        assert record["scores"] == pytest.approx(scores)
        assert record["told"] == pytest.approx(float(iqm(np.array(scores))))
    assert parent.data.params["sweep.seeds_per_config"] == "3"


def test_the_seed_repeater_tells_its_searcher_the_iqm_once_a_configuration_is_done(
        tmp_path):
    # The repeater's own arithmetic, without Ray (the slow test above runs it in a sweep):
    # one configuration, four seeds (the Repeater's index 0..3 in each trial's config);
    # the searcher hears nothing until the fourth finishes, then the IQM of the four.
    from ray.tune.search import Searcher

    from pipelines.seed_repeater import SeedRepeater

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

    from pipelines.lineage import Origin, continuation

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
    from pipelines.lineage import Continuation, Origin, continuation, record_start
    from pipelines.tracking import RunLogger, get_or_create_experiment

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


@pytest.mark.slow  # 65 s: a PBT sweep killed once members exploited, then resumed
def test_a_pbt_sweep_killed_mid_run_resumes_without_losing_or_duplicating(workdir):
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    from tests.conftest import assert_models_once, cli_env

    args = ["sweep=taxi_pbt", "sweep.name=pbtkill", "cluster.num_cpus=2",
            "tracking.system_metrics_every_s=0"]
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.sweep", *args], cwd=workdir, env=cli_env(ray_tmp),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def exploited() -> bool:
        try:
            return any("rlpipe.exploits" in c.data.tags for c in _runs(workdir, "taxi_pbt")[2])
        except Exception:  # the store or the experiment is not there yet
            return False

    deadline = time.time() + 240
    while not exploited() and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its Ray and its trials at once
    proc.communicate(timeout=240)
    client, parent, children = _runs(workdir, "taxi_pbt")
    assert parent.info.status == "RUNNING" and exploited()
    before = {c.info.run_id: sorted(k for k in c.data.tags if k.startswith("rlpipe.exploit."))
              for c in children}

    result = run_cli("pipelines.sweep", ["resume=pbtkill"], workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client, parent, children = _runs(workdir, "taxi_pbt")
    assert len(children) == 4 and parent.info.status == "FINISHED"
    for child in children:
        assert child.info.status == "FINISHED"
        _assert_steps_rise(client, child)
        assert_models_once(client, child)
        records = [json.loads(v) for k, v in child.data.tags.items()
                   if k.startswith("rlpipe.exploit.")]
        # Every exploit before the kill is still there, once; none was recorded twice.
        assert set(before.get(child.info.run_id, [])) <= {
            k for k in child.data.tags if k.startswith("rlpipe.exploit.")}
        assert len({(r["step"], r["checkpoint"]) for r in records}) == len(records)
        assert [r["n"] for r in sorted(records, key=lambda r: r["n"])] == list(
            range(1, len(records) + 1))
