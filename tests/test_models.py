"""Every algorithm's agent as an MLflow pyfunc model of data: trained briefly, logged as
final and best, loaded with mlflow.pyfunc.load_model, acting as the agent in memory."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import mlflow.onnx
import mlflow.pyfunc
import numpy as np
import onnxruntime
import pytest
from mlflow import MlflowClient

from algos.core.agents import AgentFileError
from algos.core.reporting import MemoryReporter
from algos.registry import get_algorithm
from pipelines.config.compose import compose_and_check
from pipelines.results.play import held_out_test
from pipelines.tracking.models import load_logged_agent, log_agents
from pipelines.tracking.run_logger import RunLogger
from tests.helpers import batch_for, logged_run

ALGOS = {
    "q_learning": ["experiment=frozenlake_course", "algo.episodes=300", "algo.report_every=100"],
    "dqn": ["experiment=cartpole_dqn", "algo.total_steps=1500", "algo.learning_starts=500",
            "algo.eval_every=500", "algo.eval_episodes=2", "algo.device=cpu"],
    "reinforce": ["experiment=cartpole_reinforce", "algo.episodes=20", "algo.eval_every=10",
                  "algo.eval_episodes=2", "algo.device=cpu"],
}


@pytest.mark.parametrize("algo", list(ALGOS))
def test_the_logged_model_acts_as_the_agent_in_memory(tmp_path, algo):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    reporter = MemoryReporter()
    composed, result, run_id, ids = logged_run(ALGOS[algo] + ["seed=0"], uri, "models",
                                               reporter)
    run = client.get_run(run_id)
    last = reporter.reports[-1]["step"]
    assert set(ids) == {"final", "best"}
    assert client.get_run(run.info.run_id).info.status == "RUNNING"  # the trial closes it
    # Each model is the run's output at its step, with the run's params and the eval/*
    # points of that step; the run's own history gains no point.
    at = {"final": (last, result.metrics["eval/score"])}
    if ids["best"] != ids["final"]:
        at["best"] = (result.best.step, result.best.score)
    outputs = client.get_run(run.info.run_id).outputs.model_outputs
    assert {(o.model_id, o.step) for o in outputs} == {(ids[n], at[n][0]) for n in at}
    for name, (step, score) in at.items():
        logged = client.get_logged_model(ids[name])
        assert logged.status == "READY" and logged.source_run_id == run.info.run_id
        assert logged.params == client.get_run(run.info.run_id).data.params
        assert [(m.step, m.value) for m in logged.metrics if m.key == "eval/score"] == [
            (step, score)]
    # The held-out test: the best agent on seeds no evaluation played, once, at the run's
    # last step, linked to the best model and in its manifest.
    evaluation = get_algorithm(composed.cfg.algo.name).evaluation(composed.cfg.algo)
    assert len(evaluation["test_seeds"]) == len(evaluation["seeds"])
    assert not set(evaluation["test_seeds"]) & set(evaluation["seeds"])
    tested = client.get_metric_history(run.info.run_id, "test/score")
    assert [m.step for m in tested] == [last]
    assert [(m.step, m.value) for m in client.get_logged_model(ids["best"]).metrics
            if m.key == "test/score"] == [(last, tested[0].value)]
    best, manifest = load_logged_agent(f"models:/{ids['best']}", uri)
    assert manifest["test"]["test/score"] == tested[0].value
    assert manifest["evaluation"]["test_seeds"] == evaluation["test_seeds"]
    # The best model, played again as the run's evaluations play on the seeds it reports,
    # gives the figures logged: mean, std and their score.
    cfg = composed.cfg
    mean, std, _ = composed.algorithm.evaluate(best.model, cfg.env,
                                               manifest["evaluation"]["test_seeds"], cfg.algo)
    assert {k: m.value for k in ("test/mean_return", "test/std_return", "test/score")
            for m in client.get_metric_history(run.info.run_id, k)} == pytest.approx(
        {"test/mean_return": mean, "test/std_return": std, "test/score": mean - std})
    history = client.get_metric_history(run.info.run_id, "eval/score")
    assert [(m.step, m.value) for m in history] == [
        (r["step"], r["eval/score"]) for r in reporter.reports]
    mlflow.set_tracking_uri(uri)
    obs = batch_for(composed, result)
    for name, agent in result.agents().items():
        model = mlflow.pyfunc.load_model(f"models:/{ids[name]}")
        assert np.array_equal(model.predict(obs), agent.act(obs)), name
        meta = model.metadata
        assert meta.signature is not None and meta.flavors["python_function"][
            "loader_module"] == "rlpipe_agent"
        if algo != "q_learning":  # the same file, MLflow's onnx flavor too
            graph = mlflow.onnx.load_model(f"models:/{ids[name]}")
            session = onnxruntime.InferenceSession(graph.SerializeToString())
            assert np.array_equal(session.run(["action"], {"obs": obs})[0], agent.act(obs))
        else:
            assert set(meta.flavors) == {"python_function"}
    # No pickle anywhere in the model: data files, the spec and MLflow's own files.
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{ids['best']}",
                                                     dst_path=str(tmp_path / "dl")))
    names = {p.name for p in local.rglob("*") if p.is_file()}
    assert not any(n.endswith((".pkl", ".pickle")) for n in names), names
    assert "agent.json" in names
    # best: the agent at the best evaluation, never worse than the final one's
    assert result.best.step > 0 and result.best.score >= result.metrics["eval/score"]


@pytest.mark.parametrize("algo", list(ALGOS))
def test_evaluate_takes_the_same_arguments_and_seeds_for_every_algorithm(algo):
    # evaluate(model, env_cfg, seeds, cfg): one episode per reset seed, for every algorithm.
    # Played on the run's own seeds it gives the run's last evaluation; and a seed means the
    # same episode whether it is played alone or among others (greedy play).
    composed = compose_and_check(ALGOS[algo] + ["seed=0"])
    cfg = composed.cfg
    algorithm = get_algorithm(cfg.algo.name)
    result = algorithm.train(cfg.algo, cfg.env, cfg.seed)
    model = result.agents()["final"].model
    seeds = algorithm.evaluation(cfg.algo)["seeds"]
    assert seeds == cfg.algo.evaluation_seeds() and len(seeds) == cfg.algo.eval_episodes
    mean, std, returns = algorithm.evaluate(model, cfg.env, seeds, cfg.algo)
    assert (mean, std) == (result.metrics["eval/mean_return"], result.metrics["eval/std_return"])
    assert len(returns) == len(seeds)
    greedy_play = ["algo.eval_greedy=true"] if algo == "reinforce" else []
    greedy = compose_and_check(ALGOS[algo] + ["seed=0"] + greedy_play).cfg.algo
    some = [7, 3, 12]
    together = algorithm.evaluate(model, cfg.env, some, greedy)[2]
    alone = [algorithm.evaluate(model, cfg.env, [s], greedy)[2][0] for s in some]
    assert together == alone, (together, alone)


@pytest.fixture(scope="module")
def dqn_trained():
    """A short DQN run, trained once for the tests that tamper with its logged files."""
    composed = compose_and_check(ALGOS["dqn"] + ["seed=0"])
    cfg = composed.cfg
    return composed, composed.algorithm.train(cfg.algo, cfg.env, cfg.seed)


@pytest.mark.parametrize("file", ["weights.pt", "model.onnx"])
def test_a_tampered_file_fails_to_load_with_a_clear_error(tmp_path, file, dqn_trained):
    composed, result = dqn_trained
    cfg = composed.cfg
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("models"))
    ids = log_agents(RunLogger(uri, run.info.run_id, -np.inf), result, composed,
                     final_step=cfg.algo.total_steps, test=held_out_test(composed, result))
    mlflow.set_tracking_uri(uri)
    stored = Path(client.get_logged_model(ids["final"]).artifact_location.removeprefix(
        "file://"))
    altered = next(stored.rglob(file))
    data = bytearray(altered.read_bytes())
    data[len(data) // 2] ^= 0xFF
    altered.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{file}: its SHA-256 is not the one recorded"):
        mlflow.pyfunc.load_model(f"models:/{ids['final']}")
    with pytest.raises(AgentFileError, match=f"{file}: its SHA-256 is not the one recorded"):
        load_logged_agent(f"models:/{ids['final']}", uri)


def test_a_q_learning_run_and_its_model_never_import_torch(tmp_path):
    # PyTorch takes about a second to import, in a sweep's driver and in each worker: a
    # Q-learning trial (config, training, its models logged and loaded) must not pay it.
    import subprocess
    import sys

    code = f"""
