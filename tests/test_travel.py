"""Agents that travel: a registered model served over REST by MLflow's real scoring server,
and loaded and served in a clean virtual environment that holds only what the model's
own requirements.txt installs (no checkout, no PyTorch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from pipelines.private_api import mlflow_store
from pipelines.results.registry import register_champion
from tests.helpers import batch_for, logged_run, run_cli, run_in_process
from tests.ray_cluster import free_port

MODELS = {
    # registered name: the overrides of the run that trains it
    "travel-frozenlake": ["experiment=frozenlake_course", "algo.episodes=300",
                          "algo.report_every=100", "seed=0"],
    "travel-cartpole": ["experiment=cartpole_reinforce", "algo.episodes=20",
                        "algo.eval_every=10", "algo.eval_episodes=2", "algo.device=cpu",
                        "seed=0"],
}


@pytest.fixture(scope="module")
def registered(mlflow_server):
    """Each MODELS entry trained briefly, logged to the real MLflow server and registered
    (alias best): name -> (a batch of real observations, the agent's actions on it)."""
    client = MlflowClient(mlflow_server)
    out = {}
    for name, args in MODELS.items():
        composed, result, run_id, ids = logged_run(args, mlflow_server, "travel")
        register_champion(client, mlflow_server, name, ids["best"], run_id)
        obs = batch_for(composed, result)
        out[name] = (obs, result.agents()["best"].act(obs))
    return out


@contextmanager
def scoring_server(mlflow_bin: Path, model_uri: str, tracking_uri: str, cwd: Path,
                   env: dict[str, str] | None = None):
    """`mlflow models serve` of `model_uri` on 127.0.0.1, with the packages of the
    environment of `mlflow_bin` (--env-manager local), its URL once /ping answers."""
    port = free_port()
    log = cwd / f"serve-{port}.log"
    env = {**(env if env is not None else os.environ), "MLFLOW_TRACKING_URI": tracking_uri}
    # as from an activated venv: the server runs `uvicorn` from the PATH
    env["PATH"] = f"{mlflow_bin.parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.Popen(
        [str(mlflow_bin), "models", "serve", "-m", model_uri, "-h", "127.0.0.1",
         "-p", str(port), "--env-manager", "local"],
        cwd=cwd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the scoring server did not start: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def invoke(url: str, obs: np.ndarray) -> list:
    """POST a batch to /invocations as the README's curl does; the predictions."""
    request = urllib.request.Request(
        f"{url}/invocations", data=json.dumps({"inputs": obs.tolist()}).encode(),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=60) as r:
        return json.loads(r.read())["predictions"]


def test_a_registered_model_answers_rest_invocations_with_its_actions(registered,
                                                                      mlflow_server, tmp_path):
    obs, actions = registered["travel-cartpole"]
    with scoring_server(Path(sys.executable).parent / "mlflow",
                        "models:/travel-cartpole@best", mlflow_server, tmp_path) as url:
        assert invoke(url, obs) == actions.tolist()
        assert invoke(url, obs[:1]) == actions[:1].tolist()


CLEAN_LOAD = """
import json, sys
import mlflow, numpy as np
out = {}
for name, obs in json.loads(sys.stdin.read()).items():
    model = mlflow.pyfunc.load_model(f"models:/{name}@best")
    out[name] = model.predict(np.asarray(obs[0], dtype=obs[1])).tolist()
out["onnx"] = type(mlflow.onnx.load_model("models:/travel-cartpole@best")).__name__
for module in ("algos", "pipelines", "torch", "gymnasium"):
    try:
        __import__(module)
        out[module] = "importable"
    except ImportError:
        pass
print(json.dumps(out))
"""


@pytest.mark.slow  # 60 s: a virtual environment installed from the models' requirements
def test_a_model_loads_and_serves_in_a_clean_venv_from_its_own_requirements(
    registered, mlflow_server, tmp_path
):
    from mlflow.artifacts import download_artifacts

    # As a user on another machine: the requirements of each model, and nothing else.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    requirements = []
    for name in MODELS:
        with mlflow_store(mlflow_server):  # models:/ resolves through the process's store
            local = Path(download_artifacts(f"models:/{name}@best",
                                            dst_path=str(tmp_path / name)))
        requirements += ["-r", str(local / "requirements.txt")]
        assert "rlpipe" not in (local / "requirements.txt").read_text()
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                    *requirements], check=True, timeout=600)
    # Away from the checkout: no PYTHONPATH, a working directory of its own.
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    away = tmp_path / "away"
    away.mkdir()
    batches = {name: [obs.tolist(), str(obs.dtype)] for name, (obs, _) in registered.items()}
    loaded = subprocess.run(
        [str(venv / "bin" / "python"), "-c", CLEAN_LOAD], input=json.dumps(batches),
        capture_output=True, text=True, cwd=away, timeout=300,
        env={**env, "MLFLOW_TRACKING_URI": mlflow_server})
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    out = json.loads(loaded.stdout.strip().splitlines()[-1])
    for name, (_, actions) in registered.items():
        assert out[name] == actions.tolist(), name
    assert out["onnx"] == "ModelProto"
    assert not {"algos", "pipelines", "torch", "gymnasium"} & set(out), out
    obs, actions = registered["travel-frozenlake"]
    with scoring_server(venv / "bin" / "mlflow", "models:/travel-frozenlake@best",
                        mlflow_server, away, env=env) as url:
        assert invoke(url, obs) == actions.tolist()


