"""A trained agent in MLflow: an `mlflow.pyfunc` model of data that loads wherever its own
requirements are installed.

Each run logs two models: `final` (the agent at the end of training) and `best` (at its
best evaluation, by eval/score); when the last evaluation was the best, the two are one
model (both tags name it). A model's data is what algos.core.agents saves: a Q-table
as .npy, or a network as tensors (.pt, read with weights_only=True) and as ONNX, with a
JSON spec and a manifest of every file's SHA-256. The model carries its own loader,
algos.core.rlpipe_agent (MLflow's `code_paths`; numpy and onnxruntime only), so
`mlflow.pyfunc.load_model(uri).predict(observations)` returns the greedy action of each
observation of a batch in any environment that installed the model's requirements.txt,
without this project; a network's ONNX file is also MLflow's `onnx` flavor of the same
model (`mlflow.onnx.load_model`). Loading runs no pickle and no code but that loader.

In this project, load_logged_agent reads a model back as the agent that trained (the
PyTorch network from its weights), for evaluation and the registry.

Nothing here names an algorithm: algos.registry says how each one's agent is saved,
loaded and acts.
"""

from __future__ import annotations

import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from algos.core.metrics import EVAL_PREFIX, EVAL_SCORE, TEST_SCORE
from algos.core.rlpipe_agent import ONNX_FILE
from pipelines import private_api
from pipelines.config.compose import Composed
from pipelines.tracking.run_logger import RunLogger


def model_tag(name: str) -> str:
    """The run tag that holds the model id of the run's model `name` (final or best)."""
    return f"model.{name}"


LOADER = "rlpipe_agent"
"""The pyfunc loader_module of every model: algos/core/rlpipe_agent.py, shipped in the
model's code/ folder."""
LEGACY_LOADER = "pipelines.models"
"""The loader_module of models logged before the loader travelled with them (before
2026-12-06): pipelines/models.py, which loads them with this project installed."""
LOADERS = (LOADER, LEGACY_LOADER)
"""The loaders of this project's models."""


def pip_requirements(network: bool) -> list[str]:
    """What loading a model needs, pinned to this environment's versions: numpy, and for a
    network onnxruntime (the pyfunc) and onnx (the onnx flavor). MLflow adds itself."""
    names = ["numpy", "onnxruntime", "onnx"] if network else ["numpy"]
    return [f"{name}=={version(name)}" for name in names]


def save_model(path: str, mlflow_model: Any, data_path: str, **kwargs: Any) -> None:
    """The flavor's save_model that mlflow.models.Model.log calls: the pyfunc model of the
    agent saved in `data_path`, its loader shipped as code; a network's ONNX file is
    also the model's onnx flavor. `kwargs`: mlflow.pyfunc.save_model's."""
    import mlflow.pyfunc
    from mlflow.models.model import MLMODEL_FILE_NAME

    from algos.core import rlpipe_agent

    mlflow.pyfunc.save_model(path, mlflow_model=mlflow_model, loader_module=LOADER,
                             data_path=data_path, code_paths=[rlpipe_agent.__file__], **kwargs)
    onnx_file = f"{mlflow_model.flavors['python_function']['data']}/{ONNX_FILE}"
    if (Path(path) / onnx_file).is_file():
        import onnx

        mlflow_model.add_flavor("onnx", onnx_version=onnx.__version__, data=onnx_file,
                                providers=["CPUExecutionProvider"])
        mlflow_model.save(str(Path(path) / MLMODEL_FILE_NAME))


def log_agents(logger: RunLogger, result: Any, composed: Composed, final_step: int,
               test: dict[str, float]) -> dict[str, str]:
    """Log the run's final and best agents as pyfunc models named final and best, the final
    one at the run's last report step `final_step`, the best at its evaluation's, the best
    one's held-out `test` (pipelines.results.play.held_out_test) in its manifest; tag the
    run with their model ids (model.final, model.best) and return them. The run's metrics
    must be written first.

    Each model is the run's output at its step, with the run's params as its own and the
    run's eval/* points of that step linked to it: what MLflow's log_model does in an
    active run, except that it reads every metric history of the run for the step's
    points (a trial's 25,000 episode returns cost 0.8 s a model). So the model is made
    here and logged into with no active run; MLflow's context tags (user, source, git
    commit) are not copied onto it."""
    about = {
        "final": {"score": result.metrics.get(EVAL_SCORE), "step": final_step},
        "best": {"score": result.best.score, "step": result.best.step},
    }
    if about["best"]["step"] < 0:  # never evaluated: the final agent is the best one
        about["best"] = about["final"]
    about["best"] = {**about["best"], "test": test}
    agents = result.agents()
    run = logger.client.get_run(logger.run_id)
    histories = {key: logger.client.get_metric_history(logger.run_id, key)
                 for key in run.data.metrics if key.startswith(EVAL_PREFIX)}
    ids: dict[str, str] = {}
    # log_model writes through the fluent API's store: this one, for the loop.
    with private_api.mlflow_store(logger.uri):
        for name, agent in agents.items():
            if name == "best" and agent.same_as(agents["final"]):  # one model for both
                ids["best"] = ids["final"]
                continue
            ids[name] = _log_model(logger, run, name, agent, composed, about[name],
                                   example=result.example_obs())
            _link_points(logger, histories, int(about[name]["step"]), ids[name])
    logger.set_tags({model_tag(name): model_id for name, model_id in ids.items()})
    return ids


