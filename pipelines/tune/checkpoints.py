"""A trial's checkpoints: the algorithm's state and where it was taken, written when one is
due, handed to Tune, and read back when Tune restarts the trial (a retry, a resume, or a
PBT exploit from a donor's checkpoint)."""

from __future__ import annotations

import json
import pickle
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.tracking.lineage import Origin
from pipelines.tracking.run_logger import RunLogger

STATE_FILE = "state.pkl"
STEP_FILE = "step.json"
"""Where a checkpoint was taken (Origin): the step of its report, the trial, its counters."""
RESTORED_TAG = "rlpipe.restored_from"
"""The run tag naming the checkpoint a restarted trial went on from."""


def save_state(state: Mapping[str, Any], folder: Path, origin: Origin) -> None:
    """Write an algorithm's checkpoint state into `folder`, and where it was taken."""
    with open(folder / STATE_FILE, "wb") as f:
        pickle.dump(dict(state), f, protocol=pickle.HIGHEST_PROTOCOL)
    (folder / STEP_FILE).write_text(json.dumps(origin.to_json()))


def load_state(folder: str | Path) -> tuple[dict[str, Any], Origin]:
    """Read back what save_state wrote: (the state, where it was taken; an older
    checkpoint without STEP_FILE reads as step 0 of no trial)."""
    folder = Path(folder)
    with open(folder / STATE_FILE, "rb") as f:
        state = pickle.load(f)
    step_file = folder / STEP_FILE
    data = json.loads(step_file.read_text()) if step_file.exists() else {}
    return state, Origin.from_json(data)


def restore_checkpoint(logger: RunLogger) -> tuple[dict[str, Any] | None, Origin | None]:
    """The algorithm's state and where it was taken, from Tune's checkpoint of this trial
    (its own, or after an exploit its donor's) if it has one (the run is tagged with where
    it came from); else (None, None)."""
    from ray import tune

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return None, None
    with checkpoint.as_directory() as folder:
        state, origin = load_state(folder)
    origin.path = checkpoint.path
    logger.set_tags({RESTORED_TAG: checkpoint.path})
    return state, origin


class Checkpointer:
    """When a trial keeps a checkpoint, and writing it: at most every `every_s` seconds
    (0: at every report), and at the last report."""

    def __init__(self, every_s: float, run_key: str, trial_id: str) -> None:
        self.every_s = every_s
        self.run_key, self.trial_id = run_key, trial_id
        """Whose checkpoints these are (written with each: Origin)."""
        self.last = time.monotonic()
        self.seconds = 0.0
        """Time spent writing checkpoints."""

    def due(self, final: bool) -> bool:
        """Whether a report now keeps a checkpoint."""
        return final or time.monotonic() - self.last >= self.every_s

    def save(self, state: Mapping[str, Any], step: int, counters: dict[str, float],
             shift: dict[str, float], reports: int) -> Path:
        """Write `state` into a new folder (Tune takes it, then it is removed), taken at
        run step `step` with the algorithm's `counters`, the run's `shift` and its
        `reports`-th report."""
        started = self.last = time.monotonic()
        folder = Path(tempfile.mkdtemp(prefix="rlpipe-ckpt-"))
        save_state(state, folder, Origin(step=step, run_key=self.run_key,
                                         trial_id=self.trial_id, counters=counters,
                                         shift=shift, reports=reports))
        self.seconds += time.monotonic() - started
        return folder
