"""Wall-clock laps for throughput metrics."""

from __future__ import annotations

import time


class Stopwatch:
    """Seconds since the last lap."""

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def lap(self) -> float:
        """Seconds since the previous lap (or creation); starts a new lap."""
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        return seconds
