"""Faults handled where they happen (issue 8): divergence stops a trial at once, is not
retried, and the rest of the sweep goes on; non-finite values reach MLflow."""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

import tests.fault_env  # noqa: F401  (registers the faulty envs)
from algos.configs import DQNConfig, QLearningConfig, ReinforceConfig
from algos.core.envs import EnvConfig
from algos.core.finite import NonFiniteError
from algos.dqn import train as train_dqn
from algos.q_learning import train as train_q
from algos.reinforce import train as train_reinforce
from pipelines import private_api
from pipelines.tracking.run_logger import RunLogger
from tests.helpers import MlflowServer, assert_no_step_twice, run_cli, runs_of

NAN_CARTPOLE = EnvConfig(id="tests.fault_env:NaNRewardCartPole-v0")


@pytest.mark.parametrize("algo", ["dqn", "reinforce", "q_learning"])
def test_a_nan_reward_stops_training_at_once_naming_the_value_and_step(algo):
    if algo == "dqn":
        cfg = DQNConfig(total_steps=5000, learning_starts=200, buffer_size=5000,
                        eval_every=2500, train_freq=4, batch_size=32)
        run, name, env = train_dqn, "loss/td", NAN_CARTPOLE
    elif algo == "reinforce":
        cfg = ReinforceConfig(episodes=200, eval_every=50)
        run, name, env = train_reinforce, "loss/policy", NAN_CARTPOLE
    else:
        cfg = QLearningConfig(episodes=2000, report_every=100)
        run, name = train_q, "loss/td"
        env = EnvConfig(id="tests.fault_env:NaNRewardFrozenLake-v0")
    with pytest.raises(NonFiniteError) as caught:
        run(cfg, env, seed=0)
    e = caught.value
    assert e.name == name and math.isnan(e.value), str(e)
    # The reward turns NaN at the env's 600th step: Q-learning stops at the end of that
    # episode (at most 100 steps on the lake), REINFORCE at the end of its update's episode
    # (at most 500 on CartPole), DQN at the first update whose minibatch holds it.
    most = {"q_learning": 100, "reinforce": 500, "dqn": 1000}[algo]
    assert 600 <= e.step < 600 + most, e.step
    assert f"{name} = nan at env step" in str(e)


def test_non_finite_values_reach_mlflow(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'm.db'}")
    run = client.create_run(client.create_experiment("x"))
    logger = RunLogger(client.tracking_uri, run.info.run_id, -math.inf)
    logger.log_reports([(10, {"loss/td": float("nan"), "train/q_mean": float("inf")},
                         {"train/episode_return": [(5, float("nan")), (9, 1.0)]})])
    history = {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)]
               for k in ("loss/td", "train/q_mean", "train/episode_return")}
    assert math.isnan(history["loss/td"][0][1]) and history["loss/td"][0][0] == 10
    assert history["train/q_mean"][0][1] > 1e300  # MLflow stores infinity as the max float
    assert [s for s, _ in history["train/episode_return"]] == [5, 9]


@pytest.mark.slow  # 35-65 s: a sweep of a diverging and a healthy trial
def test_a_diverging_trial_fails_at_once_is_not_retried_and_the_sweep_goes_on(workdir):
    result = run_cli("pipelines.sweep", [
        "algo=dqn", "env=cartpole", "algo.lr=1e12,1e-3", "algo.max_grad_norm=null",
        "algo.total_steps=6000", "algo.learning_starts=1000", "algo.eval_every=2000",
        "cluster.num_cpus=2",
    ], workdir, timeout=400)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert ("Trial failed: algo.lr=1000000000000.0: loss/td = nan at env step"
            in result.stderr), result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    _, parents, children = runs_of(client, "sweeps")
    assert len(parents) == 1 and parents[0].info.status == "FAILED"
    assert len(children) == 2
    by_lr = {c.data.params["algo.lr"]: c for c in children}
    bad, good = by_lr["1000000000000.0"], by_lr["0.001"]
    assert bad.info.status == "FAILED" and bad.data.tags["rlpipe.failure"] == "non_finite"
    assert "at env step" in bad.data.tags["rlpipe.failure.message"]
    # Logged once, where it went bad: a retry (from scratch or a checkpoint) would log again.
    history = client.get_metric_history(bad.info.run_id, "loss/td")
    assert len(history) == 1 and math.isnan(history[0].value)
    assert "rlpipe.restored_from" not in bad.data.tags
    assert good.info.status == "FINISHED"
    assert len(client.get_metric_history(good.info.run_id, "eval/score")) == 3
    for run in (bad, good):
        assert_no_step_twice(client, run)


