"""How far a trial is, while it runs: its share of its budget, in its Tune results and,
between reports, as a note in the cluster's key-value store, where the driver's status
line (pipelines.tune.status_line) reads it."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from algos.core.metrics import ENV_STEPS
from pipelines import private_api
from pipelines.tracking.series import PROGRESS

log = logging.getLogger("rlpipe")


def note_key(uid: str, trial_id: str) -> str:
    """Where a trial of the launch `uid` leaves its progress between reports ('' for the
    trial: the prefix of them all)."""
    return f"progress/{uid}/{trial_id}"


class ProgressNotes:
    """A trial's share of its training budget: in each Tune result (PROGRESS), and between
    reports where the driver's status line reads it. Never fails the trial."""

    def __init__(self, budget: tuple[str, float], key: str | None) -> None:
        self.counter, self.total = budget
        """The metric that counts toward the budget, and the budget."""
        self.key = key
        """Where notes go between reports (None: nowhere)."""

    def share(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        """The share done at a report, as a Tune result's key (none without a budget)."""
        if self.total <= 0:
            return {}
        done = step if self.counter == ENV_STEPS else metrics.get(self.counter)
        return {} if done is None else {PROGRESS: min(1.0, float(done) / self.total)}

    def note(self, done: float) -> None:
        """Leave `done` (of the budget) in the cluster's key-value store."""
        if self.key is None or self.total <= 0:
            return
        try:
            private_api.kv_put(self.key, json.dumps(
                {"done": min(1.0, float(done) / self.total)}).encode())
        except Exception as e:  # a status line must never stop training
            log.debug("progress note not written: %s", e)


def clear_notes(uid: str) -> None:
    """Remove the launch's progress notes (a remote cluster outlives the launch)."""
    try:
        private_api.kv_delete(note_key(uid, ""))
    except Exception as e:  # the notes are a status line's: never fail over them
        log.debug("progress notes not removed: %s", e)
