"""tracking.video_every: one evaluation episode recorded into the trial's run at every
k-th evaluation, as videos/step-<env step>.mp4."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.results.play import record_episode
from pipelines.tracking.run_logger import RunLogger

log = logging.getLogger("rlpipe")

VIDEOS = "videos"
"""The run's artifact folder of tracking.video_every's videos."""


def video_name(step: int) -> str:
    """The file name of the video of the evaluation at env step `step` (zero-padded, so
    names sort by step)."""
    return f"step-{step:012d}.mp4"


class EvaluationVideos:
    """One evaluation episode recorded at every `every`-th evaluation, from the
    evaluation's first reset seed. A trial retried from a checkpoint records the same names
    again (the artifact is replaced, not doubled); a video that cannot be made or uploaded
    is a warning, never the trial's failure."""

    def __init__(self, logger: RunLogger, every: int, env: Any, seed: int,
                 max_steps: int | None) -> None:
        self.logger, self.every = logger, every
        self.env = env
        """The run's EnvConfig (Atari videos show the game's own frames)."""
        self.seed, self.max_steps = seed, max_steps

    def record(self, evaluation: int, step: int, agent: Callable[[], Any]) -> None:
        """Record the `evaluation`-th evaluation's episode, at env step `step`, if due."""
        if self.every <= 0 or evaluation % self.every:
            return
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / video_name(step)
                record_episode(agent(), self.env, self.seed, self.max_steps, path)
                self.logger.log_artifact(path, VIDEOS)
        except Exception as e:  # a video must never stop training
            log.warning("no video at step %d: %s", step, str(e).splitlines()[0][:200])