def _pid(actor) -> int:
    """The process id of a Ray actor."""
    import os

    import ray

    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def test_a_killed_rollout_worker_is_replaced_in_place_with_the_current_weights(ray_session):
    import os
    import signal

    from algos.core.networks import NetworkFactory
    from algos.core.workers import WorkerFailure, WorkerPool

    env = EnvConfig(id="CartPole-v1")
    pool = WorkerPool(env, 1, 2, NetworkFactory("mlp", (8,)), seed=0, max_restarts=1)
    try:
        weights = {k: v + 1.0 for k, v in NetworkFactory("mlp", (8,))(
            pool.obs_space, pool.action_space).state_dict().items()}
        pool.set_weights(weights)
        assert sum(len(b) for b in pool.sample_episodes(4, 50)) == 4
        os.kill(_pid(pool.workers[0]), signal.SIGKILL)  # the actor's process, for real
        assert sum(len(b) for b in pool.sample_episodes(4, 50)) == 4  # played again
        assert pool.restarts == 1
        # The replacement got the current weights, not its constructor's.
        got = ray_session.get(pool.workers[0].__ray_call__.remote(
            lambda self: {k: v.clone() for k, v in self.net.state_dict().items()}))
        assert all(bool((got[k] == weights[k]).all()) for k in weights)
        batch = pool.sample(64, 1.0)  # the transition stream works on it too
        assert batch["steps"] >= 64
        os.kill(_pid(pool.workers[0]), signal.SIGKILL)
        with pytest.raises(WorkerFailure, match="more than algo.max_worker_restarts=1"):
            for _ in range(10):
                pool.sample(64, 1.0)
    finally:
        pool.close()


def test_a_resumed_or_replaced_worker_starts_new_streams_not_replays():
    from algos.core.networks import NetworkFactory
    from algos.core.workers import WorkerPool, worker_seed

    assert worker_seed(7, 1) == 1007 and worker_seed(7, 0) == 7  # a fresh run's rule
    seeds = {worker_seed(7, i, g, s) for i in (0, 1, 2) for g in (0, 1) for s in (0, 5000)}
    assert len(seeds) == 12
    first = [WorkerPool(EnvConfig(id="CartPole-v1"), 0, 4, NetworkFactory("mlp", (8,)),
                        seed=0, start=start).local.obs for start in (0, 0, 5000)]
    assert (first[0] == first[1]).all() and not (first[0] == first[2]).any()


@pytest.mark.parametrize("replay", [False, True], ids=["memory refilled", "memory restored"])
def test_a_resumed_dqn_refills_an_unsaved_memory_before_it_learns_again(replay):
    from algos.core.reporting import MemoryReporter
    from pipelines.config.compose import compose_config

    cfg = compose_config(["experiment=cartpole_dqn", "algo.total_steps=5000",
                          "algo.eval_every=1000", "algo.eval_episodes=1",
                          f"algo.checkpoint_replay={replay}"]).cfg
    first = MemoryReporter()
    train_dqn(cfg.algo, cfg.env, seed=0, reporter=first)
    state = first.last_state  # at 5,000 steps, learning since 1,000
    cfg.algo.total_steps = 7000
    resumed = MemoryReporter()
    train_dqn(cfg.algo, cfg.env, seed=0, reporter=resumed, state=state)
    # At the first report after the resume, 1,000 steps on: a refilled memory (learning
    # from 5,000 + learning_starts = 6,000) has learned at most one request's updates; a
    # restored one learned all along (64 updates per 256 steps).
    learned = resumed.reports[0]["train/updates"] - state["updates"]
    assert learned >= 192 if replay else learned <= 64, learned


def _rollout_worker_pids() -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()
            if line.split()[1:2] == ["ray::RolloutWorker"]]


@pytest.mark.slow  # 30 s; the in-process kill above stays in the default suite
def test_a_rollout_worker_killed_mid_run_is_replaced_and_the_trial_not_retried(workdir):
    """SIGKILL of one RolloutWorker actor's process: the learner replaces it and carries
    on; the trial is neither failed nor retried, and no evaluation is missing or twice."""
    import os
    import signal
    import sys
    import tempfile
    import time

    from tests.helpers import cli_env

    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # Ray's socket paths are short
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.train", "experiment=cartpole_dqn",
         "algo.num_rollout_workers=2", "cluster.num_cpus=3", "algo.total_steps=40000",
         "tracking.flush_every_s=0"],
        cwd=workdir, env=cli_env(ray_tmp), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    killed, deadline = None, time.time() + 240
    while killed is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.5)
        try:
            run = runs_of(client, "dqn-cartpole")[1][0]
        except Exception:  # the store or the run is not there yet
            continue
        pids = _rollout_worker_pids()
        if client.get_metric_history(run.info.run_id, "eval/score") and len(pids) == 2:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
    out, _ = proc.communicate(timeout=400)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert killed, "the run ended before a worker could be killed:\n" + out[-3000:]
    assert proc.returncode == 0, out[-4000:]
    assert "rollout worker" in out and "replacing it" in out
    run = runs_of(client, "dqn-cartpole")[1][0]
    assert run.info.status == "FINISHED"
    assert run.data.metrics["train/worker_restarts"] == 1
    assert "rlpipe.restored_from" not in run.data.tags  # Tune did not retry the trial
    assert len(client.get_metric_history(run.info.run_id, "eval/score")) == 8  # every 5,000
    assert_no_step_twice(client, run)


