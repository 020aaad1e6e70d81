"""After a launch's fit: a sweep's summary logged on its parent run and each env's best
model registered (in a thread while Ray shuts down), a train run's table, the failed
trials, the runs' states, how to see the results, and the exit code."""

from __future__ import annotations

import logging
import sys
import time
from concurrent.futures import Future

from pipelines.tracking import series
from pipelines.tracking.run_logger import RunLogger, find_run, set_run_status
from pipelines.tracking.uri import run_url, ui_hint
from pipelines.tune.context import TrialContext
from pipelines.tune.replay import replay_line
from pipelines.tune.schedulers import ADAPTIVE

EXIT_INTERRUPTED = 130  # the shell's code for a run stopped by Ctrl+C
STOPPED_EARLY_TAG = "tune.stopped_early"
"""Tag of a trial's run that Tune's scheduler stopped before its budget."""
log = logging.getLogger("rlpipe")


def summarize_and_register(ctx: TrialContext, parent: RunLogger) -> Future:
    """In a thread while Ray shuts down: the sweep's summary (MLflow reads, statistics,
    plots) logged on its parent run, and each env's best model registered. The future's
    result is the text to print."""
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.results.stats import winners
    from pipelines.results.summary import summarize_sweep

    def work() -> str:
        rows, text = summarize_sweep(
            parent, ctx.experiment_id, ctx.settings.metric, ctx.settings.mode,
            ui_run=lambda run_id: run_url(ctx.tracking_uri, ctx.experiment_id, run_id))
        best = winners(rows)
        registered = [register(ctx, env, row.top_run_id, parent) for env, row in best.items()]
        replays = [_replay_line(ctx, row.top_run_id) for row in best.values()]
        return "\n".join([text, *filter(None, registered + replays)])

    worker = ThreadPoolExecutor(1, thread_name_prefix="rlpipe-summary")
    future = worker.submit(work)
    worker.shutdown(wait=False)
    return future


def _replay_line(ctx: TrialContext, run_id: str) -> str | None:
    """For a PBT or PB2 sweep, how to replay the schedule of the member whose run is
    `run_id`."""
    if ctx.settings.scheduler not in ADAPTIVE:
        return None
    from mlflow import MlflowClient

    trial_id = MlflowClient(ctx.tracking_uri).get_run(run_id).data.tags.get("tune.trial_id")
    return replay_line(ctx, trial_id)


def register(ctx: TrialContext, env: str, run_id: str, parent: RunLogger | None) -> str:
    """Register the run's best model as <experiment>-<env option> (the alias best ends on
    the best version of all); tag the parent run; the line that says so. A failure is a
    line too, not an error: the runs are done, logged and FINISHED."""
    from mlflow import MlflowClient

    from pipelines.results.registry import register_champion
    from pipelines.tracking.models import model_tag
    from pipelines.tracking.uri import refusal

    name = f"{ctx.experiment_name}-{env}"
    try:
        client = MlflowClient(ctx.tracking_uri)
        model_id = client.get_run(run_id).data.tags[model_tag("best")]
        out = register_champion(client, ctx.tracking_uri, name, model_id, run_id)
    except Exception as e:
        log.warning("could not register the best model of run %s as %s: %s", run_id, name, e)
        why = (refusal(e, ctx.tracking_uri, f"register versions of {name}")
               or f"{type(e).__name__}: {str(e).splitlines()[0]}")
        return f"Not registered: {why}; the runs are logged and FINISHED"
    verdict = ("now holds the alias best" if out["moved"] else
               f"alias best stays on version {out['champion_version']} "
               f"(test/score {out['champion_score']:.4g})")
    if parent:
        parent.set_tags({f"registered.{env}": f"{name}/{out['version']}",
                         f"registered.{env}.best_moved": str(out["moved"]).lower()})
    return (f"Registered {name} version {out['version']} (test/score {out['score']:.4g} on "
            f"held-out seeds): "
            f"{verdict}. Play it: python -m pipelines.evaluate evaluate.model=models:/{name}@best")