@pytest.mark.parametrize("name", list(MODELS))
def test_a_package_holds_what_the_course_pushes_to_the_hub(registered, mlflow_server,
                                                           workdir, name):
    import imageio_ffmpeg
    import mlflow.pyfunc
    from huggingface_hub import metadata_load

    result = run_in_process("pipelines.package", [
        f"package.model=models:/{name}@best", "package.dir=hub/agent",
        f"tracking.uri={mlflow_server}"], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    folder = workdir / "hub" / "agent"
    assert json.loads(result.last_line)["dir"] == str(folder)
    assert [p.name for p in folder.parent.iterdir()] == ["agent"]  # no staging left
    results = json.loads((folder / "results.json").read_text())
    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias(name, "best")
    run = client.get_run(version.run_id)
    env_id = "FrozenLake-v1-4x4-no_slippery" if "frozenlake" in name else "CartPole-v1"
    assert results["env_id"] == env_id
    # played greedily on the run's held-out seeds, which none of its evaluations played
    manifest = json.loads((folder / "data" / "agent" / "agent.json").read_text())
    assert results["eval_seeds"] == manifest["evaluation"]["test_seeds"]
    assert not set(results["eval_seeds"]) & set(manifest["evaluation"]["seeds"])
    assert results["n_evaluation_episodes"] == len(manifest["evaluation"]["seeds"])
    assert results["score"] == pytest.approx(results["mean_reward"] - results["std_reward"])
    assert results["source_run_id"] == run.info.run_id
    # The model card's metadata, as huggingface_hub reads it back.
    meta = metadata_load(folder / "README.md")
    entry = meta["model-index"][0]["results"][0]
    assert entry["dataset"]["name"] == env_id and entry["task"]["type"] == \
        "reinforcement-learning"
    assert entry["metrics"][0]["type"] == "mean_reward" and entry["metrics"][0]["value"] == (
        f"{results['mean_reward']:.2f} +/- {results['std_reward']:.2f}")
    assert meta["library_name"] == "rlpipe" and env_id in meta["tags"]
    assert {"reinforcement-learning", "custom-implementation"} <= set(meta["tags"])
    assert ("q-learning" if "frozenlake" in name else "reinforce") in meta["tags"]
    assert json.loads((folder / "hyperparameters.json").read_text()) == run.data.params
    # The package's own model, played again on the seeds its results name, gives its
    # figures; its video is the first of those episodes, one frame a step plus the reset.
    from algos.core.envs import EnvConfig, make_env
    from algos.core.evaluation import play_episodes
    from algos.registry import load_agent

    agent, _ = load_agent(folder / "data" / "agent")
    env_cfg, max_steps = EnvConfig(**manifest["env"]), manifest["evaluation"].get("max_steps")
    mean, std, returns = play_episodes(env_cfg, results["eval_seeds"], agent.act, max_steps)
    assert len(returns) == results["n_evaluation_episodes"]
    assert (mean, std) == (pytest.approx(results["mean_reward"]),
                           pytest.approx(results["std_reward"]))
    env = make_env(env_cfg)
    obs, _ = env.reset(seed=results["eval_seeds"][0])
    steps, done = 0, False
    while not done and (max_steps is None or steps < max_steps):
        obs, _, terminated, truncated, _ = env.step(agent.act(np.asarray(obs)[None])[0])
        steps, done = steps + 1, terminated or truncated
    env.close()
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(folder / "replay.mp4"))
    assert frames == steps + 1, (frames, steps)
    # The folder is the MLflow model: it loads, and acts as the agent did.
    obs, actions = registered[name]
    assert np.array_equal(mlflow.pyfunc.load_model(str(folder)).predict(obs), actions)
    data = folder / "data" / "agent"
    assert (data / ("q_table.npy" if "frozenlake" in name else "model.onnx")).is_file()


