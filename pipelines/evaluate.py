"""python -m pipelines.evaluate evaluate.model=<model URI> (or evaluate.run_id=<run>): a
logged agent plays, greedily, and the result is recorded as a run of its own.

The model is an mlflow.pyfunc model of data (pipelines.models); its manifest says which
algorithm, env and evaluation seeds it was trained and evaluated with. Runs in this
process: no Ray is needed to play.
"""

from __future__ import annotations

import json
import os

from pipelines.cli import exit_with, run_main
from pipelines.config import UserError, compose_config, parse_overrides

SUMMARY = ("Play a logged agent (an MLflow model) greedily; record eval/* in a new MLflow run "
           "tagged with\nthe model and its source run, and print one JSON line.")
EXAMPLES = [
    "evaluate.model=models:/sweeps-taxi@best",
    "evaluate.model=models:/m-0123456789abcdef evaluate.episodes=20 evaluate.seed=100",
    "evaluate.model=runs:/0123456789abcdef/final",
    "evaluate.run_id=0123456789abcdef   # the run's best model",
    "evaluate.run_id=0123456789abcdef tracking.uri=http://127.0.0.1:5000",
]


def resolve_model(client, uri: str, model: str | None, run_id: str | None) -> str:
    """The model URI to play; bad input (UserError) when it does not resolve."""
    from mlflow.exceptions import MlflowException

    from pipelines.models import run_model_uri

    if run_id:
        try:
            return run_model_uri(client, run_id, "best")
        except MlflowException:
            raise UserError(f"evaluate.run_id={run_id}: no such run in {uri}") from None
        except FileNotFoundError:
            raise UserError(f"evaluate.run_id={run_id}: the run logged no model (did it "
                            "finish?)") from None
    return model


def check_model_arg(model: str | None, run_id: str | None) -> None:
    """Bad input (UserError) when neither is given, or the model is not a model URI."""
    if not model and not run_id:
        raise UserError("evaluate.model: required (models:/<name>@<alias>, models:/<model "
                        "id>, runs:/<run id>/best), or evaluate.run_id")
    if model and not model.startswith(("models:/", "runs:/")):
        raise UserError(f"evaluate.model={model}: not a model URI; allowed: "
                        "models:/<name>@<alias>, models:/<name>/<version>, "
                        "models:/<model id>, runs:/<run id>/<path>")


def download_agent(model_uri: str, tracking_uri: str, dst: str):
    """The agent and manifest of a pyfunc model of this project; bad input when the URI
    does not resolve or is not such a model."""
    from pathlib import Path

    import yaml
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    from algos.core.agents import AgentFileError
    from algos.registry import load_agent

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        local = Path(download_artifacts(artifact_uri=model_uri, dst_path=dst,
                                        tracking_uri=tracking_uri))
        flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    except (MlflowException, OSError, KeyError, TypeError) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise UserError(f"evaluate.model={model_uri}: does not resolve to a model of this "
                        f"project ({reason})") from None
    if flavor.get("loader_module") != "pipelines.models":
        raise UserError(f"evaluate.model={model_uri}: not an agent of this project (its "
                        f"loader is {flavor.get('loader_module')})")
    try:
        return load_agent(local / flavor["data"])
    except AgentFileError as e:
        raise UserError(f"evaluate.model={model_uri}: {e}") from None


def _body(args: list[str]) -> int:
    import tempfile
    import uuid

    from algos.core.envs import EnvConfig
    from algos.core.evaluation import play_episodes
    from pipelines.tracking import RunLogger, get_or_create_experiment, readable_store

    parsed = parse_overrides(args)
    for o in parsed:
        if o.is_sweep_override():
            raise UserError(f"{o.input_line}: a sweep expression; evaluate plays one model")
    composed = compose_config(args)
    cfg = composed.cfg
    check_model_arg(cfg.evaluate.model, cfg.evaluate.run_id)
    uri = readable_store(cfg.tracking.uri)
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    model_uri = resolve_model(client, uri, cfg.evaluate.model, cfg.evaluate.run_id)
    with tempfile.TemporaryDirectory() as tmp:
        agent, manifest = download_agent(model_uri, uri, tmp)
    env = manifest["env"]
    if any(o.key_or_group.split(".")[0] == "env" for o in parsed):
        given = composed.container["env"]
        if given["id"] != env["id"] or given.get("kwargs") != env.get("kwargs"):
            raise UserError(f"env={composed.choices.get('env')}: the model was trained on "
                            f"{env['id']} {env.get('kwargs') or ''}".rstrip() +
                            "; leave env out to play it on its own")
    evaluation = manifest["evaluation"]
    if cfg.evaluate.episodes:
        seeds = list(range(cfg.evaluate.seed, cfg.evaluate.seed + cfg.evaluate.episodes))
    else:
        seeds = evaluation["seeds"]
    mean, std, returns = play_episodes(EnvConfig(**env), len(seeds), seeds, agent.act,
                                       evaluation.get("max_steps"))
    figures = {"episodes": len(returns), "mean_return": mean, "std_return": std,
               "score": mean - std}
    source = manifest.get("source_run_id")
    experiment = cfg.tracking.experiment or "evaluations"
    logger = RunLogger.open(
        uri, get_or_create_experiment(uri, experiment), f"evaluate/{uuid.uuid4().hex}",
        run_name=f"evaluate {manifest['algo']} {manifest.get('model', '')}".strip(),
        tags={"rlpipe.kind": "evaluate", "model_uri": model_uri, "algo": manifest["algo"],
              "env": env["id"], **({"source_run_id": source} if source else {})},
        params={"evaluate.episodes": len(seeds), "evaluate.seeds": json.dumps(seeds)[:6000]},
    )
    logger.log_metrics({f"eval/{k}": v for k, v in figures.items() if k != "episodes"})
    logger.finish("FINISHED")
    print(json.dumps({"model": model_uri, "run_id": logger.run_id, **figures}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point (its exit code)."""
    return run_main("pipelines.evaluate", SUMMARY, EXAMPLES, _body, argv)


def command() -> None:
    """The process: python -m pipelines.evaluate, or the rlpipe-evaluate command."""
    exit_with(main())


if __name__ == "__main__":
    command()
