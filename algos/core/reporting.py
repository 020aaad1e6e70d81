"""How an algorithm tells the outside world what it did, without knowing who listens.

The pipelines pass a reporter that forwards to Ray Tune and MLflow; a notebook or a unit
test passes :class:`MemoryReporter` or nothing at all. :class:`Reports` is the step every
training loop takes at its report points: evaluate, keep the best, checkpoint, report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from algos.core import metrics as m

PROGRESS_EVERY_S = 1.0
"""Least seconds between two progress notes of a run (Reporter.progress)."""


class Reporter(Protocol):
    """Receives an algorithm's progress. `step` is always env steps sampled so far."""

    def report(self, step: int, metrics: Mapping[str, float],
               history: Mapping[str, Sequence[tuple]] | None = None,
               state: Mapping[str, Any] | None = None, final: bool = False,
               agent: Callable[[], Any] | None = None) -> None:
        """Record `metrics` at `step`.

        history: finer-grained points since the last report, per metric, as (step, value)
            or (step, value, wall time it was produced at, time.time()) (e.g. every
            finished episode's return, stamped at the episode's end).
        state: everything needed to continue from here, as passed back to the algorithm's
            `train(..., state=...)`; the listener decides whether to checkpoint it.
        final: this is the run's last report.
        agent: builds the agent as it is at this report (algos.core.agents), for a
            listener that records it acting (a video); only called if it does.
        """

    def progress(self, step: int, done: float) -> None:
        """How far the run is between reports: `done` of its budget (env steps or
        episodes, the unit the algorithm counts its budget in) at env step `step`.
        Optional: a reporter without it hears only the reports."""


@dataclass
class MemoryReporter:
    """Keeps every report in memory: for tests and notebooks."""

    reports: list[dict[str, Any]] = field(default_factory=list)
    history: dict[str, list[tuple]] = field(default_factory=dict)
    last_state: Mapping[str, Any] | None = None
    progress_notes: list[tuple[int, float]] = field(default_factory=list)
    """(step, done) of every progress note."""

    def report(self, step: int, metrics: Mapping[str, float],
               history: Mapping[str, Sequence[tuple]] | None = None,
               state: Mapping[str, Any] | None = None, final: bool = False,
               agent: Callable[[], Any] | None = None) -> None:
        """Append the report; remember the newest checkpoint state."""
        self.reports.append({"step": step, **metrics})
        for name, points in (history or {}).items():
            self.history.setdefault(name, []).extend(points)
        if state is not None:
            self.last_state = state

    def progress(self, step: int, done: float) -> None:
        """Append the note."""
        self.progress_notes.append((step, done))


class NullReporter:
    """Discards everything."""

    def report(self, step, metrics, history=None, state=None, final=False,
               agent=None) -> None:
        """Do nothing."""

    def progress(self, step: int, done: float) -> None:
        """Do nothing."""


@dataclass
class BestEvaluation:
    """A run's best evaluation so far (by eval/score) and the agent's weights there, as
    SB3's EvalCallback keeps best_model; carried through checkpoints (state/restore)."""

    score: float = -math.inf
    step: int = -1
    weights: Any = None

    def offer(self, score: float, step: int, weights: Callable[[], Any]) -> None:
        """Keep `weights()` (a copy) when `score` beats the best so far."""
        if math.isfinite(score) and score > self.score:
            self.score, self.step, self.weights = score, step, weights()

    def state(self) -> dict[str, Any]:
        """Plain data for a checkpoint."""
        return asdict(self)

    @classmethod
    def restore(cls, state: Mapping[str, Any] | None) -> BestEvaluation:
        """From state() (a checkpoint without one: nothing kept yet)."""
        return cls(**state) if state else cls()


def _takes_agent(reporter: Any) -> bool:
    """Whether the reporter's report() takes the keyword `agent`."""
    import inspect

    try:
        parameters = inspect.signature(reporter.report).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "agent" or p.kind is p.VAR_KEYWORD for p in parameters)


