"""The driver's Tune callback: keeps MLflow's view of each trial true when the trial's
own process could not (a killed worker, a scheduler stop, a Ctrl+C)."""

from __future__ import annotations

import logging
import signal
import threading

from ray import tune

from pipelines.tracking.run_logger import RunLogger, find_run, set_run_status
from pipelines.tune.context import TrialContext
from pipelines.tune.outcome import STOPPED_EARLY_TAG

log = logging.getLogger("rlpipe")
INTERRUPTED = threading.Event()
"""Set when the user stopped the Tune run with Ctrl+C (SIGINT) or SIGUSR1."""


def watch_for_interrupt() -> None:
    """Note a Ctrl+C (or SIGUSR1) that Tune turns into a graceful stop.

    Tune's handler, installed before its callbacks are set up, stops the run and saves its
    state, but afterwards every stopped trial reads TERMINATED, so the driver could not tell
    an interrupted sweep from a finished one. This wraps that handler to set a flag first.
    """
    INTERRUPTED.clear()
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGINT, signal.SIGUSR1):
        tune_handler = signal.getsignal(signum)
        if not callable(tune_handler):
            continue

        def handler(sig, frame, _tune_handler=tune_handler):
            INTERRUPTED.set()
            _tune_handler(sig, frame)

        signal.signal(signum, handler)


class MlflowStatusCallback(tune.Callback):
    """Marks a trial's MLflow run FAILED when the trial errored, and FINISHED (stopped
    early) when Tune completed it while the run still read RUNNING."""

    def __init__(self, ctx: TrialContext) -> None:
        self.ctx = ctx

    def setup(self, **info) -> None:  # type: ignore[override]  # Tune passes keywords
        """Called by Tune once its own signal handler is in place."""
        watch_for_interrupt()

    def _mark(self, trial, status: str, tags: dict[str, str] | None = None) -> None:
        ctx = self.ctx
        try:
            run = find_run(ctx.tracking_uri, ctx.experiment_id, ctx.run_key(trial.trial_id))
            if run is not None and run.info.status == "RUNNING":
                if tags:
                    RunLogger(ctx.tracking_uri, run.info.run_id, 0).set_tags(tags)
                set_run_status(ctx.tracking_uri, run.info.run_id, status)
        except Exception as e:  # bookkeeping must never stop the sweep
            log.warning("could not update the MLflow run of trial %s: %s", trial, e)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        """The trial failed (it may still be retried from its checkpoint)."""
        self._mark(trial, "FAILED")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        """The trial ended without error."""
        if INTERRUPTED.is_set():
            return  # stopped by Ctrl+C, not by the scheduler: it resumes later
        self._mark(trial, "FINISHED", {STOPPED_EARLY_TAG: "true"})
