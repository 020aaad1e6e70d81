"""python -m pipelines.report report.sweep=<name>: a sweep's summary, read from MLflow;
with report.against=<other> (or report.config and report.against_config), a comparison.

Works on a finished sweep, an interrupted one and one still running (its trials' last
reports so far). Prints the per-configuration table and logs the summary again on the
sweep's parent run (summary.json, summary.csv, the plots, the best configuration of each
env). Reads MLflow only: no Ray starts.
"""

from __future__ import annotations

from algos.core.metrics import EVAL_SCORE
from pipelines.cli import exit_with, run_main
from pipelines.config.compose import UserError, compose_config, parse_overrides

SUMMARY = ("Summarize a sweep from MLflow: per configuration and env, IQM, mean and 95% CI "
           "over its seeds,\nranked within each env, each configuration against the best; "
           "logged again on the sweep's parent run.\nWith report.against (or report.config "
           "and report.against_config): two sweeps, or two configurations,\ncompared into a "
           "run of their own.")
EXAMPLES = [
    "report.sweep=quickstart-20261128-120000",
    "report.sweep=taxi-lr tracking.uri=http://127.0.0.1:5000",
    "report.sweep=taxi-today report.against=taxi-last-week",
    "report.sweep=dqn-ddqn report.config='algo=dqn' report.against_config='algo=ddqn' "
    "report.seeds_for=25",
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


def find_sweep(client, name: str, key: str = "report.sweep"):
    """The newest parent run of the sweep `name`; bad input naming `key` and the sweeps
    there are when there is none."""
    parents = sweep_parents(client)
    for run in parents:
        if run.data.tags.get("sweep") == name:
            return run
    names = list(dict.fromkeys(r.data.tags.get("sweep", r.info.run_name) for r in parents))
    shown = ", ".join(names[:20]) + (f" (and {len(names) - 20} more)" if len(names) > 20 else "")
    raise UserError(f"{key}={name}: no sweep of that name; sweeps there: "
                    f"{shown or 'none'}")


def _body(args: list[str]) -> int:
    from pipelines.results.summary import summarize_sweep
    from pipelines.tracking.run_logger import RunLogger
    from pipelines.tracking.uri import readable_store, run_url

    for o in parse_overrides(args):
        if o.is_sweep_override():
            raise UserError(f"{o.input_line}: a sweep expression; report reads one sweep")
    cfg = compose_config(args).cfg
    if not cfg.report.sweep:
        raise UserError("report.sweep: required, the name of the sweep to summarize")
    uri = readable_store(cfg.tracking.uri)
    from mlflow import MlflowClient

    if cfg.report.against or cfg.report.config or cfg.report.against_config:
        return _versus(MlflowClient(uri), uri, cfg.report)
    parent = find_sweep(MlflowClient(uri), cfg.report.sweep)
    metric, mode = _metric(parent)
    experiment_id = parent.info.experiment_id
    logger = RunLogger(uri, parent.info.run_id, 0)
    print(f"Sweep {cfg.report.sweep} ({parent.info.status}), run "
          f"{run_url(uri, experiment_id, parent.info.run_id)}")
    _, text = summarize_sweep(logger, experiment_id, metric, mode,
                              ui_run=lambda run_id: run_url(uri, experiment_id, run_id),
                              named_difference=cfg.report.seeds_for)
    print(text)
    return 0


def _versus(client, uri: str, report) -> int:
    """report.sweep against report.against (or two configurations of one sweep): the
    comparisons printed and written to a run of their own."""
    from pipelines.results.compare import pair_lines
    from pipelines.results.versus import compare_sides, log_comparison, read_side
    from pipelines.tracking.uri import run_url

    against = report.against or report.sweep
    if not report.against and not (report.config and report.against_config):
        given = "report.config" if report.config else "report.against_config"
        raise UserError(f"{given}: compared with nothing; give report.against=<sweep>, or "
                        f"both report.config and report.against_config")
    if against == report.sweep and not (report.config and report.against_config):
        raise UserError(f"report.against={against}: the sweep itself; name two of its "
                        f"configurations with report.config and report.against_config")
    parent = find_sweep(client, report.sweep)
    other = find_sweep(client, against, key="report.against" if report.against else
                       "report.sweep")
    metric, mode = _metric(parent)
    if _metric(other) != (metric, mode):
        raise UserError(f"report.against={against}: scored by {_metric(other)[0]} "
                        f"({_metric(other)[1]}), {report.sweep} by {metric} ({mode}); "
                        f"compare sweeps of one metric")
    a = read_side(client, "report.sweep", parent, metric, report.config, "report.config")
    b = read_side(client, "report.against" if report.against else "report.sweep", other,
                  metric, report.against_config, "report.against_config")
    comparisons = compare_sides(a, b, mode, report.seeds_for)
    tags = {f"compare.{k}": v for k, v in (("config", report.config),
                                           ("against_config", report.against_config)) if v}
    run_id = log_comparison(uri, a, b, comparisons, metric, tags)
    print(f"{report.sweep} against {against}: {metric} at each trial's last report "
          f"(95% bootstrap intervals)")
    print("\n".join(pair_lines(comparisons)))
    print(f"Written to run {run_url(uri, parent.info.experiment_id, run_id)}")
    return 0


def _metric(parent) -> tuple[str, str]:
    """A sweep's metric and mode."""
    params = parent.data.params
    return params.get("sweep.metric", EVAL_SCORE), params.get("sweep.mode", "max")


def main(argv: list[str] | None = None) -> int:
    """Entry point (its exit code)."""
    return run_main("pipelines.report", SUMMARY, EXAMPLES, _body, argv)


def command() -> None:
    """The process: python -m pipelines.report, or the rlpipe-report command."""
    exit_with(main())


if __name__ == "__main__":
    command()