class Reports:
    """When a run reports, what every report does, and what it counts in between.

    A run reports every `every` units of its budget (env steps or episodes) and once more
    at its end (`total`). A report evaluates the agent (`evaluate() -> (mean, std,
    returns)`), keeps the weights of the best evaluation (`weights()`, a copy), adds the
    throughput since the last report and the returns of the episodes that ended since,
    and hands the metrics and the checkpoint (with the best evaluation and these metrics
    in it) to the reporter, with `agent()`, which builds the agent as it is. Between
    reports it tells the reporter how far the run is, at most every PROGRESS_EVERY_S
    seconds.
    """

    def __init__(
        self,
        reporter: Reporter | None,
        every: int,
        total: int,
        evaluate: Callable[[], tuple[float, float, list[float]]],
        weights: Callable[[], Any],
        position: int = 0,
        state: Mapping[str, Any] | None = None,
        agent: Callable[[], Any] | None = None,
    ) -> None:
        self.reporter = reporter or NullReporter()
        self.every, self.total = every, total
        self.evaluate, self.weights = evaluate, weights
        # A reporter written before report() took `agent` (a notebook's) gets none.
        self.agent = agent if _takes_agent(self.reporter) else None
        """Builds the agent as it is now (Reporter.report's `agent`)."""
        self.next = (position // every + 1) * every
        """The budget position of the next report (after `position`, where a resumed run
        resumes)."""
        self.best = BestEvaluation.restore(state.get("best") if state else None)
        self.metrics: dict[str, float] = dict(state.get("metrics", {})) if state else {}
        """The last report's metrics (a run resumed at its end has its last report's)."""
        self.returns: list[tuple[int, float, float]] = []
        """(env step, return, wall time it ended) of the episodes since the last report."""
        self.steps = self.updates = 0
        """Env steps and updates since the last report."""
        self.started = self.last_note = time.perf_counter()
        self.due_at: float | None = None
        """When due() last said a report is due: the end of the training time it counts
        (building the metrics and the checkpoint is not training)."""
        self.note = getattr(self.reporter, "progress", None)

    def episode(self, step: int, episode_return: float, ended_at: float | None = None) -> None:
        """A training episode ended at env step `step` (at wall time `ended_at`: now)."""
        self.returns.append((step, float(episode_return),
                             time.time() if ended_at is None else ended_at))

    def count(self, step: int, position: int, steps: int, updates: int = 0) -> None:
        """Work done: `steps` more env steps (now `step`), `updates` more updates, the
        budget at `position`; a progress note when one is due."""
        self.steps += steps
        self.updates += updates
        now = time.perf_counter()
        if self.note is not None and now - self.last_note >= PROGRESS_EVERY_S:
            self.last_note = now
            self.note(step, position)

    def due(self, position: int) -> bool:
        """Whether the run reports at budget position `position` (the training time since
        the last report stops now)."""
        due = position >= self.next or position >= self.total
        if due:
            self.due_at = time.perf_counter()
        return due

    def report(self, step: int, position: int, metrics: Mapping[str, float],
               checkpoint: Mapping[str, Any]) -> dict[str, float]:
        """Evaluate, keep the best, and report `metrics` with the evaluation's and the
        throughput's at env step `step`, with `checkpoint` (the algorithm's state) and the
        best evaluation as the state to resume from. Returns the metrics reported."""
        seconds = (self.due_at or time.perf_counter()) - self.started
        mean, std, _ = self.evaluate()
        self.best.offer(m.score(mean, std), step, self.weights)
        out = {
            m.ENV_STEPS: float(step),
            **metrics,
            m.EVAL_MEAN_RETURN: mean,
            m.EVAL_STD_RETURN: std,
            m.EVAL_SCORE: m.score(mean, std),
            m.ENV_STEPS_PER_S: self.steps / seconds if seconds > 0 else 0.0,
            m.UPDATES_PER_S: self.updates / seconds if seconds > 0 else 0.0,
        }
        if self.returns:
            out[m.EPISODE_RETURN_MEAN] = sum(r for _, r, _ in self.returns) / len(self.returns)
        while self.next <= position:
            self.next += self.every
        self.reporter.report(step, out, history={m.EPISODE_RETURN: self.returns},
                             state={**checkpoint, "best": self.best.state(), "metrics": out},
                             final=position >= self.total,
                             **({"agent": self.agent} if self.agent else {}))
        self.metrics, self.returns = out, []
        self.steps = self.updates = 0
        self.started = time.perf_counter()  # evaluating and reporting are not training
        self.due_at = None
        return out
