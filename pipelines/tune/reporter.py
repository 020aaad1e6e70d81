"""The Reporter an algorithm gets inside a trial (algos.core.reporting.Reporter): each
report goes to Tune at once, so that schedulers and searchers see it, with a checkpoint
when one is due. What else a report touches has a class of its own, handed in whole:
its MLflow points (WriteBuffer), the checkpoint (Checkpointer), the run's counters after
an exploit (StepShift), a replay's schedule (ReplaySchedule), the progress notes
(ProgressNotes) and the videos (EvaluationVideos)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.tracking.buffer import WriteBuffer, downsample
from pipelines.tracking.lineage import StepShift, counters
from pipelines.tracking.series import DONE
from pipelines.tune.checkpoints import Checkpointer
from pipelines.tune.progress import ProgressNotes
from pipelines.tune.replay import ReplaySchedule
from pipelines.tune.videos import EvaluationVideos


@dataclass
class ReportParts:
    """What a trial's reports go to beside Tune."""

    buffer: WriteBuffer
    checkpointer: Checkpointer
    shift: StepShift
    schedule: ReplaySchedule
    notes: ProgressNotes
    videos: EvaluationVideos | None
    max_points: int
    """Most history points a report adds per series (0: all; tracking.max_points_per_report)."""


class TrialReporter:
    """Reports to Tune; MLflow writes are buffered for up to the buffer's flush_every_s.

    A checkpoint waits until the buffer is written: during a tracking outage the trial
    trains on and keeps its checkpoints for after it. The last report waits for the
    tracking server (WriteBuffer.wait) and is told to Tune only after the run's models are
    logged (report_final), as the trial's end."""

    def __init__(self, parts: ReportParts, reports: int, last_step: int) -> None:
        self.parts = parts
        self.reports = reports
        """Reports the algorithm made (a restarted trial's: up to its checkpoint)."""
        self.last_step = last_step
        """The run step of the newest report (a restarted trial's: its checkpoint's)."""
        self.final: tuple[dict[str, Any], Path | None] | None = None
        """The last report's result and checkpoint folder, until report_final."""
        self.seconds = {"checkpoint": 0.0, "report_wait": 0.0}
        """Time in tune.report: with a checkpoint, or waiting for the driver."""

    def progress(self, step: int, done: float) -> None:
        """Between reports: the share of the budget done, for the driver's status line."""
        self.parts.notes.note(done)

    def report(self, step: int, metrics: Mapping[str, float],
               history: Mapping[str, Sequence[tuple]] | None = None,
               state: Mapping[str, Any] | None = None, final: bool = False,
               agent: Callable[[], Any] | None = None) -> None:
        """Buffer for MLflow; a video when one is due; tune.report, with a checkpoint when
        one is due."""
        parts = self.parts
        # Tune (and its schedulers) sees the algorithm's counters; the run logs the
        # member's own, which differ after an exploit (pipelines.tracking.lineage).
        result = {**metrics, **parts.notes.share(step, metrics)}
        own = counters(step, metrics)
        history = dict(history or {})
        if parts.shift.by:
            step, metrics, history = parts.shift.report(step, metrics, history)
        self.last_step = step
        parts.buffer.add(parts.buffer.logger.report_points(
            step, metrics, {k: downsample(v, parts.max_points) for k, v in history.items()}))
        if parts.videos is not None and agent is not None:
            parts.videos.record(self.reports + 1, step, agent)
        folder = self._checkpoint(step, state, own, final)
        self.reports += 1
        if final:
            # Told to Tune once the models are logged (report_final), as done: the trial
            # ends there, and no scheduler acts on it (a stop at max_t, an exploit).
            self.final = ({**result, DONE: True}, folder)
            return
        self._tell_tune(result, folder)
        parts.schedule.after(self.reports, state, saved=folder is not None)

    def _checkpoint(self, step: int, state: Mapping[str, Any] | None,
                    own: dict[str, float], final: bool) -> Path | None:
        """Flush when due, and keep a checkpoint when one is due and everything is
        written (during an outage: after it); the last report waits for the server."""
        parts = self.parts
        due = state is not None and parts.checkpointer.due(final)
        written = parts.buffer.flush() if due or final or parts.buffer.due() else False
        if final and not written:
            parts.buffer.wait()
            written = True
        if not (due and written and state is not None):
            return None
        return parts.checkpointer.save(state, step, own, dict(parts.shift.by),
                                       self.reports + 1)

    def report_final(self) -> None:
        """Give Tune the run's last report, held since the algorithm made it."""
        if self.final is not None:
            result, folder = self.final
            self.final = None
            self._tell_tune(result, folder)

    def _tell_tune(self, result: dict[str, Any], folder: Path | None) -> None:
        """tune.report, with the checkpoint in `folder` (removed after) when there is one.
        Raises SystemExit when the scheduler stops or pauses the trial."""
        from ray import tune

        started = time.monotonic()
        try:
            checkpoint = tune.Checkpoint.from_directory(folder) if folder else None
            tune.report(result, checkpoint=checkpoint)
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            self.seconds["checkpoint" if folder else "report_wait"] += (
                time.monotonic() - started)

    def time_spent(self) -> dict[str, float]:
        """Where the trial's time outside training went: MLflow writes, checkpoints (saved
        and handed to Tune), waiting in tune.report for the driver to take a result."""
        return {"tracking": self.parts.buffer.seconds,
                "checkpoint": self.parts.checkpointer.seconds + self.seconds["checkpoint"],
                "report_wait": self.seconds["report_wait"]}
