"""python -m pipelines.evaluate evaluate.run_id=<id>: a logged model plays, greedily.

The run's own logged config says which algorithm, env and evaluation seeds; the model
comes from the run's artifacts. Runs in this process: no Ray is needed to play.
"""

from __future__ import annotations

import json

from pipelines.cli import exit_with, run_main
from pipelines.config import UserError, compose_config, parse_overrides

SUMMARY = "Play the model logged by an MLflow run and print its evaluation returns."
EXAMPLES = [
    "evaluate.run_id=0123456789abcdef",
    "evaluate.run_id=0123456789abcdef evaluate.episodes=20 evaluate.record=true",
    "evaluate.run_id=0123456789abcdef tracking.uri=http://127.0.0.1:5000",
]


def _body(args: list[str]) -> int:
    from pipelines.models import play
    from pipelines.tracking import readable_store

    for o in parse_overrides(args):
        if o.is_sweep_override():
            raise UserError(f"{o.input_line}: a sweep expression; evaluate plays one run")
    cfg = compose_config(args).cfg
    if not cfg.evaluate.run_id:
        raise UserError("evaluate.run_id: required, the MLflow run whose model plays")
    uri = readable_store(cfg.tracking.uri)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(uri)
    try:
        run = client.get_run(cfg.evaluate.run_id)
    except MlflowException:
        raise UserError(
            f"evaluate.run_id={cfg.evaluate.run_id}: no such run in {uri}"
        ) from None
    try:
        result = play(uri, run.info.run_id, cfg.evaluate.episodes)
    except (FileNotFoundError, OSError, MlflowException):
        raise UserError(f"evaluate.run_id={cfg.evaluate.run_id}: the run logged no model "
                        "(did it finish?)") from None
    if cfg.evaluate.record:
        from pipelines.tracking import RunLogger

        RunLogger(uri, run.info.run_id, 0).log_metrics(
            {f"evaluate/{k}": v for k, v in result.items() if isinstance(v, float)}
        )
    print(json.dumps({"run_id": run.info.run_id, **result}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point (its exit code)."""
    return run_main("pipelines.evaluate", SUMMARY, EXAMPLES, _body, argv)


def command() -> None:
    """The process: python -m pipelines.evaluate, or the rlpipe-evaluate command."""
    exit_with(main())


if __name__ == "__main__":
    command()
