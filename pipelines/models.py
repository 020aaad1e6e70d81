"""A trained agent in MLflow: an `mlflow.pyfunc` model of data, loaded by this module.

Each run logs two models: `final` (the agent at the end of training) and `best` (at its
best evaluation, by eval/score). A model's data is what algos.core.agents saves: a Q-table
as .npy or a network's weights as tensors (.pt, read with weights_only=True), a JSON spec
that rebuilds the network, and a manifest with every file's SHA-256. Its MLmodel names
this module as the pyfunc loader (`loader_module`), so loading runs no pickle and no code
from the model: it runs this project's own code, which must be installed where the model
is loaded. `mlflow.pyfunc.load_model(uri).predict(observations)` returns the greedy action
of each observation of a batch.

Nothing here names an algorithm: algos.registry says how each one's agent is saved,
loaded and acts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import Composed
from pipelines.tracking import RunLogger

MODEL_NAMES = ("final", "best")
PIP_REQUIREMENTS = ["rlpipe", "torch", "numpy", "gymnasium"]
"""What loading a model needs: this project installed (its code rebuilds the agent)."""


def log_agents(logger: RunLogger, result: Any, composed: Composed) -> dict[str, str]:
    """Log the run's final and best agents as pyfunc models named final and best; tag the
    run with their model ids (model.final, model.best) and return them."""
    import mlflow
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    from algos.core.agents import save_agent
    from algos.registry import get_algorithm

    example = result.example_obs()
    evaluation = get_algorithm(composed.cfg.algo.name).evaluation(composed.cfg.algo)
    about = {
        "final": {"score": result.metrics.get("eval/score")},
        "best": {"score": result.best.score, "step": result.best.step},
    }
    if about["best"]["step"] < 0:  # never evaluated: the final agent is the best one
        about["best"] = about["final"]
    ids: dict[str, str] = {}
    mlflow.set_tracking_uri(logger.uri)
    # The trial's run is made active only for log_model, the one fluent call.
    with mlflow.start_run(run_id=logger.run_id):
        for name, agent in result.agents().items():
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp) / "agent"
                save_agent(agent, folder, algo=composed.cfg.algo.name, model=name,
                           env=composed.container["env"], evaluation=evaluation,
                           source_run_id=logger.run_id, **about[name])
                info = mlflow.pyfunc.log_model(
                    name=name, loader_module=__name__, data_path=str(folder),
                    signature=infer_signature(example, agent.act(example)),
                    input_example=example, pip_requirements=PIP_REQUIREMENTS,
                    step=max(0, int(about[name].get("step") or 0)),
                    tags={"rlpipe.model": name},
                )
            ids[name] = info.model_id
    # end_run marked the run finished: the trial still closes it itself.
    logger.client.update_run(logger.run_id, status="RUNNING")
    logger.set_tags({f"model.{name}": model_id for name, model_id in ids.items()})
    return ids


class AgentModel:
    """What mlflow.pyfunc.load_model returns the predict of: greedy actions."""

    def __init__(self, agent, manifest: dict[str, Any]) -> None:
        self.agent = agent
        self.manifest = manifest
        """The saved agent's manifest: algo, env, model (final or best), score, step."""

    def predict(self, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
        """The greedy action of each observation of the batch."""
        return np.asarray(self.agent.act(np.asarray(model_input)))


def _load_pyfunc(data_path: str) -> AgentModel:
    """MLflow's loader_module entry point: the agent saved under `data_path`."""
    from algos.registry import load_agent

    agent, manifest = load_agent(Path(data_path))
    return AgentModel(agent, manifest)


def run_model_uri(client, run_id: str, name: str = "best") -> str:
    """models:/<id> of the model `name` (final or best) that a run logged."""
    run = client.get_run(run_id)
    models = client.search_logged_models(
        [run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'")
    if not models:
        raise FileNotFoundError(f"run {run_id} logged no model named {name}")
    return f"models:/{models[0].model_id}"