def _log_model(logger: RunLogger, run, name: str, agent, composed: Composed,
               about: dict[str, Any], example) -> str:
    """One agent as the run's model `name` at its step; its model id."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model, infer_signature

    from algos.core.agents import save_agent

    client = logger.client
    model = client.create_logged_model(
        run.info.experiment_id, name=name, source_run_id=logger.run_id,
        params=run.data.params, tags={"rlpipe.model": name})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "agent"
            save_agent(agent, folder, algo=composed.cfg.algo.name, model=name,
                       env=composed.container["env"],
                       evaluation=composed.algorithm.evaluation(composed.cfg.algo),
                       source_run_id=logger.run_id, **about)
            Model.log(artifact_path=None, name=name, model_id=model.model_id,
                      flavor=sys.modules[__name__], data_path=str(folder),
                      signature=infer_signature(example, agent.act(example)),
                      input_example=example,
                      pip_requirements=pip_requirements(network=(folder / ONNX_FILE).is_file()))
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.log_outputs(logger.run_id, [LoggedModelOutput(model.model_id,
                                                         step=int(about["step"]))])
    return model.model_id


def _link_points(logger: RunLogger, histories: dict[str, list], step: int,
                 model_id: str) -> None:
    """The run's eval/* points of `step`, as they were written (same time stamps: no new
    points in the run's history), now also the model's."""
    from mlflow.entities import Metric

    logger.client.log_batch(logger.run_id, metrics=[
        Metric(m.key, m.value, m.timestamp, m.step, run_id=logger.run_id, model_id=model_id)
        for points in histories.values() for m in points
        if m.step == step and m.model_id is None])


def log_test(logger: RunLogger, test: dict[str, float], step: int, model_id: str) -> None:
    """The held-out test's figures in the run at `step`, linked to the best model; once
    (a retried trial's may be there already)."""
    from mlflow.entities import Metric

    if TEST_SCORE in logger.client.get_run(logger.run_id).data.metrics:
        return
    stamp = int(time.time() * 1000)
    logger.client.log_batch(logger.run_id, metrics=[
        Metric(key, value, stamp, step, run_id=logger.run_id, model_id=model_id)
        for key, value in test.items()])


def run_model_uri(client, run_id: str, name: str = "best") -> str:
    """models:/<id> of the model `name` (final or best) that a run logged."""
    run = client.get_run(run_id)
    if model_tag(name) in run.data.tags:
        return f"models:/{run.data.tags[model_tag(name)]}"
    models = client.search_logged_models(
        [run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'")
    if not models:
        raise FileNotFoundError(f"run {run_id} logged no model named {name}")
    return f"models:/{models[0].model_id}"


def download_model(model_uri: str, tracking_uri: str, dst: Path) -> tuple[Path, dict]:
    """Download the model of this project at `model_uri` into `dst`: (its local folder,
    its MLmodel as a dict). Raises LookupError when the URI does not resolve or is not
    such a model."""
    import os

    import yaml
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # models:/ URIs resolve through the process's tracking and registry URIs, whatever
    # download_artifacts is given: point both at this store while it downloads.
    with private_api.mlflow_store(tracking_uri):
        try:
            local = Path(download_artifacts(artifact_uri=model_uri, dst_path=str(dst),
                                            tracking_uri=tracking_uri))
            mlmodel = yaml.safe_load((local / "MLmodel").read_text())
            loader = mlmodel["flavors"]["python_function"].get("loader_module")
        except (MlflowException, OSError, KeyError, TypeError) as e:
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise LookupError(f"does not resolve to a model of this project ({reason})") \
                from None
    if loader not in LOADERS:
        raise LookupError(f"not an agent of this project (its loader is {loader})")
    return local, mlmodel


def load_logged_agent(model_uri: str, tracking_uri: str):
    """(agent, manifest) of a pyfunc model of this project at `model_uri`. Raises
    LookupError when the URI does not resolve or is not such a model, and
    algos.core.agents.AgentFileError when its files do not check."""
    from algos.registry import load_agent

    with tempfile.TemporaryDirectory() as tmp:
        local, mlmodel = download_model(model_uri, tracking_uri, Path(tmp))
        return load_agent(local / mlmodel["flavors"]["python_function"]["data"])
