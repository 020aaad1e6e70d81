"""python -m pipelines.train [overrides]: one run, as one Tune trial, logged to MLflow."""

from __future__ import annotations

from pipelines.cli import exit_with, run_main
from pipelines.config import UserError, parse_overrides

SUMMARY = "Train one configuration as a single Tune trial, recorded as one MLflow run."
EXAMPLES = [
    "experiment=taxi_course",
    "algo=q_learning env=frozenlake_slippery algo.episodes=20000 seed=3",
    "experiment=taxi_course tracking.uri=http://127.0.0.1:5000",
    "experiment=cartpole_dqn algo.num_rollout_workers=1",
    "resume=train-pong_dqn-20261128-120000",
    "-m experiment=taxi_course 'seed=range(0,3)'   # a sweep, as Hydra's multirun",
    "experiment=cartpole_dqn --cfg job --resolve",
]


def _body(args: list[str]) -> int:
    from pipelines import runner
    from pipelines.space import plan_sweep

    parsed = parse_overrides(args)
    for o in parsed:
        if o.is_sweep_override():
            raise UserError(
                f"{o.input_line}: a sweep expression; run sweeps with python -m pipelines.sweep"
            )
        if o.key_or_group.startswith("sweep"):
            raise UserError(f"{o.input_line}: sweep settings belong to python -m pipelines.sweep")
    if any(o.key_or_group == "resume" for o in parsed):
        from pipelines.sweep import resume_from

        return resume_from(parsed)
    return runner.launch(plan_sweep(args, sweep_params=False), kind="train")


def _multirun(args: list[str]) -> int:
    """-m/--multirun: the overrides run as a sweep, as Hydra's multirun would."""
    from pipelines.sweep import sweep_body

    return sweep_body(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point (its exit code)."""
    return run_main("pipelines.train", SUMMARY, EXAMPLES, _body, argv, multirun=_multirun)


def command() -> None:
    """The process: python -m pipelines.train, or the rlpipe-train command."""
    exit_with(main())


if __name__ == "__main__":
    command()
