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

import numpy as np

from algos.core.metrics import (
    EVAL_PREFIX,
    EVAL_SCORE,
    TEST_MEAN_RETURN,
    TEST_SCORE,
    TEST_STD_RETURN,
    score,
)
from algos.core.rlpipe_agent import ONNX_FILE
from pipelines import private_api
from pipelines.config import Composed
from pipelines.tracking import RunLogger


def model_tag(name: str) -> str:
    """The run tag that holds the model id of the run's model `name` (final or best)."""
    return f"model.{name}"


LOADER = "rlpipe_agent"
"""The pyfunc loader_module of every model: algos/core/rlpipe_agent.py, shipped in the
model's code/ folder."""
LOADERS = (LOADER, __name__)
"""The loaders of this project's models: LOADER, and this module, the loader of models
logged before the loader travelled with them (those load with this project installed)."""


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


def log_agents(logger: RunLogger, result: Any, composed: Composed,
               final_step: int) -> dict[str, str]:
    """Log the run's final and best agents as pyfunc models named final and best, the final
    one at the run's last report step `final_step`, the best at its evaluation's; tag the
    run with their model ids (model.final, model.best) and return them. The run's metrics
    must be written first. The best agent is tested on the held-out seeds first: test/*
    at `final_step` in the run, linked to the best model, and in its manifest.

    Each model is the run's output at its step, with the run's params as its own and the
    run's eval/* points of that step linked to it: what MLflow's log_model does in an
    active run, except that it reads every metric history of the run for the step's
    points (a trial's 25,000 episode returns cost 0.8 s a model). So the model is made
    here and logged into with no active run; MLflow's context tags (user, source, git
    commit) are not copied onto it."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
    from mlflow.models import Model, infer_signature

    from algos.core.agents import save_agent
    from algos.registry import get_algorithm

    example = result.example_obs()
    cfg = composed.cfg
    algorithm = get_algorithm(cfg.algo.name)
    evaluation = algorithm.evaluation(cfg.algo)
    about = {
        "final": {"score": result.metrics.get(EVAL_SCORE), "step": final_step},
        "best": {"score": result.best.score, "step": result.best.step},
    }
    if about["best"]["step"] < 0:  # never evaluated: the final agent is the best one
        about["best"] = about["final"]
    ids: dict[str, str] = {}
    agents = result.agents()
    same = agents["best"].same_as(agents["final"])
    client = logger.client
    run = client.get_run(logger.run_id)
    # The held-out test: the best agent, played as the run's evaluations play, on seeds
    # none of them played (the best was picked on theirs).
    mean, std, _ = algorithm.evaluate(agents["best"].model, cfg.env,
                                      evaluation["test_seeds"], cfg.algo)
    test = {TEST_MEAN_RETURN: mean, TEST_STD_RETURN: std, TEST_SCORE: score(mean, std)}
    about["best"] = {**about["best"], "test": test}
    histories = {key: client.get_metric_history(logger.run_id, key)
                 for key in run.data.metrics if key.startswith(EVAL_PREFIX)}
    # log_model writes through the fluent API's store: this one, for the loop.
    with private_api.mlflow_store(logger.uri):
        for name, agent in agents.items():
            if name == "best" and same:  # the last evaluation was the best: one model
                ids["best"] = ids["final"]
                continue
            step = int(about[name]["step"])
            model = client.create_logged_model(
                run.info.experiment_id, name=name, source_run_id=logger.run_id,
                params=run.data.params, tags={"rlpipe.model": name})
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    folder = Path(tmp) / "agent"
                    save_agent(agent, folder, algo=composed.cfg.algo.name, model=name,
                               env=composed.container["env"], evaluation=evaluation,
                               source_run_id=logger.run_id, **about[name])
                    Model.log(
                        artifact_path=None, name=name, model_id=model.model_id,
                        flavor=sys.modules[__name__],
                        data_path=str(folder),
                        signature=infer_signature(example, agent.act(example)),
                        input_example=example,
                        pip_requirements=pip_requirements(
                            network=(folder / ONNX_FILE).is_file()),
                    )
            except BaseException:
                client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
                raise
            client.log_outputs(logger.run_id, [LoggedModelOutput(model.model_id, step=step)])
            # The step's own points, as they were written (same time stamps: no new points
            # in the run's history), now also the model's.
            client.log_batch(logger.run_id, metrics=[
                Metric(m.key, m.value, m.timestamp, m.step, run_id=logger.run_id,
                       model_id=model.model_id)
                for points in histories.values() for m in points
                if m.step == step and m.model_id is None])
            ids[name] = model.model_id
    if TEST_SCORE not in run.data.metrics:  # (a retried trial's may be there already)
        stamp = int(time.time() * 1000)
        client.log_batch(logger.run_id, metrics=[
            Metric(key, value, stamp, final_step, run_id=logger.run_id,
                   model_id=ids["best"]) for key, value in test.items()])
    logger.set_tags({model_tag(name): model_id for name, model_id in ids.items()})
    return ids


def _load_pyfunc(data_path: str):
    """MLflow's loader_module entry point of models logged before they carried their
    loader: the agent saved under `data_path`, read by this project's code."""
    from algos.core.rlpipe_agent import AgentModel
    from algos.registry import load_agent

    return AgentModel(*load_agent(Path(data_path)))


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


