"""A trained agent in MLflow: an `mlflow.pyfunc` model of data, loaded by this module.

Each run logs two models: `final` (the agent at the end of training) and `best` (at its
best evaluation, by eval/score); when the last evaluation was the best, the two are one
model (both tags name it). A model's data is what algos.core.agents saves: a Q-table
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

from algos.core.metrics import EVAL_PREFIX, EVAL_SCORE, score
from pipelines import private_api
from pipelines.config import Composed
from pipelines.tracking import RunLogger


def model_tag(name: str) -> str:
    """The run tag that holds the model id of the run's model `name` (final or best)."""
    return f"model.{name}"

PIP_REQUIREMENTS = ["rlpipe", "torch", "numpy", "gymnasium"]
"""What loading a model needs: this project installed (its code rebuilds the agent)."""


def log_agents(logger: RunLogger, result: Any, composed: Composed,
               final_step: int) -> dict[str, str]:
    """Log the run's final and best agents as pyfunc models named final and best, the final
    one at the run's last report step `final_step`, the best at its evaluation's; tag the
    run with their model ids (model.final, model.best) and return them. The run's metrics
    must be written first.

    Each model is the run's output at its step, with the run's params as its own and the
    run's eval/* points of that step linked to it: what MLflow's log_model does in an
    active run, except that it reads every metric history of the run for the step's
    points (a trial's 25,000 episode returns cost 0.8 s a model). So the model is made
    here and logged into with no active run; MLflow's context tags (user, source, git
    commit) are not copied onto it."""
    import mlflow
    import mlflow.pyfunc
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
    from mlflow.models import infer_signature

    from algos.core.agents import save_agent
    from algos.registry import get_algorithm

    example = result.example_obs()
    evaluation = get_algorithm(composed.cfg.algo.name).evaluation(composed.cfg.algo)
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
                    mlflow.pyfunc.log_model(
                        name=name, model_id=model.model_id, loader_module=__name__,
                        data_path=str(folder),
                        signature=infer_signature(example, agent.act(example)),
                        input_example=example, pip_requirements=PIP_REQUIREMENTS,
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
    logger.set_tags({model_tag(name): model_id for name, model_id in ids.items()})
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
    if model_tag(name) in run.data.tags:
        return f"models:/{run.data.tags[model_tag(name)]}"
    models = client.search_logged_models(
        [run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'")
    if not models:
        raise FileNotFoundError(f"run {run_id} logged no model named {name}")
    return f"models:/{models[0].model_id}"


def load_logged_agent(model_uri: str, tracking_uri: str):
    """(agent, manifest) of a pyfunc model of this project at `model_uri`. Raises
    LookupError when the URI does not resolve or is not such a model, and
    algos.core.agents.AgentFileError when its files do not check."""
    import os
    import tempfile

    import yaml
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    from algos.registry import load_agent

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # models:/ URIs resolve through the process's tracking and registry URIs, whatever
    # download_artifacts is given: point both at this store while it downloads.
    with tempfile.TemporaryDirectory() as tmp, private_api.mlflow_store(tracking_uri):
        try:
            local = Path(download_artifacts(artifact_uri=model_uri, dst_path=tmp,
                                            tracking_uri=tracking_uri))
            flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"][
                "python_function"]
        except (MlflowException, OSError, KeyError, TypeError) as e:
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise LookupError(f"does not resolve to a model of this project ({reason})") \
                from None
        if flavor.get("loader_module") != __name__:
            raise LookupError(f"not an agent of this project (its loader is "
                              f"{flavor.get('loader_module')})")
        return load_agent(local / flavor["data"])


def play(agent, manifest: dict[str, Any], episodes: int | None = None, seed: int = 0,
         video: Path | None = None) -> dict[str, Any]:
    """Play the agent greedily: on the run's own evaluation seeds, or `episodes` episodes
    on seeds seed, seed+1, ...; with `video`, the first episode is also recorded there as
    an mp4. Returns episodes, mean_return, std_return, score, seeds."""
    from algos.core.envs import EnvConfig
    from algos.core.evaluation import play_episodes

    evaluation = manifest["evaluation"]
    seeds = list(range(seed, seed + episodes)) if episodes else list(evaluation["seeds"])
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

    import cv2

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
    height, width = frames[0].shape[:2]
    fps = int(env.metadata.get("render_fps") or 30)
    fourcc = cv2.VideoWriter.fourcc(*"mp4v")
    writer = cv2.VideoWriter(str(path), fourcc, fps, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return len(frames)


CHAMPION = "best"
"""The alias of a registered model's best version."""


def register_champion(client, tracking_uri: str, name: str, model_id: str,
                      source_run_id: str) -> dict[str, Any]:
    """Add the model as a new version of the registered model `name`; move its alias
    `best` to it only when it beats the version holding it on the same evaluation seeds
    (the challenger's run's own), or when none holds it. Returns name, version, moved, and
    both scores."""
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
    new = play(challenger, manifest)["score"]
    client.set_model_version_tag(name, str(version), EVAL_SCORE, str(new))
    out = {"name": name, "version": str(version), "score": new, "champion_score": None}
    try:
        holder = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        holder = None
    if holder is not None:
        champion, _ = load_logged_agent(f"models:/{name}/{holder.version}", tracking_uri)
        old = play(champion, manifest)["score"]  # the same env and seeds
        out["champion_score"] = old
        out["champion_version"] = str(holder.version)
        if not new > old:
            out["moved"] = False
            return out
    client.set_registered_model_alias(name, CHAMPION, str(version))
    out["moved"] = True
    return out
