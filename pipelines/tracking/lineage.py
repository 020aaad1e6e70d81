"""A PBT member's lineage in MLflow: where a trial's checkpoint came from, how its run's
steps go on after an exploit, and its hyperparameters as stepped metrics.

A member that exploits restarts from its donor's checkpoint with explored values. Its
run stays its own (one run per trial) and its steps stay its own: a run's step counts
the env steps (and episodes) this member sampled, so after an exploit at the member's
step M from a donor whose algorithm was at D, an algorithm step D + x is logged at
M + x (StepShift). That shift travels with the member's checkpoints, and the exploit is
recorded on the run as a tag (rlpipe.exploit.<n>: step, donor trial and run, old and new
values), which a retry that restores the same donor checkpoint finds again instead of
recording a second exploit. The population's view, on the parent run:
pipelines.results.population.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from algos.core.metrics import ENV_STEPS, EPISODES
from pipelines.tracking.series import EXPLOITS, HP_PREFIX

EXPLOIT_TAG = "rlpipe.exploit."
"""rlpipe.exploit.<n>: the member's n-th exploit (JSON), n from 1."""
EXPLOIT_COUNT_TAG = "rlpipe.exploits"
"""How many exploits the member made."""
COUNTERS = (ENV_STEPS, EPISODES)
"""The counters a run's steps are in (shifted after an exploit)."""


@dataclass
class Origin:
    """Where a checkpoint was taken: written beside the state (STEP_FILE)."""

    step: int
    """The run step of the report it was taken with."""
    run_key: str | None = None
    """The run key of the trial that took it (None: a checkpoint of an older version)."""
    trial_id: str | None = None
    counters: dict[str, float] = field(default_factory=dict)
    """The algorithm's own counters there (env steps, episodes), before any shift."""
    shift: dict[str, float] = field(default_factory=dict)
    """Run counter minus algorithm counter, per counter, of the run that took it."""
    reports: int = 0
    """Reports the algorithm made up to it (a replay's schedule counts in them)."""
    path: str | None = None
    """Where it was restored from (set on reading)."""

    def to_json(self) -> dict[str, Any]:
        """What save_state writes."""
        return {"step": self.step, "run_key": self.run_key, "trial_id": self.trial_id,
                "counters": self.counters, "shift": self.shift, "reports": self.reports}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], path: str | None = None) -> Origin:
        """From to_json() (an older checkpoint's: only its step)."""
        return cls(step=int(data.get("step", 0)), run_key=data.get("run_key"),
                   trial_id=data.get("trial_id"), counters=dict(data.get("counters", {})),
                   shift=dict(data.get("shift", {})), reports=int(data.get("reports", 0)),
                   path=path)


def exploits_of(run) -> list[dict[str, Any]]:
    """The exploit records on a run, in order."""
    tags = run.data.tags if run is not None else {}
    records = [json.loads(v) for k, v in tags.items() if k.startswith(EXPLOIT_TAG)]
    return sorted(records, key=lambda r: r["n"])


