"""Faults handled where they happen (issue 8): divergence stops a trial at once, is not
retried, and the rest of the sweep goes on; non-finite values reach MLflow."""

from __future__ import annotations

import math

import pytest
from mlflow import MlflowClient

import tests.fault_env  # noqa: F401  (registers the faulty envs)
from algos.core.envs import EnvConfig
from algos.core.finite import NonFiniteError
from algos.dqn import DQNConfig
from algos.dqn import train as train_dqn
from algos.q_learning import QLearningConfig
from algos.q_learning import train as train_q
from algos.reinforce import ReinforceConfig
from algos.reinforce import train as train_reinforce
from pipelines.tracking import RunLogger
from tests.conftest import run_cli
from tests.test_pipeline import runs_of

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
    assert 600 <= e.step < 600 + (100 * 100 if algo == "q_learning" else 1000), e.step
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
