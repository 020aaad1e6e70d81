"""How an algorithm tells the outside world what it did, without knowing who listens.

The pipelines pass a reporter that forwards to Ray Tune and MLflow; a notebook or a unit
test passes :class:`MemoryReporter` or nothing at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class Reporter(Protocol):
    """Receives an algorithm's progress. `step` is always env steps sampled so far."""

    def report(
        self,
        step: int,
        metrics: Mapping[str, float],
        history: Mapping[str, Sequence[tuple]] | None = None,
        state: Mapping[str, Any] | None = None,
        final: bool = False,
    ) -> None:
        """Record `metrics` at `step`.

        history: finer-grained points since the last report, per metric, as (step, value)
            or (step, value, wall time it was produced at, time.time()) (e.g. every
            finished episode's return, stamped at the episode's end).
        state: everything needed to continue from here, as passed back to the algorithm's
            `train(..., state=...)`; the listener decides whether to checkpoint it.
        final: this is the run's last report.
        """


@dataclass
class MemoryReporter:
    """Keeps every report in memory: for tests and notebooks."""

    reports: list[dict[str, Any]] = field(default_factory=list)
    history: dict[str, list[tuple]] = field(default_factory=dict)
    last_state: Mapping[str, Any] | None = None

    def report(
        self,
        step: int,
        metrics: Mapping[str, float],
        history: Mapping[str, Sequence[tuple]] | None = None,
        state: Mapping[str, Any] | None = None,
        final: bool = False,
    ) -> None:
        """Append the report; remember the newest checkpoint state."""
        self.reports.append({"step": step, **metrics})
        for name, points in (history or {}).items():
            self.history.setdefault(name, []).extend(points)
        if state is not None:
            self.last_state = state


class NullReporter:
    """Discards everything."""

    def report(self, step, metrics, history=None, state=None, final=False) -> None:
        """Do nothing."""
