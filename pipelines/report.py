"""python -m pipelines.report report.sweep=<name>: a sweep's summary, read from MLflow.

Works on a finished sweep, an interrupted one and one still running (its trials' last
reports so far). Prints the per-configuration table and logs the summary again on the
sweep's parent run (summary.json, summary.csv, the plots, the best configuration of each
env). Reads MLflow only: no Ray starts.
"""

from __future__ import annotations

from algos.core.metrics import EVAL_SCORE
from pipelines.cli import exit_with, run_main
from pipelines.config import UserError, compose_config, parse_overrides

SUMMARY = ("Summarize a sweep from MLflow: per configuration and env, IQM, mean and 95% CI "
           "over its seeds,\nranked within each env; logged again on the sweep's parent run.")
EXAMPLES = [
    "report.sweep=quickstart-20261128-120000",
    "report.sweep=taxi-lr tracking.uri=http://127.0.0.1:5000",
]
SWEEP_KIND = "tags.`rlpipe.kind` = 'sweep'"


def sweep_parents(client) -> list:
    """Every sweep's parent run in the store, newest first."""
    ids, token = [], None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            break
    runs = []
    for i in range(0, len(ids), 100):  # the store's limit on experiments per search
        token = None
        while True:
            page = client.search_runs(ids[i:i + 100], filter_string=SWEEP_KIND,
                                      max_results=1000, page_token=token,
                                      order_by=["attributes.start_time DESC"])
            runs += list(page)
            token = page.token
            if not token:
                break
    return sorted(runs, key=lambda r: r.info.start_time, reverse=True)


def find_sweep(client, name: str):
    """The newest parent run of the sweep `name`; bad input naming the sweeps there are
    when there is none."""
    parents = sweep_parents(client)
    for run in parents:
        if run.data.tags.get("sweep") == name:
            return run
    names = list(dict.fromkeys(r.data.tags.get("sweep", r.info.run_name) for r in parents))
    shown = ", ".join(names[:20]) + (f" (and {len(names) - 20} more)" if len(names) > 20 else "")
    raise UserError(f"report.sweep={name}: no sweep of that name; sweeps there: "
                    f"{shown or 'none'}")


def _body(args: list[str]) -> int:
    from pipelines.summary import summarize_sweep
    from pipelines.tracking import RunLogger
    from pipelines.tracking_uri import readable_store, run_url

    for o in parse_overrides(args):
        if o.is_sweep_override():
            raise UserError(f"{o.input_line}: a sweep expression; report reads one sweep")
    cfg = compose_config(args).cfg
    if not cfg.report.sweep:
        raise UserError("report.sweep: required, the name of the sweep to summarize")
    uri = readable_store(cfg.tracking.uri)
    from mlflow import MlflowClient

    parent = find_sweep(MlflowClient(uri), cfg.report.sweep)
    params = parent.data.params
    metric, mode = params.get("sweep.metric", EVAL_SCORE), params.get("sweep.mode", "max")
    experiment_id = parent.info.experiment_id
    logger = RunLogger(uri, parent.info.run_id, 0)
    print(f"Sweep {cfg.report.sweep} ({parent.info.status}), run "
          f"{run_url(uri, experiment_id, parent.info.run_id)}")
    _, text = summarize_sweep(logger, experiment_id, metric, mode,
                              ui_run=lambda run_id: run_url(uri, experiment_id, run_id))
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point (its exit code)."""
    return run_main("pipelines.report", SUMMARY, EXAMPLES, _body, argv)


def command() -> None:
    """The process: python -m pipelines.report, or the rlpipe-report command."""
    exit_with(main())


if __name__ == "__main__":
    command()
