"""The driver's status line: one compact line every progress.every_s seconds, read from
Tune's trials and the trials' progress notes (pipelines.tune.progress)."""

from __future__ import annotations

import json
import math
import time
from collections import deque

from ray import tune

from algos.core.metrics import ENV_STEPS, EPISODE_RETURN_MEAN
from pipelines import private_api
from pipelines.tracking.series import PROGRESS
from pipelines.tune.context import TrialContext
from pipelines.tune.progress import note_key


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
        """The env option a configuration trains on (the plan's config, or composed once
        per configuration)."""
        if label not in self._env_of:
            try:
                self._env_of[label] = self.ctx.composed(trial.config).choices.get("env") or "?"
            except Exception:  # a status line must never stop the sweep
                self._env_of[label] = "?"
        return self._env_of[label]

    def _best_so_far(self, done) -> str:
        import numpy as np

        from pipelines.config.space import config_label
        from pipelines.results.stats import iqm

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
        reported = (trial.last_result or {}).get(PROGRESS, 0.0)
        try:
            note = private_api.kv_get(note_key(self.ctx.uid, trial.trial_id))
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
