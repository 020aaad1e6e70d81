"""Atari end to end: Pong DQN with 2 rollout workers through python -m pipelines.train,
interrupted after a checkpoint (replay memory included) and resumed into the same run."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from tests.conftest import cli_env, run_cli

DESIGN_METRICS = (
    "train/episode_return", "train/env_steps", "eval/mean_return", "eval/std_return",
    "eval/score", "loss/td", "train/epsilon", "train/q_mean", "perf/env_steps_per_s",
    "perf/updates_per_s",
)


def test_pong_with_two_rollout_workers_checkpoints_and_resumes(workdir):
    args = [
        "experiment=pong_dqn", "algo.total_steps=4000", "algo.learning_starts=2000",
        "algo.buffer_size=20000", "algo.eval_every=1000", "algo.eval_episodes=1",
        "algo.envs_per_worker=1", "algo.checkpoint_replay=true", "cluster.num_cpus=4",
        "cluster.checkpoint_every_s=0", "tracking.experiment=pong",
    ]
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.train", *args], cwd=workdir, env=cli_env(ray_tmp),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.time() + 400
    results = workdir / "ray_results"
    while not list(results.glob("train-*/trial_*/checkpoint_000001")):
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, out[-4000:]
    last = out.strip().splitlines()[-1]
    assert "python -m pipelines.train resume=train-pong_dqn-" in last
    name = last.split("resume=", 1)[1].strip()

    result = run_cli("pipelines.train", [f"resume={name}"], workdir, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("pong")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert "rlpipe.restored_from" in run.data.tags
    assert run.data.params["env.id"] == "ALE/Pong-v5" and run.data.params["algo.name"] == "dqn"
    for name in DESIGN_METRICS:
        assert name in run.data.metrics, name
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/env_steps")]
    assert steps == sorted(set(steps)) and steps[-1] >= 4000 and len(steps) == 4
    assert -21 <= run.data.metrics["eval/mean_return"] <= 21
    # The network is logged as pyfunc models (final and best) that load and act on frames.
    import mlflow.pyfunc

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    models = client.search_logged_models([exp.experiment_id])
    assert {m.name for m in models} in ({"final", "best"}, {"final"})
    assert {m.source_run_id for m in models} == {run.info.run_id}
    model = mlflow.pyfunc.load_model(f"models:/{run.data.tags['model.best']}")
    actions = model.predict(np.zeros((2, 4, 84, 84), dtype=np.uint8))
    assert actions.shape == (2,) and set(actions.tolist()) <= set(range(6))
