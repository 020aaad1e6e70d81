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
import pytest
from mlflow import MlflowClient

from tests.helpers import cli_env, run_cli

DESIGN_METRICS = (
    "train/episode_return", "train/env_steps", "eval/mean_return", "eval/std_return",
    "eval/score", "loss/td", "train/epsilon", "train/q_mean", "perf/env_steps_per_s",
    "perf/updates_per_s",
)


@pytest.mark.slow  # 70 s: Pong interrupted and resumed
def test_pong_with_two_rollout_workers_checkpoints_and_resumes(workdir):
    args = [
        "experiment=pong_dqn", "algo.total_steps=4000", "algo.learning_starts=2000",
        "algo.buffer_size=20000", "algo.eval_every=1000", "algo.eval_episodes=1",
        "algo.envs_per_worker=1", "algo.checkpoint_replay=true", "cluster.num_cpus=4",
        "cluster.checkpoint_every_s=0", "tracking.experiment=pong", "tracking.video_every=2",
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
    # tracking.video_every=2 through the resume: the 2nd and 4th evaluations' games, in
    # the console's own 160x210 frames (not the agent's 84x84 stack).
    import imageio_ffmpeg
    import mlflow.artifacts

    evals = [m.step for m in client.get_metric_history(run.info.run_id, "eval/score")]
    videos = [v.path for v in client.list_artifacts(run.info.run_id, "videos")]
    assert videos == [f"videos/step-{s:012d}.mp4" for s in evals[1::2]], (videos, evals)
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id,
                                                artifact_path=videos[0],
                                                tracking_uri=client.tracking_uri)
    assert next(imageio_ffmpeg.read_frames(local))["size"] == (160, 210)
    from tests.helpers import assert_models_once, assert_no_step_twice

    assert_no_step_twice(client, run)
    assert_models_once(client, run)
    # The replay memory came back with the checkpoint: the final checkpoint's memory holds
    # every transition since step 0 (a refilled one would hold those since the resume;
    # the resume restarts the 2 env streams, each one's last transition before it has no
    # next frame and is not kept),
    # and learning went on right after the resume (a refilled memory learns again only
    # learning_starts = 2,000 steps later, here never): one update per 4 env steps from
    # step 2,000 on.
    from pipelines.tune.checkpoints import load_state

    checkpoints = sorted(results.glob("train-*/trial_*/checkpoint_*"))
    state, origin = load_state(checkpoints[-1])
    step = origin.step
    assert step == steps[-1] and state["replay"] is not None
    transitions = int(state["replay"]["is_step"].sum())
    assert step - 2 <= transitions <= step, (transitions, step)
    assert run.data.metrics["train/updates"] >= 0.95 * (step - 2000) / 4
    # The final model is the network the run ended with: it acts as the final checkpoint's
    # online network, and replays the run's last evaluation (greedy but for eval_epsilon
    # 0.05, drawn from the evaluation's own seeded generator) to the same return.
    import mlflow.pyfunc
    import torch

    from algos.core.envs import make_env
    from algos.registry import get_algorithm
    from pipelines.config.compose import compose_config

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    models = client.search_logged_models([exp.experiment_id])
    assert {m.source_run_id for m in models} == {run.info.run_id}
    model = mlflow.pyfunc.load_model(f"models:/{run.data.tags['model.final']}")
    cfg = compose_config(args[:-2]).cfg
    env = make_env(cfg.env)
    frames = np.stack([env.reset(seed=s)[0] for s in range(4)] +
                      [env.step(a)[0] for a in (1, 2, 3, 4)])
    env.close()
    dqn = get_algorithm("dqn")
    net = dqn.code.network_factory(cfg.algo)(env.observation_space, env.action_space)
    net.load_state_dict(state["online"])
    with torch.no_grad():
        expected = net(torch.as_tensor(frames)).argmax(1).numpy()
    assert np.array_equal(model.predict(frames), expected)
    mean, _, _ = dqn.evaluate(net, cfg.env, cfg.algo.evaluation_seeds(), cfg.algo)
    assert mean == run.data.metrics["eval/mean_return"]
