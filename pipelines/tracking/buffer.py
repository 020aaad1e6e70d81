"""A trial's metric points between flushes: written in whole reports, held while the
tracking server cannot be reached, and never written twice.

A checkpoint waits until the buffer is written, so a trial restarted from its newest
checkpoint regenerates exactly what was not written yet, and RunLogger's watermark skips
what was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from pipelines.tracking.run_logger import RunLogger, is_outage

log = logging.getLogger("rlpipe")

BUFFER_LIMIT = 500_000
"""Most metric points a trial holds while the tracking server is unreachable (about 100 MB);
past it the trial fails, and its retry regenerates them from its last checkpoint."""
FINAL_WAIT_S = 600.0
"""How long a trial's last report waits for the tracking server to come back."""


class TrackingOutage(RuntimeError):
    """The tracking server stayed unreachable longer than a trial can hold its points."""


def downsample(series: Sequence[tuple], max_points: int) -> list[tuple]:
    """At most `max_points` points: consecutive points averaged in near-equal groups, each
    stepped (and, for (step, value, time) points, stamped) at its group's last point. 0
    keeps them all."""
    n = len(series)
    if max_points <= 0 or n <= max_points:
        return list(series)
    bounds = [round(i * n / max_points) for i in range(max_points + 1)]
    out = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        group = series[lo:hi]
        mean = sum(p[1] for p in group) / len(group)
        out.append((group[-1][0], mean, *group[-1][2:]))
    return out


class WriteBuffer:
    """The points of a run's reports not written yet, oldest first.

    While the tracking server cannot be reached (after the MLflow client's own retries)
    the points stay here (at most BUFFER_LIMIT, the size logged) and are tried again at
    each flush; a refusal by the server raises at once."""

    def __init__(self, logger: RunLogger, flush_every_s: float) -> None:
        self.logger = logger
        self.flush_every_s = flush_every_s
        self.unsent: list[list] = []
        self.outage_since: float | None = None
        self.last_flush = time.monotonic()
        self.seconds = 0.0
        """Time spent writing."""

    def add(self, points: list) -> None:
        """Hold one report's points (RunLogger.report_points)."""
        self.unsent.append(points)

    def due(self) -> bool:
        """Whether flush_every_s has passed since the last flush."""
        return time.monotonic() - self.last_flush >= self.flush_every_s

    def flush(self) -> bool:
        """Write the held points; True when none is left. An outage keeps them for the next
        flush (False); a refusal by the server, or a buffer past BUFFER_LIMIT, raises."""
        now = self.last_flush = time.monotonic()
        try:
            self.logger.send(self.unsent)
            self.seconds += time.monotonic() - now
        except Exception as e:
            if not is_outage(e):
                raise
            self._hold(now, e)
            return False
        if self.outage_since is not None:
            log.warning("tracking server reachable again after %.0f s: held points written",
                        now - self.outage_since)
            self.outage_since = None
        return True

    def _hold(self, now: float, error: Exception) -> None:
        """An outage: keep the points, or fail past BUFFER_LIMIT."""
        held = sum(len(points) for points in self.unsent)
        self.outage_since = self.outage_since or now
        down = now - self.outage_since
        if held > BUFFER_LIMIT:
            raise TrackingOutage(
                f"the tracking server has been unreachable for {down:.0f} s and "
                f"{held:,} metric points are held, more than {BUFFER_LIMIT:,}: "
                "failing the trial; its retry regenerates them from its last checkpoint"
            ) from error
        log.warning("tracking server unreachable for %.0f s (%s): %d reports (%d points) "
                    "held, tried again at the next flush", down,
                    str(error).splitlines()[0][:200], len(self.unsent), held)

    def wait(self, seconds: float = FINAL_WAIT_S, every: float = 5.0) -> None:
        """Flush until everything is written, for up to `seconds` (raises TrackingOutage)."""
        deadline = time.monotonic() + seconds
        while not self.flush():
            if time.monotonic() > deadline:
                raise TrackingOutage(
                    f"the tracking server did not come back within {seconds:.0f} s of the "
                    "trial's end; its retry regenerates the unwritten points")
            time.sleep(every)
