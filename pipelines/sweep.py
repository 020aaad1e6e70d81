"""python -m pipelines.sweep [sweep=<name>] [overrides]: a Ray Tune sweep, tracked in MLflow.

Any override whose value is a sweep expression is a search dimension; the rest are fixed.
`resume=<sweep.name>` continues a stopped sweep.
"""

from __future__ import annotations

from pipelines.cli import exit_with, run_main
from pipelines.config import UserError, compose_config, parse_overrides

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


def sweep_body(args: list[str]) -> int:
    """Run the sweep the overrides describe (or resume one)."""
    from pipelines import runner
    from pipelines.space import plan_sweep

    parsed = parse_overrides(args)
    if any(o.key_or_group == "resume" for o in parsed):
        return resume_from(parsed)
    return runner.launch(plan_sweep(args), kind="sweep")


def resume_from(parsed) -> int:
    """Resume the Tune run named by `resume=`; only cluster.* may come with it."""
    from pipelines import runner

    others = [o.input_line for o in parsed
              if o.key_or_group != "resume" and not o.key_or_group.startswith("cluster")]
    if others:
        raise UserError(
            f"{others[0]}: a resumed run keeps its own settings; only cluster.* "
            "may be given with resume="
        )
    composed = compose_config([o.input_line for o in parsed])
    return runner.resume(composed.cfg.resume, composed.cfg.cluster)


def main(argv: list[str] | None = None) -> int:
    """Entry point (its exit code)."""
    return run_main("pipelines.sweep", SUMMARY, EXAMPLES, sweep_body, argv,
                    multirun=sweep_body)


def command() -> None:
    """The process: python -m pipelines.sweep, or the rlpipe-sweep command."""
    exit_with(main())


if __name__ == "__main__":
    command()
