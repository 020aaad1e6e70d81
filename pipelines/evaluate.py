"""python -m pipelines.evaluate evaluate.model=<model URI> (or evaluate.run_id=<run>): a
logged agent plays, greedily, and the result is recorded as a run of its own.

The model is an mlflow.pyfunc model of data (pipelines.tracking.models); its manifest says which
algorithm, env and evaluation seeds it was trained and evaluated with. Runs in this
process: no Ray is needed to play.
"""

from __future__ import annotations

import json

from algos.core.metrics import EVAL_MEAN_RETURN, EVAL_SCORE, EVAL_STD_RETURN
from pipelines.cli import exit_with, run_main
from pipelines.config.compose import UserError, compose_config, parse_overrides

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

    from pipelines.tracking.models import run_model_uri

    if run_id:
        try:
            return run_model_uri(client, run_id, "best")
        except MlflowException:
            raise UserError(f"evaluate.run_id={run_id}: no such run in {uri}") from None
        except FileNotFoundError:
            raise UserError(f"evaluate.run_id={run_id}: the run logged no model (did it "
                            "finish?)") from None
    if not model:  # check_model_arg refuses this first
        raise UserError("evaluate.model: required, or evaluate.run_id")
    return model


def check_model_arg(model: str | None, run_id: str | None, key: str = "evaluate") -> None:
    """Bad input (UserError) when neither is given, or the model is not a model URI;
    `key`: the config group that holds them (evaluate, package)."""
    if not model and not run_id:
        raise UserError(f"{key}.model: required (models:/<name>@<alias>, models:/<model "
                        "id>, runs:/<run id>/best)" + (", or evaluate.run_id"
                                                        if key == "evaluate" else ""))
    if model and not model.startswith(("models:/", "runs:/")):
        raise UserError(f"{key}.model={model}: not a model URI; allowed: "
                        "models:/<name>@<alias>, models:/<name>/<version>, "
                        "models:/<model id>, runs:/<run id>/<path>")


def _body(args: list[str]) -> int:
    import tempfile
    from pathlib import Path

    from algos.core.agents import AgentFileError
    from pipelines.results.play import play
    from pipelines.tracking.models import load_logged_agent
    from pipelines.tracking.uri import readable_store

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
    try:
        agent, manifest = load_logged_agent(model_uri, uri)
    except (LookupError, AgentFileError) as e:
        raise UserError(f"evaluate.model={model_uri}: {e}") from None
    env = manifest["env"]
    if any(o.key_or_group.split(".")[0] == "env" for o in parsed):
        given = composed.container["env"]
        if given["id"] != env["id"] or given.get("kwargs") != env.get("kwargs"):
            raise UserError(f"env={composed.choices.get('env')}: the model was trained on "
                            f"{env['id']} {env.get('kwargs') or ''}".rstrip() +
                            "; leave env out to play it on its own")
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "episode.mp4" if cfg.evaluate.video else None
        result = play(agent, manifest, cfg.evaluate.episodes, cfg.evaluate.seed, video)
        seeds = result.pop("seeds")
        figures = dict(result)
        logger = _record(uri, cfg, model_uri, manifest, seeds, figures)
        if video is not None:
            logger.log_artifact(video)
    logger.finish("FINISHED")
    print(json.dumps({"model": model_uri, "run_id": logger.run_id, **figures}))
    return 0


def _record(uri, cfg, model_uri: str, manifest, seeds, figures):
    """The evaluation's own run: tagged with the model and its source run, eval/*."""
    import uuid

    from pipelines.tracking.run_logger import RunLogger, get_or_create_experiment

    source = manifest.get("source_run_id")
    experiment = cfg.tracking.experiment or "evaluations"
    logger = RunLogger.create(
        uri, get_or_create_experiment(uri, experiment), f"evaluate/{uuid.uuid4().hex}",
        run_name=f"evaluate {manifest['algo']} {manifest.get('model', '')}".strip(),
        tags={"rlpipe.kind": "evaluate", "model_uri": model_uri, "algo": manifest["algo"],
              "env": manifest["env"]["id"],
              **({"source_run_id": source} if source else {})},
        params={"evaluate.episodes": len(seeds), "evaluate.seeds": json.dumps(seeds)[:6000]},
    )
    logger.log_metrics({EVAL_MEAN_RETURN: figures["mean_return"],
                        EVAL_STD_RETURN: figures["std_return"], EVAL_SCORE: figures["score"]})
    return logger


def main(argv: list[str] | None = None) -> int:
    """Entry point (its exit code)."""
    return run_main("pipelines.evaluate", SUMMARY, EXAMPLES, _body, argv)


def command() -> None:
    """The process: python -m pipelines.evaluate, or the rlpipe-evaluate command."""
    exit_with(main())


if __name__ == "__main__":
    command()