import sys
import mlflow, numpy as np
from mlflow import MlflowClient
import pipelines.sweep, pipelines.tune.trial, pipelines.report, pipelines.evaluate
from algos.registry import get_algorithm
from pipelines.config.compose import compose_and_check
from pipelines.results.play import held_out_test
from pipelines.tracking.models import load_logged_agent, log_agents
from pipelines.tracking.run_logger import RunLogger
composed = compose_and_check({ALGOS["q_learning"] + ["seed=0"]!r})
cfg = composed.cfg
result = get_algorithm(cfg.algo.name).train(cfg.algo, cfg.env, cfg.seed)
uri = "sqlite:///{tmp_path / 'mlflow.db'}"
client = MlflowClient(uri)
run = client.create_run(client.create_experiment("m"))
ids = log_agents(RunLogger(uri, run.info.run_id, -np.inf), result, composed, final_step=1,
                 test=held_out_test(composed, result))
agent, _ = load_logged_agent("models:/" + ids["best"], uri)
mlflow.set_tracking_uri(uri)
mlflow.pyfunc.load_model("models:/" + ids["best"]).predict(np.arange(4))
print("torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={k: v for k, v in os.environ.items()
                                           if k != "MLFLOW_TRACKING_URI"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "False", out.stdout[-2000:]
