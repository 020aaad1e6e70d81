"""python -m pipelines.train [overrides]: one run, as one Tune trial, logged to MLflow."""

from __future__ import annotations

import time

from pipelines.cli import exit_with, run_main

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


def main(argv: list[str] | None = None) -> int:
    """Entry point (its exit code)."""
    started = time.time()

    def train(args: list[str]) -> int:
        from pipelines.tune import driver as runner

        return runner.train(args, started)

    def multirun(args: list[str]) -> int:  # -m: the overrides run as a sweep, as Hydra's
        from pipelines.tune import driver as runner

        return runner.sweep(args, started)

    return run_main("pipelines.train", SUMMARY, EXAMPLES, train, argv, multirun=multirun)


def command() -> None:
    """The process: python -m pipelines.train, or the rlpipe-train command."""
    exit_with(main())


if __name__ == "__main__":
    command()
