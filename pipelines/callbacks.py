"""The driver's Tune callback: keeps MLflow's view of each trial true when the trial's
own process could not (a killed worker, a scheduler stop, a Ctrl+C)."""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections import deque

from ray import tune

from algos.core.metrics import ENV_STEPS, EPISODE_RETURN_MEAN
from pipelines import private_api
from pipelines.tracking import RunLogger, find_run, set_run_status
from pipelines.trial import TrialContext, run_key

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
            run = find_run(ctx.tracking_uri, ctx.experiment_id, run_key(ctx, trial.trial_id))
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
        self._mark(trial, "FINISHED", {"tune.stopped_early": "true"})


class ProgressCallback(tune.Callback):
    """A compact live status, one line every progress.every_s seconds (and one at the end).

    A sweep: trials done, running and pending; per env the best configuration so far (IQM
    of its finished trials' last reports); the time elapsed and the time left. A single
    run: the budget done (env steps or episodes), the recent return, the last value of the
    metric, the time left. Running trials count with the share of their budget done: from
    their progress notes between reports (TrialReporter.progress), so the line moves with
    the work, not only at reports. The time left is the work left at the rate of the last
    RATE_WINDOW_S seconds.
    """

    RATE_WINDOW_S = 60.0

    def __init__(self, ctx: TrialContext) -> None:
        self.ctx = ctx
        self.every_s = ctx.settings.progress.every_s
        self.total_trials = ctx.settings.trials
        self.budget = ctx.settings.budget
        self.started = time.monotonic()
        self.last_line = 0.0
        self.work: deque[tuple[float, float]] = deque()
        """(time, work done) of the recent lines, for the rate."""
        self._env_of: dict[str, str] = {}

    def setup(self, **info) -> None:  # type: ignore[override]  # Tune passes keywords
        """Tune starts: the clock starts."""
        self.started = self.last_line = time.monotonic()

    def on_step_end(self, iteration, trials, **info) -> None:
        """Called on every turn of Tune's loop: print when a line is due."""
        now = time.monotonic()
        if self.every_s and now - self.last_line >= self.every_s:
            self.last_line = now
            print(self.line(trials, now), flush=True)

    def on_experiment_end(self, trials, **info) -> None:
        """The last line."""
        if self.every_s:
            print(self.line(trials, time.monotonic()), flush=True)

    def _env(self, trial, label: str) -> str:
        """The env option a configuration trains on (composed once per configuration)."""
        if label not in self._env_of:
            from pipelines.config import compose_config
            from pipelines.trial import trial_overrides

            try:
                composed = compose_config(trial_overrides(self.ctx, trial.config))
                self._env_of[label] = composed.choices.get("env") or "?"
            except Exception:  # a status line must never stop the sweep
                self._env_of[label] = "?"
        return self._env_of[label]

    def _best_so_far(self, done) -> str:
        import math

        import numpy as np

        from pipelines.space import config_label
        from pipelines.stats import iqm

        metric, mode = self.ctx.settings.metric, self.ctx.settings.mode
        values: dict[tuple[str, str], list[float]] = {}
        for t in done:
            value = (t.last_result or {}).get(metric)
            if isinstance(value, int | float) and math.isfinite(value):
                label = config_label(f"{k}={v}" for k, v in (t.config or {}).items())
                values.setdefault((self._env(t, label), label), []).append(float(value))
        best: dict[str, tuple[float, str, int]] = {}
        for (env, label), xs in values.items():
            score = float(iqm(np.array(xs)))
            better = env not in best or (score > best[env][0] if mode == "max"
                                         else score < best[env][0])
            if better:
                best[env] = (score, label, len(xs))
        return "; ".join(f"{env} {label} {score:.4g} (n={n})"
                         for env, (score, label, n) in sorted(best.items()))

    def _done(self, trial) -> float:
        """The share of a running trial's budget done: its newest progress note, or its
        last report's."""
        from pipelines.trial import PROGRESS_KEY

        reported = (trial.last_result or {}).get(PROGRESS_KEY, 0.0)
        try:
            note = private_api.kv_get(self.ctx.progress_key(trial.trial_id))
            return max(reported, float(json.loads(note)["done"])) if note else reported
        except Exception:  # a status line must never stop the sweep
            return reported

    def _left(self, now: float, work: float, total: float) -> str:
        """The time left: the work left at the rate of the recent lines (none at the first
        line: a resumed sweep starts with work done before it)."""
        self.work.append((now, work))
        while len(self.work) > 2 and now - self.work[1][0] >= self.RATE_WINDOW_S:
            self.work.popleft()
        then, before = self.work[0]
        rate = (work - before) / (now - then) if now > then else 0.0
        return f"~{(total - work) / rate:.0f}s left" if rate > 0 and work < total else ""

    def line(self, trials, now: float) -> str:
        """The status line."""
        elapsed = now - self.started
        done = [t for t in trials if t.status in ("TERMINATED", "ERROR")]
        running = [t for t in trials if t.status == "RUNNING"]
        total = max(self.total_trials, len(trials))
        shares = {t.trial_id: self._done(t) for t in running}
        left = self._left(now, len(done) + sum(shares.values()), total)
        head = f"[{elapsed:6.0f}s]"
        if self.ctx.settings.kind == "train" and len(trials) == 1:
            trial = trials[0]
            result = trial.last_result or {}
            share = 1.0 if trial in done else shares.get(trial.trial_id, 0.0)
            counter, budget = self.budget
            unit = "env steps" if counter == ENV_STEPS else counter.split("/")[-1]
            parts = [f"{share * budget:,.0f}/{budget:,.0f} {unit} ({share:.0%})"]
            if EPISODE_RETURN_MEAN in result:
                parts.append(f"recent return {result[EPISODE_RETURN_MEAN]:.4g}")
            metric = self.ctx.settings.metric
            if metric in result:
                parts.append(f"{metric} {result[metric]:.4g}")
            return " | ".join([head + " " + parts[0], *parts[1:], left]).rstrip(" |")
        pending = len(trials) - len(done) - len(running) + max(0, total - len(trials))
        parts = [f"{head} trials {len(done)}/{total} done, {len(running)} running, "
                 f"{pending} pending"]
        best = self._best_so_far(done)
        if best:
            parts.append(f"best so far: {best}")
        if left:
            parts.append(left)
        return " | ".join(parts)
