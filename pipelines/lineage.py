"""Population Based Training in MLflow: where a trial's checkpoint came from, its steps
after an exploit, its hyperparameters as stepped metrics, and the population's lineage.

A member that exploits restarts from its donor's checkpoint with explored values. Its
run stays its own (one run per trial) and its steps stay its own: a run's step counts
the env steps (and episodes) this member sampled, so after an exploit at the member's
step M from a donor whose algorithm was at D, an algorithm step D + x is logged at
M + x. That shift travels with the member's checkpoints, and the exploit is recorded on
the run as a tag (rlpipe.exploit.<n>: step, donor trial and run, old and new values),
which a retry that restores the same donor checkpoint finds again instead of recording
a second exploit.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from algos.core.metrics import ENV_STEPS, EPISODES

HP_PREFIX = "hp/"
"""hp/<key>: the value of a mutable hyperparameter in use, from the step it took effect."""
EXPLOIT_TAG = "rlpipe.exploit."
"""rlpipe.exploit.<n>: the member's n-th exploit (JSON), n from 1."""
EXPLOITS_METRIC = "pbt/exploits"
"""A member's exploits so far, stepped where each took effect."""
COUNTERS = (ENV_STEPS, EPISODES)
"""The counters a run's steps are in (shifted after an exploit)."""
LINEAGE_FILE = "lineage.json"
POPULATION_PLOT = "population.png"


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


def due(schedule: Sequence[tuple[int, Mapping[str, Any]]], reports: int) -> dict[str, Any]:
    """The values a replay's schedule set by its `reports`-th report (later ones win)."""
    values: dict[str, Any] = {}
    for at, changes in sorted(schedule, key=lambda entry: entry[0]):
        if at <= reports:
            values.update(changes)
    return values


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
        logged = [m.step for name in [*(f"{HP_PREFIX}{k}" for k in keys), EXPLOITS_METRIC]
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
                         "rlpipe.exploits": str(record["n"])})
        changed[EXPLOITS_METRIC] = float(record["n"])
    if changed:
        logger.log_metrics(changed, step=step)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# ----- the parent's view: the lineage table and the population plot ----------------------


def lineage_rows(runs) -> list[dict[str, Any]]:
    """One row per exploit of the sweep's members, in the order of their steps."""
    trial_of = {r.info.run_id: r.data.tags.get("tune.trial_id") for r in runs}
    rows = []
    for run in runs:
        for record in exploits_of(run):
            row = {"trial_id": trial_of[run.info.run_id], "run_id": run.info.run_id,
                   "step": record["step"], "donor_trial_id": record.get("donor_trial_id"),
                   "donor_run_id": record.get("donor_run_id"),
                   "donor_step": record.get("donor_step")}
            for key, value in (record.get("old") or {}).items():
                row[f"old.{key}"] = value
            for key, value in (record.get("new") or {}).items():
                row[f"new.{key}"] = value
            rows.append(row)
    return sorted(rows, key=lambda r: (r["step"], str(r["trial_id"])))


def _table_json(rows: Sequence[Mapping[str, Any]]) -> str:
    """mlflow.log_table's format (pandas' split orient), which the UI renders."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    return json.dumps({"columns": columns, "data": [[row.get(c) for c in columns]
                                                    for row in rows]}, default=str)


def record_population(logger, runs, metric: str) -> list[str]:
    """Log the lineage table and the population plot on the parent run `logger` when
    its members exploited or carry hp/ series; the artifact names logged."""
    client = logger.client
    hp_keys = sorted({k for r in runs for k in r.data.metrics if k.startswith(HP_PREFIX)})
    if not hp_keys:
        return []
    rows = lineage_rows(runs)
    series = {}
    for run in runs:
        trial = run.data.tags.get("tune.trial_id", run.info.run_id[:8])
        series[trial] = {key: sorted((m.step, m.value) for m in
                                     client.get_metric_history(run.info.run_id, key))
                         for key in [metric, *hp_keys]}
        end = run.data.metrics.get(ENV_STEPS)
        for key in hp_keys:  # each value holds until the member's last step
            points = series[trial][key]
            if points and end is not None and end > points[-1][0]:
                points.append((int(end), points[-1][1]))
    names = [LINEAGE_FILE, POPULATION_PLOT]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / LINEAGE_FILE).write_text(_table_json(rows))
        plot_population(series, rows, metric, hp_keys, folder / POPULATION_PLOT)
        for name in names:
            logger.log_artifact(folder / name)
    logger.log_metrics({"pbt/exploits": float(len(rows))},
                       step=logger.next_step("pbt/"))
    return names


def plot_population(series: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
                    rows: Sequence[Mapping[str, Any]], metric: str, hp_keys: Sequence[str],
                    path: Path) -> None:
    """One panel for the metric and one per hyperparameter, each member a line against
    env steps; each exploit a marker on the member's line where it took effect."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [metric, *hp_keys]
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 2.6 * len(keys)), sharex=True,
                             squeeze=False)
    colors = {t: plt.get_cmap("tab10")(i % 10) for i, t in enumerate(sorted(series))}
    for ax, key in zip(axes[:, 0], keys, strict=True):
        for trial, by_key in sorted(series.items()):
            points = by_key.get(key) or []
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            step_plot = ax.plot if key == metric else ax.step
            kwargs = {} if key == metric else {"where": "post"}
            step_plot(steps, values, color=colors[trial], label=trial, **kwargs)
        for row in rows:
            points = series.get(str(row["trial_id"]), {}).get(key) or []
            if points:
                at = max((p for p in points if p[0] <= row["step"]), default=points[0])
                ax.plot([row["step"]], [at[1]], marker="v", color="black", markersize=6)
        ax.set_ylabel(key)
        if key.startswith(HP_PREFIX) and "lr" in key:
            ax.set_yscale("log")
    axes[0, 0].set_title(f"Population: {metric} and each hyperparameter; v = exploit")
    axes[0, 0].legend(fontsize="small", ncol=4)
    axes[-1, 0].set_xlabel("env steps (each member's own)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
