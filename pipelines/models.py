"""How each algorithm's trained model is recorded in its MLflow run, and read back."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import Composed
from pipelines.tracking import RunLogger

Q_TABLE = "model/q_table.npy"


def log_model(logger: RunLogger, algo_name: str, result: Any, composed: Composed) -> None:
    """Record the trained model of `result` in the run."""
    if algo_name == "q_learning":
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "model"
            folder.mkdir()
            np.save(folder / "q_table.npy", result.q_table)
            (folder / "meta.json").write_text(json.dumps({
                "algo": algo_name,
                "env": composed.container["env"],
                "shape": list(result.q_table.shape),
            }))
            logger.log_artifact(folder, "model")
        return
    if algo_name in ("dqn", "reinforce"):
        import mlflow.pytorch

        # The trial's run is made active only for log_model, the one fluent call.
        mlflow.set_tracking_uri(logger.uri)
        with mlflow.start_run(run_id=logger.run_id):
            mlflow.pytorch.log_model(
                result.network, name="model", pip_requirements=["torch"],
                input_example=result.example_obs,
                # pickle keeps the module as it is; MLflow 3's default (pt2) traces it
                # with the example and fixes the batch size to the example's.
                serialization_format="pickle",
            )
        return
    raise NotImplementedError(f"no model logging for algo {algo_name}")


def load_q_table(tracking_uri: str, run_id: str) -> np.ndarray:
    """The Q-table a q_learning run logged."""
    from mlflow.artifacts import download_artifacts

    path = download_artifacts(run_id=run_id, artifact_path=Q_TABLE, tracking_uri=tracking_uri)
    return np.load(path)


def run_config(tracking_uri: str, run_id: str) -> dict[str, Any]:
    """The resolved config a run logged."""
    import yaml
    from mlflow.artifacts import download_artifacts

    path = download_artifacts(run_id=run_id, artifact_path="config.yaml",
                              tracking_uri=tracking_uri)
    return yaml.safe_load(Path(path).read_text())


def play(tracking_uri: str, run_id: str, episodes: int | None = None) -> dict[str, Any]:
    """Evaluate a run's logged model greedily, with the run's own evaluation settings
    (or `episodes` episodes): mean, std and score (mean - std)."""
    from algos.core.envs import EnvConfig, make_env

    config = run_config(tracking_uri, run_id)
    algo, env_cfg = config["algo"], EnvConfig(**config["env"])
    if algo["name"] == "q_learning":
        from algos.q_learning import QLearningConfig, evaluate

        cfg = QLearningConfig(**algo)
        seeds = list(range(episodes)) if episodes else cfg.evaluation_seeds()
        env = make_env(env_cfg)
        mean, std, returns = evaluate(load_q_table(tracking_uri, run_id), env, seeds,
                                      cfg.max_steps)
        env.close()
    elif algo["name"] == "dqn":
        import torch

        from algos.dqn import DQNConfig, evaluate

        cfg = DQNConfig(**algo)
        net = load_network(tracking_uri, run_id)
        mean, std, returns = evaluate(net, env_cfg, episodes or cfg.eval_episodes,
                                      cfg.eval_seed, torch.device("cpu"), cfg.eval_epsilon)
    elif algo["name"] == "reinforce":
        import torch

        from algos.reinforce import ReinforceConfig, evaluate

        cfg = ReinforceConfig(**algo)
        net = load_network(tracking_uri, run_id)
        mean, std, returns = evaluate(net, env_cfg, episodes or cfg.eval_episodes,
                                      cfg.eval_seed, cfg.eval_greedy, cfg.max_steps,
                                      torch.device("cpu"))
    else:
        raise NotImplementedError(f"no player for algo {algo['name']}")
    return {"episodes": len(returns), "mean_return": mean, "std_return": std,
            "score": mean - std}


def load_network(tracking_uri: str, run_id: str):
    """The PyTorch model (a LoggedModel) that a run logged, on the CPU."""
    import mlflow
    import mlflow.pytorch

    client = mlflow.MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    models = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    if not models:
        raise FileNotFoundError(f"run {run_id} logged no model")
    mlflow.set_tracking_uri(tracking_uri)
    return mlflow.pytorch.load_model(f"models:/{models[0].model_id}", map_location="cpu")
