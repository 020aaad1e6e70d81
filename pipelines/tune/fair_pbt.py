"""Tune's PBT and PB2 with one change: which member gets a free slot when several are
equally far behind.

With more members than slots, Tune's PBT gives a free slot to the pending or paused
member furthest behind (its time_attr), the first in trial order among equals. A member
that exploits takes its donor's time, so it ties with its donor, which is paused at that
time. On Ray 2.60 the member that had just exploited won the tie again and again (the
member chosen before it stayed pending, waiting for a slot, and lost its turn): it
trained one interval, landed in the bottom quantile against the others' older results,
copied the same paused donor, and tied once more, while the others never resumed. Seen
with more Taxi members than CPUs, and on a 2-node cluster that lost a node (what it
cost: docs/schedulers.md). Here the member that reported longest ago goes first among
equals, so every member reaches its budget (tests/test_schedulers.py).

Own module: the classes are pickled with the Tune run's state (a resume unpickles them),
and importing Tune's schedulers costs a second that pipelines.tune.schedulers does not pay.
"""

from __future__ import annotations

from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining
from ray.tune.schedulers.pb2 import PB2

from pipelines import private_api


class _LongestIdleFirst:
    """PBT's choose_trial_to_run, ties broken by when each member last reported."""

    def _reported(self) -> dict[str, int]:
        """trial id -> the order of its latest report (kept with the scheduler's state)."""
        return self.__dict__.setdefault("_last_report", {})

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        """Note the report's order, then Tune's PBT."""
        reported = self._reported()
        reported[trial.trial_id] = max(reported.values(), default=-1) + 1
        return super().on_trial_result(tune_controller, trial, result)  # type: ignore[misc]

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        """The pending or paused member furthest behind; among equals, the one that
        reported longest ago (or never)."""
        reported = self._reported()
        lockstep = private_api.pbt_synchronous(self)
        candidates = [
            t for t in tune_controller.get_trials()
            if t.status in (Trial.PENDING, Trial.PAUSED) and (
                not lockstep or private_api.pbt_last_train_time(self, t)
                < private_api.pbt_next_sync(self))
        ]
        if not candidates:
            return None
        return min(candidates, key=lambda t: (private_api.pbt_last_train_time(self, t),
                                              reported.get(t.trial_id, -1)))


class FairPopulationBasedTraining(_LongestIdleFirst, PopulationBasedTraining):
    """Tune's PopulationBasedTraining, the longest-idle member first among equals."""


class FairPB2(_LongestIdleFirst, PB2):
    """Tune's PB2, the longest-idle member first among equals."""
