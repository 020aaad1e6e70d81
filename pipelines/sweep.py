"""python -m pipelines.sweep [sweep=<name>] [overrides]: a Ray Tune sweep, tracked in MLflow.

Any override whose value is a sweep expression is a search dimension; the rest are fixed.
`resume=<sweep.name>` continues a stopped sweep.
"""

from __future__ import annotations

import time

from pipelines.cli import exit_with, run_main

SUMMARY = (
    "Run a Ray Tune sweep: one trial per configuration, one MLflow child run per trial\n"
    "under one parent run. Sweep expressions: a,b  choice(a,b)  range(0,4)\n"
    "interval(0.1,0.9)  tag(log,interval(1e-4,1e-2)); search: sweep.search=auto|grid|\n"
    "random|optuna, sweep.num_samples=N, sweep.scheduler.name=asha."
)
EXAMPLES = [
    "sweep=quickstart",
    "experiment=taxi_course 'algo.lr=0.1,0.4,0.7' 'seed=range(0,3)'",
    "sweep=taxi_lr sweep.num_samples=8",
    "experiment=taxi_course 'algo.lr=tag(log,interval(0.05,1))' sweep.search=optuna "
    "sweep.num_samples=20",
    "resume=quickstart-20261128-120000",
]


def main(argv: list[str] | None = None) -> int:
    """Entry point (its exit code)."""
    started = time.time()

    def sweep(args: list[str]) -> int:
        from pipelines.tune import driver as runner

        return runner.sweep(args, started)

    return run_main("pipelines.sweep", SUMMARY, EXAMPLES, sweep, argv, multirun=sweep)


def command() -> None:
    """The process: python -m pipelines.sweep, or the rlpipe-sweep command."""
    exit_with(main())


if __name__ == "__main__":
    command()
