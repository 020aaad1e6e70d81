"""Tune's Repeater, telling the searcher the IQM over a configuration's seeds (imported
only where a searcher repeats: it imports Tune)."""

from __future__ import annotations

import json
import math

import numpy as np
from ray.tune.search import Repeater, Searcher

from pipelines import private_api
from pipelines.results.stats import iqm


class SeedRepeater(Repeater):
    """Each configuration the searcher proposes runs as `repeat` trials (the Repeater's
    index in their config: seeds seed, seed + 1, ...), and the searcher is told the IQM
    of their final results once all have finished (Tune's Repeater: the mean). Each
    answer is appended to `feedback` (JSON lines) when given."""

    def __init__(self, searcher: Searcher, repeat: int, feedback: str | None = None) -> None:
        super().__init__(searcher, repeat=repeat, set_index=True)
        self.feedback = feedback

    def on_trial_complete(  # type: ignore[override]  # Repeater's and Searcher's differ
            self, trial_id: str, result: dict | None = None, **kwargs) -> None:
        """Keep the trial's final result; when its group is complete, tell the searcher."""
        group = private_api.repeater_group(self, trial_id)
        if group is None:
            return
        value = (result or {}).get(self.searcher.metric)
        group.report(trial_id, float(value) if value is not None else math.nan)
        if not group.finished_reporting():
            return
        scores = [s for s in group.scores() if not math.isnan(s)]
        told = float(iqm(np.asarray(scores))) if scores else math.nan
        self.searcher.on_trial_complete(group.primary_trial_id,
                                        result={self.searcher.metric: told}, **kwargs)
        if self.feedback:
            record = {"primary_trial_id": group.primary_trial_id,
                      "trial_ids": private_api.repeater_group_trials(group),
                      "scores": group.scores(), "told": told, "config": group.config}
            with open(self.feedback, "a") as f:
                f.write(json.dumps(record, default=str) + "\n")