@pytest.mark.slow  # 15 s: a tracking server stopped and started again
def test_the_system_monitor_keeps_sampling_through_an_outage_and_loses_nothing(
        tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail fast while it is down
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    server = MlflowServer(tmp_path)
    server.start()
    try:
        client = MlflowClient(server.uri)
        run_id = client.create_run(client.create_experiment("outage")).info.run_id
        monitor = private_api.system_metrics_monitor(run_id, 0.2, False, server.uri)
        started = time.monotonic()
        monitor.start()
        time.sleep(1)
        server.stop()  # down for its restart's time too: several seconds in all
        time.sleep(2)
        server.start()
        time.sleep(1)
        monitor.finish()
        unsent = private_api.log_last_system_sample(monitor)
        elapsed = time.monotonic() - started
        steps = [m.step for m in client.get_metric_history(
            run_id, "system/cpu_utilization_percentage")]
    finally:
        server.stop()
    taken = private_api.system_steps_taken(monitor)
    # It sampled all along (MLflow's own monitor stops at the first failed write), and
    # every sample is stored once, those taken while the server was down included.
    assert taken >= 0.5 * elapsed / 0.2, (taken, elapsed)
    assert unsent == 0 and sorted(steps) == list(range(taken)), (unsent, taken, steps)


@pytest.mark.slow  # 60 s: a server stopped for 15 s mid-run
def test_a_tracking_outage_longer_than_the_clients_retries_loses_nothing(tmp_path, workdir):
    """A real MLflow server stopped, mid-run, for longer than the client's retry budget,
    then started again on the same store: the trial trains on, holds its points, writes
    them when the server is back, and ends with every evaluation once."""
    import sys
    import tempfile
    import time

    from tests.helpers import MlflowServer, cli_env

    server = MlflowServer(tmp_path)
    server.start()
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    # The client's budget: one try of 5 s. The experiment is made first, with the
    # default budget, so that a server slow on its first request (CI, 2 cores) does not
    # end the run before it starts.
    env = {**cli_env(ray_tmp), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    MlflowClient(server.uri).create_experiment("q_learning-taxi")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.train", "experiment=taxi_course",
         "algo.episodes=100000", "algo.report_every=5000", f"tracking.uri={server.uri}",
         "tracking.flush_every_s=0", "cluster.checkpoint_every_s=0", "cluster.num_cpus=2",
         "tracking.system_metrics_every_s=1"],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = MlflowClient(server.uri)
    outage, deadline = None, time.time() + 240
    try:
        while outage is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.3)
            try:
                run = runs_of(client, "q_learning-taxi")[1][0]
                seen = len(client.get_metric_history(run.info.run_id, "eval/score"))
            except Exception:  # not there yet
                continue
            if seen >= 2:
                server.stop()
                down = time.time()
                time.sleep(15)  # three times the client's budget (no retry, 5 s timeout)
                server.start()
                outage = (down, time.time())
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    try:
        assert outage, "the run ended before the outage:\n" + out[-3000:]
        assert proc.returncode == 0, out[-4000:]
        assert "tracking server unreachable" in out and "reachable again" in out, out[-3000:]
        run = runs_of(client, "q_learning-taxi")[1][0]
        assert run.info.status == "FINISHED"
        assert "rlpipe.restored_from" not in run.data.tags  # not retried
        assert_no_step_twice(client, run)  # every key: none twice
        for name in ("eval/score", "train/env_steps"):  # and none lost
            assert len(client.get_metric_history(run.info.run_id, name)) == 20, name
        returns = client.get_metric_history(run.info.run_id, "train/episode_return")
        assert len(returns) == 20 * 200
        # The system monitor sampled through the outage (a sample a second) and every
        # sample reached the server once it was back: no step missing or twice.
        system = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
        assert sorted(m.step for m in system) == list(range(len(system)))
        during = [m for m in system if 1000 * outage[0] <= m.timestamp <= 1000 * outage[1]]
        assert len(during) >= 0.5 * (outage[1] - outage[0]), (len(during), outage)
    finally:
        server.stop()


def test_a_checkpoint_carries_its_report_step(tmp_path):
    # A trial resumed from its last checkpoint reports no more: its final model is
    # stepped at the checkpoint's report step, which the checkpoint carries beside the
    # algorithm's state (a checkpoint from before it was recorded reads as step 0).
    from pipelines.tracking.lineage import Origin
    from pipelines.tune.checkpoints import STEP_FILE, load_state, save_state

    state = {"q_table": np.arange(6.0).reshape(2, 3), "episode": 40}
    save_state(state, tmp_path, Origin(step=12_345, run_key="abc/t1", trial_id="t1",
                                       counters={"train/env_steps": 345.0},
                                       shift={"train/env_steps": 12_000.0}))
    loaded, origin = load_state(tmp_path)
    assert origin.step == 12_345 and loaded["episode"] == 40
    assert (origin.run_key, origin.counters, origin.shift) == (
        "abc/t1", {"train/env_steps": 345.0}, {"train/env_steps": 12_000.0})
    assert np.array_equal(loaded["q_table"], state["q_table"])
    (tmp_path / STEP_FILE).unlink()
    assert load_state(tmp_path)[1] == Origin(step=0)
