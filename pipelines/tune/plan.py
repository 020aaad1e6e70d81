"""A launch planned before anything starts: what runs (the sweep plan, every trial's
config composed and checked), its names, where it is recorded and stored, and Tune's
search space, searcher and scheduler. Everything that can be bad input is refused here
(UserError, exit 2) with nothing written."""

from __future__ import annotations

import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.cluster.connect import git_commit
from pipelines.config.compose import Composed, UserError
from pipelines.config.schema import ClusterConfig
from pipelines.config.space import SweepPlan, tune_space
from pipelines.tracking.uri import check_access, check_tracking, resolve_uri
from pipelines.tune.context import RunSettings, budget_of
from pipelines.tune.schedulers import (
    build_scheduler,
    build_searcher,
    check_metric,
    check_scheduler,
    seed_space,
    time_attr,
)

CONTEXT_FILE = "rlpipe.json"
"""Beside the Tune run: its TrialContext, what a resume and a replay read back."""
STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az", "file")
"""URI schemes of the file systems Tune writes to (through pyarrow or fsspec)."""


@dataclass
class Launch:
    """A launch decided before anything starts: what runs, its names, where it is
    recorded and stored."""

    plan: SweepPlan
    kind: str
    """sweep or train."""
    name: str
    """The Tune run's name and the sweep's parent run's."""
    experiment_name: str
    uri: str
    """The tracking URI, resolved, without credentials."""
    storage: str
    """Tune's storage path, absolute."""
    fixed: list[str]
    """The overrides every trial composes with (the tracking URI resolved)."""
    settings: RunSettings
    space: dict[str, Any]
    """Tune's param space of the plan's dimensions."""
    searcher: Any
    """Tune's search algorithm (made before anything starts: Optuna's import included)."""
    scheduler: Any
    """Tune's trial scheduler, or None."""
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    commit: str = field(default_factory=lambda: git_commit())

    @property
    def cfg(self):
        """The base config (the first trial's)."""
        return self.plan.base.cfg

    def planned(self) -> dict[tuple[str, ...], Composed]:
        """The plan's composed trials, keyed as TrialContext.composed looks them up."""
        return {combo: composed for combo, composed in self.plan.trials}


def check_storage(storage: str) -> None:
    """Bad input (UserError) when Tune could not write to `storage`: a URI of a scheme it
    does not know, or a folder that cannot be made. Leaves nothing behind: the probe is
    made and removed in the nearest folder that exists."""
    if "://" in storage:
        scheme = storage.split("://", 1)[0]
        if scheme not in STORAGE_SCHEMES:
            allowed = ", ".join(f"{s}://" for s in STORAGE_SCHEMES)
            raise UserError(f"cluster.storage_path={storage}: not a storage URI Tune knows; "
                            f"allowed: a folder, or {allowed}")
        return
    existing = Path(storage)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is not a folder")
        Path(tempfile.mkdtemp(prefix=".rlpipe-write-check-", dir=existing)).rmdir()
    except OSError as e:
        reason = e.strerror or str(e)
        raise UserError(f"cluster.storage_path={storage}: cannot write there ({reason}); use "
                        "a writable folder, or storage every node reaches (s3://...)") from None


def storage_root(cluster: ClusterConfig) -> str:
    """Tune's storage path, absolute (Tune runs trials in their own directories)."""
    path = cluster.storage_path or "ray_results"
    if "://" in path:
        return path
    return str(Path(path).expanduser().resolve())


def planned_trials(plan: SweepPlan, search: str, num_samples: int, seeds: int = 1) -> int:
    """How many trials Tune will run: each grid point num_samples times (grid, auto), or
    num_samples configurations (random, optuna, bohb), each with `seeds` seeds."""
    if search in ("random", "optuna", "bohb"):
        return num_samples * seeds
    points = 1
    for d in plan.dims:
        if d.discrete:
            points *= len(d.values)
    return points * num_samples


def names(base: Composed, kind: str, storage: str) -> tuple[str, str]:
    """(the launch's name, its MLflow experiment's); a name whose Tune run exists is bad
    input (resume it, or name another)."""
    cfg, choices = base.cfg, base.choices
    stamp = time.strftime("%Y%m%d-%H%M%S")
    algo, env = choices.get("algo"), choices.get("env")
    if kind == "sweep":
        name = cfg.sweep.name or f"{choices.get('sweep') or 'sweep'}-{stamp}"
        experiment_name = cfg.tracking.experiment or choices.get("sweep") or "sweeps"
    else:
        name = f"train-{choices.get('experiment') or f'{algo}-{env}'}-{stamp}"
        experiment_name = cfg.tracking.experiment or f"{algo}-{env}"
    if "://" not in storage and (Path(storage) / name).exists():
        raise UserError(
            f"sweep.name={name}: a run of that name exists in {storage}; "
            f"resume it with resume={name} or choose another name"
        )
    return name, experiment_name


def settings_of(plan: SweepPlan, kind: str) -> RunSettings:
    """How the launch's trials run and are judged."""
    base, sweep = plan.base, plan.base.cfg.sweep
    return RunSettings(
        kind=kind, metric=sweep.metric, mode=sweep.mode, search=sweep.search,
        trials=planned_trials(plan, sweep.search, sweep.num_samples, sweep.seeds_per_config),
        budget=budget_of(base), cluster=base.cfg.cluster, progress=base.cfg.progress,
        env=base.choices.get("env"), register=kind == "train" and base.cfg.tracking.register,
        seed=base.cfg.seed, scheduler=sweep.scheduler.name,
        mutations=[d.key for d in plan.mutations],
    )


def record_uri(composed: Composed, uri: str) -> None:
    """Name the resolved tracking URI, without credentials, in a planned config: what its
    trial records (config.yaml) and how its overrides read."""
    composed.cfg.tracking.uri = uri
    composed.container["tracking"]["uri"] = uri
    composed.overrides = [f"tracking.uri={uri}" if o.split("=", 1)[0] == "tracking.uri"
                          else o for o in composed.overrides]


def plan_launch(plan: SweepPlan, kind: str) -> Launch:
    """Check what the sweep plan has not (the tracking store, the storage, the name, the
    metric and scheduler against the algorithms) and name the launch. Bad input raises
    UserError; nothing is written."""
    base = plan.base
    uri = resolve_uri(base.cfg.tracking.uri)
    check_tracking(uri)
    # What trials compose from and what is recorded name the URI without credentials.
    fixed = [f"tracking.uri={uri}" if o.split("=", 1)[0] == "tracking.uri" else o
             for o in plan.fixed]
    for composed in [base, *(c for _, c in plan.trials)]:
        record_uri(composed, uri)
    storage = storage_root(base.cfg.cluster)
    check_storage(storage)
    name, experiment_name = names(base, kind, storage)
    check_access(uri, experiment_name)
    sweep = base.cfg.sweep
    algorithms = {c.algorithm for _, c in plan.trials} or {base.algorithm}
    check_metric(sweep, algorithms)
    time_key = time_attr(sweep, algorithms)
    check_scheduler(sweep, plan)
    # A space Tune cannot take is bad input too.
    space = {**tune_space(plan, sweep.search), **seed_space(sweep, base.cfg.seed)}
    folder = None if "://" in storage else str(Path(storage) / name)
    return Launch(plan=plan, kind=kind, name=name, experiment_name=experiment_name,
                  uri=uri, storage=storage, fixed=fixed, settings=settings_of(plan, kind),
                  space=space, searcher=build_searcher(sweep, sweep.search, base.cfg.seed,
                                                       folder),
                  scheduler=build_scheduler(sweep, plan, space, time_key))