def values_in_use(container: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    """The composed config's value of each dotted key."""
    out = {}
    for key in keys:
        node: Any = container
        for part in key.split("."):
            node = node[part]
        out[key] = node
    return out


@dataclass
class Continuation:
    """How a restarted trial goes on: the step its run resumes at, the shift of its
    counters, and the exploit it starts with (None: its own checkpoint, or none)."""

    step: int = 0
    shift: dict[str, float] = field(default_factory=dict)
    exploit: dict[str, Any] | None = None
    new_exploit: bool = False
    """The exploit happened just now (record it); False on a retry that found it."""


@dataclass
class StepShift:
    """What turns an algorithm's counters (env steps, episodes) into its run's: zero but
    after an exploit, where the member's run goes on from its own last step."""

    by: dict[str, float] = field(default_factory=dict)
    """Run counter minus algorithm counter, per counter."""

    def step(self, step: int) -> int:
        """The run's step of the algorithm's env step `step`."""
        return step + int(self.by.get(ENV_STEPS, 0))

    def report(self, step: int, metrics: Mapping[str, float],
               history: Mapping[str, Sequence[tuple]]
               ) -> tuple[int, dict[str, float], dict[str, Sequence[tuple]]]:
        """A report in the run's counters: its step, its counters among the metrics, and
        its history points' steps."""
        metrics = {**metrics, **{k: v + self.by.get(k, 0.0)
                                 for k, v in counters(step, metrics).items()}}
        history = {k: [(self.step(p[0]), *p[1:]) for p in v] for k, v in history.items()}
        return self.step(step), metrics, history


def counters(step: int, metrics: Mapping[str, float]) -> dict[str, float]:
    """An algorithm's counters at a report of env step `step` (those it reports)."""
    return {k: float(step if k == ENV_STEPS else metrics[k])
            for k in COUNTERS if k == ENV_STEPS or k in metrics}


def continuation(my_key: str, origin: Origin | None, run, donor_run_id=None
                 ) -> Continuation:
    """How a trial whose run is `run` (None: new) goes on from a checkpoint `origin`
    (None: from the start). A checkpoint of its own keeps the shift it was taken with;
    a donor's is an exploit: the member's run goes on from its own last step."""
    if origin is None:
        return Continuation()
    if origin.run_key in (None, my_key):
        return Continuation(step=origin.step, shift=dict(origin.shift))
    mine = run.data.metrics if run is not None else {}
    for record in exploits_of(run):
        # A retry (or a restart after a pause) before the member reported again: the
        # same exploit. A member that reported since and copies the same checkpoint
        # again is exploiting anew.
        at = record.get("env_steps", record["step"])
        if record.get("checkpoint") == origin.path and int(mine.get(ENV_STEPS, -1)) == at:
            return Continuation(step=at, shift=record["shift"], exploit=record)
    own = {k: float(mine.get(k, 0.0)) for k in COUNTERS}
    shift = {k: own[k] - float(origin.counters[k]) for k in COUNTERS if k in origin.counters}
    record = {
        "n": len(exploits_of(run)) + 1, "step": int(own[ENV_STEPS]),
        "env_steps": int(own[ENV_STEPS]),
        "donor_trial_id": origin.trial_id, "donor_run_id": donor_run_id,
        "donor_step": origin.step, "checkpoint": origin.path, "shift": shift,
    }
    return Continuation(step=int(own[ENV_STEPS]), shift=shift, exploit=record,
                        new_exploit=True)


def record_start(logger, run, keys: Sequence[str], values: Mapping[str, Any],
                 go_on: Continuation) -> None:
    """Log what a (re)started member runs with: hp/<key> where a value differs from the
    run's last one (all of them for a new run), and a new exploit with the values before
    and after it.

    The points go at the continuation's step, or just past the run's last hp/ point where
    that is later: a member restarted from an older state than its run has reached (a
    sweep resumed after a kill restarts it from the last checkpoint Tune recorded, or from
    scratch) or exploiting again before it reported anew would otherwise log a step twice,
    or backwards. A restarted member's values go just past the run's last step, where its
    next points go. An exploit's record carries the step its points went to, and the
    member's env steps when it happened (`env_steps`)."""
    if not keys:
        return
    last = run.data.metrics if run is not None else {}
    numeric = {k: float(v) for k, v in values.items() if _is_number(v)}
    changed = {f"{HP_PREFIX}{k}": v for k, v in numeric.items()
               if last.get(f"{HP_PREFIX}{k}") != v}
    step = go_on.step
    if run is not None and (changed or go_on.new_exploit):
        logged = [m.step for name in [*(f"{HP_PREFIX}{k}" for k in keys), EXPLOITS]
                  for m in logger.client.get_metric_history(run.info.run_id, name)]
        if not go_on.new_exploit and logger.watermark > step:
            logged.append(int(logger.watermark))  # its next points come past the run's last
        step = max([step, *(s + 1 for s in logged)])
    if go_on.new_exploit and go_on.exploit is not None:
        record = {**go_on.exploit, "step": step,
                  "old": {k: last.get(f"{HP_PREFIX}{k}") for k in keys},
                  "new": dict(values)}
        go_on.exploit = record
        logger.set_tags({f"{EXPLOIT_TAG}{record['n']}": json.dumps(record, default=str),
                         EXPLOIT_COUNT_TAG: str(record["n"])})
        changed[EXPLOITS] = float(record["n"])
    if changed:
        logger.log_metrics(changed, step=step)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
