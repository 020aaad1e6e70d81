"""The pipeline end to end through the real command line: a local Ray, real MLflow stores
(a sqlite file and a tracking server over HTTP), real gymnasium envs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import mlflow.artifacts
import numpy as np
import pytest
from mlflow import MlflowClient

from tests.helpers import SMALL, assert_no_step_twice, run_cli, run_in_process, runs_of

SWEEP6 = SMALL + ["algo.lr=0.5,0.9", "seed=range(0,3)", "sweep.name=six"]


def check_six_trial_sweep(client: MlflowClient, result, experiment: str = "sweeps"):
    """Exactly one parent and one child per trial, with params, tags, stepped metrics,
    the config and the model as artifacts; the parent summarizes each configuration over
    its seeds."""
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    exp, parents, children = runs_of(client, experiment)
    assert len(parents) == 1 and len(children) == 6
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "six"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    combos = {(c.data.params["algo.lr"], c.data.params["seed"]) for c in children}
    assert combos == {(lr, seed) for lr in ("0.5", "0.9") for seed in ("0", "1", "2")}
    for child in children:
        assert child.info.status == "FINISHED"
        tags = child.data.tags
        assert tags["algo"] == "q_learning" and tags["env"] == "frozenlake"
        assert tags["seed"] == child.data.params["seed"] and tags["git_commit"]
        params = child.data.params
        assert params["env.id"] == "FrozenLake-v1" and params["algo.episodes"] == "400"
        assert params["algo.gamma"] == "0.95" and params["env.kwargs.is_slippery"] == "False"
        score = client.get_metric_history(child.info.run_id, "eval/score")
        steps = [m.step for m in score]
        assert len(score) == 4 and steps == sorted(steps) and len(set(steps)) == 4
        env_steps = client.get_metric_history(child.info.run_id, "train/env_steps")
        assert [m.step for m in env_steps] == steps
        assert [m.value for m in env_steps] == [float(s) for s in steps]
        returns = client.get_metric_history(child.info.run_id, "train/episode_return")
        assert len(returns) == 400
        for name in ("eval/mean_return", "eval/std_return", "loss/td", "train/epsilon",
                     "train/q_mean", "perf/env_steps_per_s", "perf/updates_per_s"):
            assert name in child.data.metrics, name
        assert tags["ray.node_id"] and tags["ray.node_ip"] and tags["host"]  # where it ran
        assert "system/cpu_utilization_percentage" in child.data.metrics
        assert "config.yaml" in {a.path for a in client.list_artifacts(child.info.run_id)}
        models = client.search_logged_models(
            [exp.experiment_id], filter_string=f"source_run_id = '{child.info.run_id}'")
        # final and best; one model when the last evaluation was the best
        assert {m.name for m in models} in ({"final", "best"}, {"final"})
        assert {tags["model.final"], tags["model.best"]} == {m.model_id for m in models}
        assert tags["config"] == f"algo.lr={params['algo.lr']}"  # swept, seed left out
        assert_no_step_twice(client, child)
    check_summary(client, parent, children)
    assert parent.data.params["space.algo.lr"] == "0.5,0.9"
    # The cluster it ran on: the local Ray of cluster.num_cpus=2.
    assert (parent.data.tags["cluster.nodes"], parent.data.tags["cluster.cpus"]) == ("1", "2")
    assert "workflowType=machine_learning" in result.last_line
    assert f"#/experiments/{exp.experiment_id}/runs" in result.last_line


def check_summary(client: MlflowClient, parent, children) -> None:
    """The parent's per-configuration table agrees with the children's own metrics."""
    import tempfile

    import numpy as np
    from scipy import stats

    from pipelines.results.summary import read_summary

    workdir = Path(tempfile.mkdtemp(prefix="summary-"))
    configs = {c.data.tags["config"] for c in children}
    assert configs == {"algo.lr=0.5", "algo.lr=0.9"}
    rows = read_summary(client.download_artifacts(parent.info.run_id, "summary.json",
                                                  str(workdir)))
    assert {(r["config"], r["at"]) for r in rows} == {(c, at) for c in configs
                                                      for at in ("last", "best", "test")}
    for row in rows:
        mine = [c for c in children if c.data.tags["config"] == row["config"]]
        if row["at"] == "last":
            values = [c.data.metrics["eval/score"] for c in mine]
        elif row["at"] == "test":  # each best agent on its run's held-out seeds
            values = [c.data.metrics["test/score"] for c in mine]
        else:
            values = [max(m.value for m in client.get_metric_history(c.info.run_id,
                                                                     "eval/score"))
                      for c in mine]
        assert row["n"] == 3 and row["env"] == "frozenlake"
        assert row["mean"] == pytest.approx(np.mean(values))
        assert row["iqm"] == pytest.approx(stats.trim_mean(values, 0.25))
        assert row["mean_low"] <= row["mean"] <= row["mean_high"]
        assert row["iqm_low"] <= row["iqm"] <= row["iqm_high"]
        assert row["top_run_id"] in {c.info.run_id for c in mine}
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.json", "summary.csv", "curves.png"} <= artifacts
    png = client.download_artifacts(parent.info.run_id, "curves.png", str(workdir))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    winner = next(r for r in rows if r["at"] == "last" and r["rank"] == 1)
    assert parent.data.tags["best.frozenlake.config"] == winner["config"]
    assert parent.data.tags["best.frozenlake.run_id"] == winner["top_run_id"]
    assert parent.data.metrics["best/frozenlake/iqm"] == pytest.approx(winner["iqm"])
    tested = next(r for r in rows if r["at"] == "test" and r["config"] == winner["config"])
    assert parent.data.metrics["best/frozenlake/test_iqm"] == pytest.approx(tested["iqm"])
    # The other configuration against the best: P(X > best) over their last scores.
    compared = read_summary(client.download_artifacts(parent.info.run_id, "comparisons.json",
                                                      str(workdir)))
    other = (configs - {winner["config"]}).pop()
    assert [(c["env"], c["config"], c["against"]) for c in compared] == [
        ("frozenlake", other, winner["config"])]
    last = {config: [c.data.metrics["eval/score"] for c in children
                     if c.data.tags["config"] == config] for config in configs}
    pairs = [(x > y) + 0.5 * (x == y) for x in last[other] for y in last[winner["config"]]]
    assert compared[0]["probability"] == pytest.approx(np.mean(pairs))
    assert compared[0]["probability_low"] <= compared[0]["probability"] <= compared[0][
        "probability_high"]
    assert {"comparisons.json", "profiles.png"} <= artifacts


def test_sweep_of_six_trials_logs_one_parent_and_six_children(workdir):
    result = run_cli("pipelines.sweep", SWEEP6, workdir)
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    check_six_trial_sweep(client, result)
    assert "Best on frozenlake: algo.lr=" in result.stdout
    assert "Against the best on frozenlake (algo.lr=" in result.stdout
    # A compact status instead of Tune's tables: its last line says all six are done.
    assert "trials 6/6 done, 0 running, 0 pending | best so far: frozenlake" in result.stdout
    assert "Trial status" not in result.stdout and len(result.stdout.splitlines()) < 40
    assert result.last_line.startswith("See the runs of experiment 'sweeps':")
    report = run_cli("pipelines.report", ["report.sweep=six"], workdir)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "Sweep six (FINISHED)" in report.stdout and "algo.lr=0.9" in report.stdout
    unknown = run_in_process("pipelines.report", ["report.sweep=seven"], workdir)
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == ("error: report.sweep=seven: no sweep of that name; "
                                      "sweeps there: six")
    assert f"cd {workdir} && " in result.last_line and "mlflow ui" in result.last_line
    # The logged model loads as a pyfunc model and acts on a batch of states.
    _, _, children = runs_of(client, "sweeps")
    child = children[0]
    import mlflow.pyfunc

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    final = mlflow.pyfunc.load_model(f"models:/{child.data.tags['model.final']}")
    actions = final.predict(np.arange(16))
    assert actions.shape == (16,) and set(actions.tolist()) <= {0, 1, 2, 3}
    # evaluate.run_id plays the run's best model on the run's own evaluation seeds: it
    # scores what the run's best evaluation scored, and is recorded as a run of its own.
    played = run_cli("pipelines.evaluate", [f"evaluate.run_id={child.info.run_id}"], workdir)
    assert played.returncode == 0, played.stderr[-3000:]
    figures = json.loads(played.last_line)
    assert figures["episodes"] == 100
    best = max(m.value for m in client.get_metric_history(child.info.run_id, "eval/score"))
    assert figures["score"] == best
    recorded = client.get_run(figures["run_id"])
    assert recorded.data.metrics["eval/score"] == best
    assert recorded.data.tags["source_run_id"] == child.info.run_id
    assert recorded.data.tags["model_uri"] == f"models:/{child.data.tags['model.best']}"
    # Any model URI plays: a model id with episodes on fixed seeds, a run's model by path.
    final_uri = f"models:/{child.data.tags['model.final']}"
    by_id = run_in_process("pipelines.evaluate", [f"evaluate.model={final_uri}",
                                           "evaluate.episodes=3"], workdir)
    assert by_id.returncode == 0, by_id.stderr[-3000:]
    assert json.loads(by_id.last_line)["episodes"] == 3
    by_path = run_in_process("pipelines.evaluate",
                             [f"evaluate.model=runs:/{child.info.run_id}/final"], workdir)
    assert by_path.returncode == 0, by_path.stderr[-3000:]
    for args, line in [
        (["evaluate.model=models:/m-0123456789abcdef"], "does not resolve"),
        ([f"evaluate.model=models:/{child.data.tags['model.best']}", "env=taxi"],
         "env=taxi: the model was trained on FrozenLake-v1"),
    ]:
        refused = run_in_process("pipelines.evaluate", args, workdir)
        assert refused.returncode == 2 and line in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    missing = run_in_process("pipelines.evaluate", ["evaluate.run_id=0123456789abcdef"], workdir)
    assert missing.returncode == 2
    assert missing.stderr.startswith("error: evaluate.run_id=0123456789abcdef: no such run")


def test_train_is_one_run_without_a_parent(workdir):
    result = run_cli("pipelines.train", SMALL + ["seed=5", "tracking.register=true",
                                                 "tracking.video_every=2"], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    # tracking.register=true: the run's best model registered, the alias best on it
    # (named <tracking experiment>-<env option>; a train run's experiment is <algo>-<env>)
    assert ("Registered q_learning-frozenlake-frozenlake version 1 (test/score 1 on held-out "
            "seeds): now holds "
            "the alias best") in result.stdout
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp, parents, children = runs_of(client, "q_learning-frozenlake")
    assert len(parents) == 1 and not children
    run = parents[0]
    assert run.info.status == "FINISHED" and run.data.tags["seed"] == "5"
    assert run.data.metrics["eval/mean_return"] == 1.0
    assert run.data.metrics["test/score"] == 1.0  # the best agent on held-out seeds
    assert {"model.final", "model.best"} <= set(run.data.tags)  # its two logged models
    # Without a parent, the run itself records the cluster and where it ran.
    assert (run.data.tags["cluster.nodes"], run.data.tags["cluster.cpus"]) == ("1", "2")
    assert run.data.tags["ray.node_id"] and run.data.tags["host"]
    assert "workflowType=machine_learning" in result.last_line
    # Each episode's return carries the time its episode ended, not its report's or flush's.
    returns = sorted(client.get_metric_history(run.info.run_id, "train/episode_return"),
                     key=lambda m: m.step)
    stamps = [m.timestamp for m in returns]
    assert stamps == sorted(stamps) and len(set(stamps)) > 4 * 4  # 4 reports
    # tracking.video_every=2: the 2nd and 4th evaluations' episodes, named by their step.
    import imageio_ffmpeg

    evals = [m.step for m in client.get_metric_history(run.info.run_id, "eval/score")]
    videos = client.list_artifacts(run.info.run_id, "videos")
    assert [v.path for v in videos] == [f"videos/step-{s:012d}.mp4" for s in evals[1::2]]
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                artifact_path=videos[-1].path,
                                                tracking_uri=client.tracking_uri)
    meta = next(imageio_ffmpeg.read_frames(local))
    assert meta["codec"].startswith("h264") and meta["size"] == (256, 256)  # FrozenLake's
    # The status line: the budget done, the recent (exploring) return, the metric.
    assert re.search(r"\] 400/400 episodes \(100%\) \| recent return [0-9.]+ \| eval/score 1$",
                     result.stdout, re.M), result.stdout


@pytest.mark.slow  # 30-45 s: a 60,000-episode Taxi run
def test_a_train_status_line_moves_between_reports(workdir):
    """One report at the end of 60,000 Taxi episodes (about 10 s): the status line still
    counts the episodes as they go (the trial's progress notes), and the time left
    shrinks (over the run: one estimate may tick up when the machine is busy)."""
    result = run_cli("pipelines.train", [
        "experiment=taxi_course", "algo.episodes=60000", "algo.report_every=60000",
        "progress.every_s=1", "cluster.num_cpus=2"], workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = re.findall(r"\] ([0-9,]+)/60,000 episodes \(\d+%\)(.*)$", result.stdout, re.M)
    done = [int(n.replace(",", "")) for n, _ in lines]
    between = [n for n in done if 0 < n < 60_000]
    assert len(set(between)) >= 3, result.stdout  # it moved before the report
    assert done == sorted(done) and done[-1] == 60_000
    left = [int(m.group(1)) for n, rest in lines if 0 < int(n.replace(",", "")) < 60_000
            for m in [re.search(r"~(\d+)s left", rest)] if m]
    assert len(left) >= 2 and left[-1] < left[0], result.stdout


@pytest.mark.slow  # 27 s each; checkpoints restore in process in tests/test_faults.py
@pytest.mark.parametrize("mode", ["raise", "exit"])
def test_a_failed_trial_restarts_from_its_checkpoint_into_the_same_run(workdir, mode):
    """The env fails once at training episode 250 (after checkpoints at 100 and 200): by an
    exception, or by killing the worker process. Tune restarts the trial from episode 200;
    MLflow still has one run per trial, FINISHED, with no metric step logged twice."""
    marker = workdir / f"crashed-{mode}"
    args = [
        "algo=q_learning", "env=frozenlake", "env.id=tests.fault_env:CrashOnceFrozenLake-v0",
        "~env.kwargs.map_name", "~env.kwargs.is_slippery", f"+env.kwargs.marker={marker}",
        f"+env.kwargs.mode={mode}", "+env.kwargs.crash_at=250", "algo.episodes=400",
        "algo.report_every=100", "cluster.num_cpus=2", "seed=0,1", "sweep.name=faulty",
        "cluster.checkpoint_every_s=0",
    ]
    result = run_cli("pipelines.sweep", args, workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert marker.exists(), "the fault was not injected"
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    _, parents, children = runs_of(client, "sweeps")
    assert len(parents) == 1 and len(children) == 2
    restored = [c for c in children if "rlpipe.restored_from" in c.data.tags]
    assert len(restored) == 1, "exactly one trial crashed and was restored"
    # Reports at episodes 100, 200 (checkpoints 0 and 1), the crash at 250: restored from
    # the checkpoint of episode 200.
    assert restored[0].data.tags["rlpipe.restored_from"].endswith("checkpoint_000001")
    from tests.helpers import assert_models_once, assert_no_step_twice

    for child in children:
        assert child.info.status == "FINISHED"
        assert_no_step_twice(client, child)
        assert_models_once(client, child)
        assert len(client.get_metric_history(child.info.run_id, "eval/score")) == 4
        returns = client.get_metric_history(child.info.run_id, "train/episode_return")
        assert len(returns) == 400
    # The restarted trial learned exactly what an uninterrupted one learns: the same
    # evaluations at the same steps, and the same final table, as a run of the same seed
    # on the same (never failing) lake in this process.
    from algos.core.envs import EnvConfig
    from algos.core.reporting import MemoryReporter
    from algos.q_learning import train
    from pipelines.config.compose import compose_config
    from pipelines.tracking.models import load_logged_agent

    crashed = restored[0]
    cfg = compose_config(["algo=q_learning", "algo.episodes=400", "algo.report_every=100"]).cfg
    lake = EnvConfig("FrozenLake-v1", {"map_name": "4x4", "is_slippery": False})
    straight = MemoryReporter()
    result = train(cfg.algo, lake, int(crashed.data.params["seed"]), straight)
    for key in ("eval/score", "eval/mean_return", "loss/td", "train/q_mean"):
        logged = [(m.step, m.value) for m in sorted(
            client.get_metric_history(crashed.info.run_id, key), key=lambda m: m.step)]
        assert logged == [(r["step"], pytest.approx(r[key])) for r in straight.reports], key
    agent, _ = load_logged_agent(f"models:/{crashed.data.tags['model.final']}",
                                 str(client.tracking_uri))
    assert np.array_equal(agent.table, result.q_table)


@pytest.mark.slow  # 25-35 s; tests/test_sweep_space.py checks the domains without Ray
def test_random_search_samples_intervals_on_a_log_scale(workdir):
    args = SMALL + ["algo.lr=tag(log,interval(0.05,0.9))", "algo.gamma=interval(0.8,0.99)",
                    "sweep.search=random", "sweep.num_samples=3", "sweep.name=rand"]
    result = run_cli("pipelines.sweep", args, workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    _, parents, children = runs_of(client, "sweeps")
    assert len(parents) == 1 and len(children) == 3
    lrs = {float(c.data.params["algo.lr"]) for c in children}
    assert len(lrs) == 3 and all(0.05 <= lr <= 0.9 for lr in lrs)
    assert all(0.8 <= float(c.data.params["algo.gamma"]) <= 0.99 for c in children)
    assert parents[0].data.params["space.algo.lr"] == "tag(log,interval(0.05,0.9))"


@pytest.mark.slow  # 30 s; test_cli's multirun sweeps a config group in the default suite
def test_optuna_with_asha_over_config_groups(workdir):
    """Optuna proposes every trial (its study, saved in the sweep's state, holds the four
    configurations the runs trained), and ASHA stops the weak ones at its first rung (one
    trial at a time, so the rungs fill in a fixed order)."""
    from pipelines import private_api

    args = [a for a in SMALL if not a.startswith("experiment=")] + [
        "experiment=frozenlake_course,taxi_course", "algo.episodes=600",
        "algo.lr=tag(log,interval(0.1,0.9))", "sweep.search=optuna", "sweep.num_samples=4",
        "sweep.scheduler.name=asha", "sweep.scheduler.max_t=6", "sweep.scheduler.grace_period=2",
        "sweep.max_concurrent_trials=1", "sweep.name=tpe",
    ]
    result = run_cli("pipelines.sweep", args, workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    _, parents, children = runs_of(client, "sweeps")
    assert len(parents) == 1 and len(children) == 4
    assert {c.data.params["env.id"] for c in children} <= {"FrozenLake-v1", "Taxi-v3"}
    assert all(c.info.status == "FINISHED" for c in children)
    study = private_api.optuna_study(str(workdir / "ray_results" / "tpe"))
    proposed = sorted(t.params["algo.lr"] for t in study.trials)
    assert proposed == pytest.approx(sorted(float(c.data.params["algo.lr"]) for c in children))
    reports = {c.info.run_id: len(client.get_metric_history(c.info.run_id, "eval/score"))
               for c in children}
    stopped = [c for c in children if reports[c.info.run_id] < 6]
    assert stopped and all(reports[c.info.run_id] == 2 for c in stopped), reports  # rung 2
    assert all(c.data.tags.get("tune.stopped_early") == "true" for c in stopped)
    from pipelines.results.summary import read_summary

    rows = read_summary(client.download_artifacts(parents[0].info.run_id, "summary.json",
                                                  str(workdir)))
    envs = {c.data.tags["env"] for c in children}
    assert {r["env"] for r in rows} == envs
    for env in envs:  # ranked within each env, never across
        ranks = sorted(r["rank"] for r in rows if r["env"] == env and r["at"] == "last")
        assert ranks == list(range(1, len(ranks) + 1))


@pytest.mark.slow  # 40 s each: four Taxi trials, interrupted and resumed
@pytest.mark.parametrize("how", ["ctrl+c", "sigkill"])
def test_an_interrupted_sweep_resumes_without_losing_or_duplicating_runs(workdir, how):
    """Ctrl+C (SIGINT) mid-sweep: exit 130, unfinished runs KILLED, state saved. Or the
    driver's whole process group SIGKILLed (its Ray too) once two trials have FINISHED:
    nothing gets to clean up, and Tune's saved state may not know they finished. Then
    `resume=<name>` finishes every trial into its own run, from its checkpoints: no run
    lost or made twice, no model logged twice, and no key of any run (system/* and perf/*
    included) with a step twice."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    from tests.helpers import assert_models_once, assert_no_step_twice, cli_env

    args = ["experiment=taxi_course", "seed=range(0,4)", "cluster.num_cpus=2",
            "cluster.checkpoint_every_s=0", "tracking.system_metrics_every_s=1",
            "sweep.name=resumable"]
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.sweep", *args], cwd=workdir, env=cli_env(ray_tmp),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    trials = workdir / "ray_results" / "resumable"

    def due() -> bool:
        if how == "ctrl+c":
            return bool(list(trials.glob("trial_*/checkpoint_000002")))
        try:
            children = runs_of(client, "sweeps")[2]
        except Exception:  # the store or the experiment is not there yet
            return False
        return sum(c.info.status == "FINISHED" for c in children) >= 2

    deadline = time.time() + 240
    while not due() and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.2)
    if how == "sigkill":
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == -signal.SIGKILL
        _, parents, children = runs_of(client, "sweeps")
        assert parents[0].info.status == "RUNNING"  # nothing could mark it
        assert sum(c.info.status == "FINISHED" for c in children) >= 2
    else:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=240)
        assert proc.returncode == 130, out[-3000:]
        assert "resume=resumable" in out.splitlines()[-1]
        _, parents, children = runs_of(client, "sweeps")
        assert parents[0].info.status == "KILLED"
        assert "KILLED" in {c.info.status for c in children}
        # The interrupted sweep summarizes from what its trials reported so far.
        report = run_in_process("pipelines.report", ["report.sweep=resumable"], workdir)
        assert report.returncode == 0, report.stderr[-3000:]
        assert "Sweep resumable (KILLED)" in report.stdout
        assert "Best on taxi: base" in report.stdout and "n*" in report.stdout
        assert not report.ray_started

    result = run_cli("pipelines.sweep", ["resume=resumable"], workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _, parents, children = runs_of(client, "sweeps")
    assert len(parents) == 1 and len(children) == 4
    assert parents[0].info.status == "FINISHED"
    assert sorted(c.data.params["seed"] for c in children) == ["0", "1", "2", "3"]
    if how == "ctrl+c":  # Tune saved its state: the unfinished trials restore
        assert any("rlpipe.restored_from" in c.data.tags for c in children)
    assert_no_step_twice(client, parents[0])
    for child in children:
        assert child.info.status == "FINISHED"
        assert "tune.stopped_early" not in child.data.tags
        assert_no_step_twice(client, child)
        assert_models_once(client, child)
        assert any(k.startswith("system/") for k in child.data.metrics)
        assert "perf/trial_train_s" in child.data.metrics
        score = [m.step for m in client.get_metric_history(child.info.run_id, "eval/score")]
        # taxi_course: 25,000 episodes, a report every 2,500; each report's 2,500 episode
        # returns are averaged into tracking.max_points_per_report = 200 points.
        assert len(score) == 10
        returns = client.get_metric_history(child.info.run_id, "train/episode_return")
        assert len(returns) == 10 * 200
        assert child.data.metrics["eval/score"] >= 4.5


@pytest.mark.slow  # 28 s; test_cli's multirun sweeps a config group by default
def test_a_sweep_over_dqn_and_double_dqn_on_cartpole(workdir):
    args = ["experiment=cartpole_dqn", "algo=dqn,ddqn", "seed=0,1", "algo.total_steps=3000",
            "algo.learning_starts=500", "algo.eval_every=1500", "algo.eval_episodes=2",
            "cluster.num_cpus=2", "sweep.name=dqn-ddqn"]
    result = run_cli("pipelines.sweep", args, workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    _, parents, children = runs_of(client, "sweeps")
    assert len(parents) == 1 and len(children) == 4
    combos = {(c.data.tags["algo"], c.data.params["algo.double"], c.data.params["seed"])
              for c in children}
    assert combos == {("dqn", "False", "0"), ("dqn", "False", "1"),
                      ("ddqn", "True", "0"), ("ddqn", "True", "1")}
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.params["algo.name"] == "dqn"
        assert child.data.params["env.id"] == "CartPole-v1"
        assert len(client.get_metric_history(child.info.run_id, "eval/score")) == 2
    # The run's best network plays again and scores what its best evaluation scored.
    child = children[0]
    played = run_in_process("pipelines.evaluate", [f"evaluate.run_id={child.info.run_id}"], workdir)
    assert played.returncode == 0, played.stderr[-3000:]
    figures = json.loads(played.last_line)
    assert figures["episodes"] == 2
    best = max(m.value for m in client.get_metric_history(child.info.run_id, "eval/score"))
    assert figures["score"] == best


@pytest.mark.slow  # 25 s; REINFORCE trains in tests/test_reinforce.py by default
def test_a_reinforce_sweep_over_learning_rate_and_seed(workdir):
    args = ["experiment=cartpole_reinforce", "algo.lr=0.005,0.02", "seed=0,1",
            "algo.episodes=60", "algo.eval_every=30", "algo.eval_episodes=2",
            "cluster.num_cpus=2", "sweep.name=pg"]
    result = run_cli("pipelines.sweep", args, workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    _, parents, children = runs_of(client, "sweeps")
    assert len(parents) == 1 and len(children) == 4
    assert {(c.data.params["algo.lr"], c.data.params["seed"]) for c in children} == {
        ("0.005", "0"), ("0.005", "1"), ("0.02", "0"), ("0.02", "1")}
    for child in children:
        assert child.info.status == "FINISHED"
        for name in ("loss/policy", "train/entropy", "eval/score", "train/episode_return"):
            assert name in child.data.metrics, name
        assert len(client.get_metric_history(child.info.run_id, "train/episode_return")) == 60
    played = run_in_process("pipelines.evaluate",
                            [f"evaluate.run_id={children[0].info.run_id}"], workdir)
    assert played.returncode == 0, played.stderr[-3000:]
    assert json.loads(played.last_line)["episodes"] == 2


@pytest.mark.slow  # 50 s: two sweeps; tests/test_travel.py registers in the default suite
def test_a_sweep_registers_its_best_model_and_a_worse_sweep_does_not_move_the_alias(workdir):
    """Champion and challenger: the first sweep's best trial's best model becomes version 1
    with alias best; a worse second sweep adds version 2 and leaves the alias. Then the
    alias plays, with a video of its first episode that a real decoder reads back."""
    import cv2

    base = ["experiment=frozenlake_course", "algo.report_every=100", "cluster.num_cpus=2",
            "seed=0,1"]
    first = run_cli("pipelines.sweep", base + ["algo.episodes=400", "sweep.name=good"],
                    workdir)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "Registered sweeps-frozenlake version 1" in first.stdout
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("sweeps-frozenlake", "best")
    _, parents, _ = runs_of(client, "sweeps")
    parent = parents[0]
    assert str(champion.version) == "1"
    assert champion.run_id == parent.data.tags["best.frozenlake.run_id"]  # the best trial
    assert parent.data.tags["registered.frozenlake"] == "sweeps-frozenlake/1"
    second = run_cli("pipelines.sweep", base + ["algo.episodes=5", "algo.report_every=5",
                                                "sweep.name=bad"], workdir)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "alias best stays on version 1" in second.stdout
    versions = client.search_model_versions("name = 'sweeps-frozenlake'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    assert str(client.get_model_version_by_alias("sweeps-frozenlake", "best").version) == "1"
    played = run_in_process("pipelines.evaluate", ["evaluate.model=models:/sweeps-frozenlake@best",
                                            "evaluate.video=true"], workdir)
    assert played.returncode == 0, played.stderr[-3000:]
    figures = json.loads(played.last_line)
    assert figures["score"] == 1.0 and figures["video_frames"] >= 7  # 6 steps to the goal
    run = client.get_run(figures["run_id"])
    assert run.data.metrics["eval/score"] == 1.0
    video = client.download_artifacts(run.info.run_id, "episode.mp4", str(workdir))
    capture = cv2.VideoCapture(video)
    frames = 0
    while capture.read()[0]:
        frames += 1
    assert frames == figures["video_frames"]