BAD_PACKAGES = [
    (["package.dir=full"], "package.dir=full: exists and is not an empty folder"),
    (["package.dir=new", "package.repo_id=no slashes here"],
     "package.repo_id=no slashes here: not a Hub repository id"),
    (["package.dir=new", "package.repo_id=a/b/c"], "package.repo_id=a/b/c: not a Hub"),
    (["package.dir=new", "package.push=true"], "package.repo_id: required with package.push"),
    (["package.dir=new", "package.model=taxi"], "package.model=taxi: not a model URI"),
    (["package.dir=new", "package.model=models:/no-such-model@best"],
     "package.model=models:/no-such-model@best: does not resolve"),
    (["package.dir=new", "package.episodes=0"], "package.episodes=0"),
]


@pytest.mark.parametrize("args,line", BAD_PACKAGES, ids=[
    "dir-not-empty", "repo-id", "repo-id-depth", "push-without-repo", "uri", "missing",
    "episodes"])
def test_bad_package_input_is_one_line_exit_2_and_writes_nothing(
    registered, mlflow_server, workdir, args, line
):
    (workdir / "full").mkdir()
    (workdir / "full" / "keep.txt").write_text("mine")
    model = [] if any(a.startswith("package.model=") for a in args) else [
        "package.model=models:/travel-frozenlake@best"]
    result = run_in_process("pipelines.package", [
        *model, *args, f"tracking.uri={mlflow_server}"], workdir)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [f"error: {result.stderr.split(': ', 1)[1]}"
                                                  .strip()]
    assert line in result.stderr
    assert sorted(p.name for p in workdir.iterdir()) == ["full"]
    assert [p.name for p in (workdir / "full").iterdir()] == ["keep.txt"]


def test_push_needs_a_token_and_a_failed_upload_keeps_the_package(
    registered, mlflow_server, workdir, tmp_path
):
    # No machine here reaches the Hub: the upload call itself is not tested. Without a
    # token nothing is written; with one, the upload is tried (against an endpoint where
    # nothing listens) and its failure is one line, exit 1, the package kept.
    args = ["package.model=models:/travel-frozenlake@best", "package.dir=hub/q-frozenlake",
            "package.push=true", "package.repo_id=someone/q-FrozenLake-v1-4x4-noSlippery",
            f"tracking.uri={mlflow_server}"]
    home = {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "0"}
    refused = run_cli("pipelines.package", args, workdir, env={**home, "HF_TOKEN": ""},
                      timeout=300)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert refused.stderr.strip() == (
        "error: package.push=true: no Hugging Face token; set HF_TOKEN or run `hf auth "
        "login` (a token with write access)")
    assert not (workdir / "hub").exists()
    failed = run_cli("pipelines.package", args, workdir, timeout=300, env={
        **home, "HF_TOKEN": "hf_" + "x" * 34, "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
    assert failed.returncode == 1, failed.stderr[-2000:]
    assert "error: package.push: the upload to someone/q-FrozenLake-v1-4x4-noSlippery " \
           "failed" in failed.stderr
    assert "the package is complete in" in failed.stderr
    assert {"README.md", "results.json", "replay.mp4", "hyperparameters.json", "MLmodel"} <= {
        p.name for p in (workdir / "hub" / "q-frozenlake").iterdir()}