def ended(ctx: TrialContext, parent: RunLogger | None, results, summary: Future | None,
          phases: dict[str, float], clock: float) -> int:
    """A fit that ran to its end: the summary printed and the launch's phases logged on
    the parent (`clock`: when the summary started, time.perf_counter()), then finish."""
    if parent is not None and summary is not None:
        print(_summary_text(ctx, summary))
        phases[series.SUMMARY_S] = time.perf_counter() - clock - phases[series.RAY_SHUTDOWN_S]
        # Where the sweep's time went (benchmarks/sweep_efficiency adds them up).
        parent.log_metrics({**phases, series.TRIALS: len(results)},
                           step=parent.next_step(series.PERF_PREFIX))
    return finish(ctx, parent, results)


def _summary_text(ctx: TrialContext, summary: Future) -> str:
    """What the summary thread made, or why there is none."""
    try:
        return summary.result()
    except Exception as e:  # the trials are done and logged: report, do not fail
        log.exception("the sweep's summary failed")
        return (f"No summary: {type(e).__name__}: {e} (python -m pipelines.report "
                f"report.sweep={ctx.name} tries again)")


def finish(ctx: TrialContext, parent: RunLogger | None, results) -> int:
    """A train run's table and registration, the failed trials, the parent run's status,
    and how to see the runs. The exit code."""
    errors = [r for r in results if r.error is not None]
    failed = [r for r in results
              if r.error is None and (r.metrics or {}).get(series.FAILURE)]
    if parent is None:
        print(_summary_table(results, ctx, ctx.settings.metric))
        if ctx.settings.register and results and not errors and not failed:
            run = find_run(ctx.tracking_uri, ctx.experiment_id,
                           ctx.run_key(results[0].metrics.get("trial_id", "")))
            if run is not None:
                print(register(ctx, ctx.settings.env or "env", run.info.run_id, None))
    for r in errors:
        print(f"Trial failed: {r.path}: {type(r.error).__name__}: {r.error}", file=sys.stderr)
    for r in failed:
        print(f"Trial failed: {_config_text(r, ctx)}: {r.metrics.get(series.FAILURE_MESSAGE)}",
              file=sys.stderr)
    if parent:
        parent.finish("FAILED" if errors or failed else "FINISHED")
    print(ui_hint(ctx.tracking_uri, ctx.experiment_id, ctx.experiment_name))
    return 1 if errors or failed else 0


def interrupted(ctx: TrialContext, parent: RunLogger | None, results) -> int:
    """Tune stopped on Ctrl+C (SIGINT) and saved its state: nothing is lost, the unfinished
    trials continue from their checkpoints on resume. Their runs, and the parent, are
    marked KILLED."""
    unfinished = [r.metrics.get("trial_id") for r in results
                  if r.error is None and r.metrics and not r.metrics.get(series.DONE)]
    for trial_id in filter(None, unfinished):
        run = find_run(ctx.tracking_uri, ctx.experiment_id, ctx.run_key(trial_id))
        if run is not None:
            # The trial's own thread saw a stop and may have called it early-stopped.
            if STOPPED_EARLY_TAG in run.data.tags:
                RunLogger(ctx.tracking_uri, run.info.run_id, 0).client.delete_tag(
                    run.info.run_id, STOPPED_EARLY_TAG)
            set_run_status(ctx.tracking_uri, run.info.run_id, "KILLED", only_if_running=False)
    if parent:
        parent.finish("KILLED")
    print(f"Interrupted with {len(unfinished)} trial(s) unfinished; their state is saved. "
          f"Resume with: python -m pipelines.{ctx.settings.kind} resume={ctx.name}")
    return EXIT_INTERRUPTED


def _config_text(result, ctx: TrialContext) -> str:
    return " ".join(f"{k}={v}" for k, v in (result.config or {}).items()) or ctx.name


def _summary_table(results, ctx: TrialContext, metric: str) -> str:
    rows = []
    for r in results:
        config = _config_text(r, ctx)
        value = (r.metrics or {}).get(metric)
        shown = f"{value:.4g}" if isinstance(value, (int, float)) else "-"
        status = ("ERROR" if r.error is not None else
                  "FAILED" if (r.metrics or {}).get(series.FAILURE) else "done")
        rows.append(f"  {status:6}  {metric}={shown:>8}  {config}")
    return "Trials:\n" + "\n".join(rows)