def play(agent, manifest: dict[str, Any], episodes: int | None = None, seed: int = 0,
         video: Path | None = None, held_out: bool = False) -> dict[str, Any]:
    """Play the agent greedily: on the run's own evaluation seeds, or with `held_out` on
    its held-out test seeds, or `episodes` episodes on seeds seed, seed+1, ...; with
    `video`, the first episode is also recorded there as an mp4. Returns episodes,
    mean_return, std_return, score, seeds."""
    from algos.core.envs import EnvConfig
    from algos.core.evaluation import held_out_seeds, play_episodes

    evaluation = manifest["evaluation"]
    if episodes:
        seeds = list(range(seed, seed + episodes))
    elif held_out:  # (models saved before the manifest held them: the same seeds)
        seeds = list(evaluation.get("test_seeds") or held_out_seeds(evaluation["seeds"]))
    else:
        seeds = list(evaluation["seeds"])
    env_cfg = EnvConfig(**manifest["env"])
    mean, std, returns = play_episodes(env_cfg, seeds, agent.act, evaluation.get("max_steps"))
    out = {"episodes": len(returns), "mean_return": mean, "std_return": std,
           "score": score(mean, std), "seeds": seeds}
    if video is not None:
        out["video_frames"] = record_episode(agent, env_cfg, seeds[0],
                                             evaluation.get("max_steps"), video)
    return out


def record_episode(agent, env_cfg, seed: int, max_steps: int | None, path: Path) -> int:
    """Play one episode from reset seed `seed` and write its frames (render_mode
    rgb_array: Atari at its native 210x160) to `path` as an mp4; the number of frames."""
    import os

    from algos.core.envs import make_env

    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")  # gymnasium renders with it
    env = make_env(env_cfg.full_games(), render_mode="rgb_array")
    obs, _ = env.reset(seed=seed)
    frames: list[np.ndarray] = [np.asarray(env.render())]
    steps = 0
    while max_steps is None or steps < max_steps:
        action = agent.act(np.asarray(obs)[None])[0]
        obs, _, terminated, truncated, _ = env.step(action)
        frames.append(np.asarray(env.render()))
        steps += 1
        if terminated or truncated:
            break
    env.close()
    write_mp4(frames, int(env.metadata.get("render_fps") or 30), path)
    return len(frames)


def write_mp4(frames: list[np.ndarray], fps: int, path: Path) -> None:
    """RGB frames as an H.264 mp4 (yuv420p), which browsers play: the MLflow UI and the
    Hugging Face Hub show it in the page. ffmpeg comes with imageio-ffmpeg."""
    import imageio_ffmpeg

    height, width = frames[0].shape[:2]
    even = (height + height % 2, width + width % 2)  # yuv420p wants even sides
    writer = imageio_ffmpeg.write_frames(
        str(path), (even[1], even[0]), fps=fps, codec="libx264", pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p", macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)
    for frame in frames:
        if frame.shape[:2] != even:
            frame = np.pad(frame, ((0, even[0] - height), (0, even[1] - width), (0, 0)))
        writer.send(np.ascontiguousarray(frame, dtype=np.uint8))
    writer.close()


CHAMPION = "best"
"""The alias of a registered model's best version."""


def register_champion(client, tracking_uri: str, name: str, model_id: str,
                      source_run_id: str) -> dict[str, Any]:
    """Add the model as a new version of the registered model `name`; move its alias
    `best` to it only when it beats the version holding it on the challenger's held-out
    test seeds (which no evaluation of its run played, nor of any run with the same
    evaluation seeds, so neither agent was picked on them), or when none holds it. Both
    play greedily. Returns name, version, moved, and both scores (test/score)."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    # The store resolves the models:/ source through the process-wide tracking URI.
    with private_api.mlflow_store(tracking_uri):
        version = client.create_model_version(name, source=f"models:/{model_id}",
                                              run_id=source_run_id,
                                              model_id=model_id).version
    challenger, manifest = load_logged_agent(f"models:/{model_id}", tracking_uri)
    new = play(challenger, manifest, held_out=True)["score"]
    client.set_model_version_tag(name, str(version), TEST_SCORE, str(new))
    out = {"name": name, "version": str(version), "score": new, "champion_score": None}
    try:
        holder = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        holder = None
    if holder is not None:
        champion, _ = load_logged_agent(f"models:/{name}/{holder.version}", tracking_uri)
        old = play(champion, manifest, held_out=True)["score"]  # the same env and seeds
        out["champion_score"] = old
        out["champion_version"] = str(holder.version)
        if not new > old:
            out["moved"] = False
            return out
    client.set_registered_model_alias(name, CHAMPION, str(version))
    out["moved"] = True
    return out
