"""What every trial of one launch shares: its settings, where it is recorded, and each
planned trial's composed config, carried from the plan to the trials and the driver's
callbacks so that nothing composes a planned trial twice."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from algos.core.metrics import ENV_STEPS
from pipelines.config.compose import Composed, compose_and_check
from pipelines.config.schema import ClusterConfig, ProgressConfig
from pipelines.config.space import TRIAL_INDEX


@dataclass
class RunSettings:
    """How the trials of one launch run and are judged: what the driver, its callbacks
    and a resume need beside the trials' overrides."""

    kind: str
    """sweep (python -m pipelines.sweep) or train (one run)."""
    metric: str
    """The metric that ranks trials (sweep.metric)."""
    mode: str
    """max or min."""
    search: str
    """How dimensions become trials (sweep.search, resolved)."""
    trials: int
    """Trials the launch plans (the status line's total)."""
    budget: tuple[str, float]
    """(the metric that counts toward a trial's training budget, the budget)."""
    cluster: ClusterConfig
    progress: ProgressConfig
    env: str | None = None
    """The env option of the launch's first trial (a train run registers its model under
    it)."""
    register: bool = False
    """Register the run's best model (train with tracking.register=true)."""
    seed: int = 0
    """The launch's seed (a repeated configuration's trials take seed + their index)."""
    scheduler: str = "none"
    """sweep.scheduler.name: pbt and pb2 checkpoint at every report and change the
    trials' hyperparameters while they run."""
    mutations: list[str] = field(default_factory=list)
    """The keys the scheduler changes while trials run (each logged as hp/<key>)."""
    replay_of: str | None = None
    """A replay's <sweep>/<trial>: the member whose schedule it follows."""
    schedule: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    """A replay's changes: after its n-th report, these values (pipelines.tune.replay)."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSettings:
        """From to_json()'s settings (an older launch's may lack the budget and the
        progress settings, and hold keys no longer used)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{**{k: v for k, v in data.items() if k in known},
                      "trials": data.get("trials", 0),
                      "budget": tuple(data.get("budget", (ENV_STEPS, 0.0))),
                      "cluster": ClusterConfig(**data["cluster"]),
                      "progress": ProgressConfig(**data.get("progress", {}))})


def budget_of(composed: Composed) -> tuple[str, float]:
    """(the metric that counts toward a run's training budget, the budget)."""
    field_name, counter = composed.algorithm.budget
    return counter, float(getattr(composed.cfg.algo, field_name))


def combo_of(config: dict[str, Any]) -> tuple[str, ...]:
    """The overrides Tune's `config` of a trial makes, as the plan keys its trials."""
    return tuple(f"{k}={v}" for k, v in config.items())


@dataclass
class TrialContext:
    """What every trial of one launch shares; plain data, saved beside the Tune run (all
    but the planned configs: a resumed launch's trials compose their own)."""

    name: str
    """The sweep's (or train run's) name: its Tune run and MLflow parent run."""
    uid: str
    """Unique per launch; with the trial id it makes each trial's MLflow run key."""
    fixed: list[str]
    """Overrides every trial composes with."""
    tracking_uri: str
    experiment_id: str
    experiment_name: str
    parent_run_id: str | None
    git_commit: str
    settings: RunSettings
    space: dict[str, str] = field(default_factory=dict)
    """The swept keys and their expressions, as written."""
    cluster: dict[str, Any] = field(default_factory=dict)
    """The cluster the run started on (Capacity.summary()): recorded on the parent run, or
    on a train run's own run."""
    planned: dict[tuple[str, ...], Composed] = field(default_factory=dict, compare=False,
                                                      repr=False)
    """The plan's composed trials, by the overrides of their sampled values (combo_of)."""

    def to_json(self) -> dict[str, Any]:
        """Plain data (saved beside the Tune run, for a resume)."""
        return {f.name: dataclasses.asdict(self.settings) if f.name == "settings"
                else getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "planned"}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialContext:
        """From to_json()."""
        return cls(**{**data, "settings": RunSettings.from_json(data["settings"])})

    def overrides(self, config: dict[str, Any]) -> list[str]:
        """A trial's overrides: the fixed ones, then one per sampled dimension (a repeated
        configuration's index: its seed)."""
        return list(self.fixed) + [
            f"seed={self.settings.seed + int(v)}" if k == TRIAL_INDEX else f"{k}={v}"
            for k, v in config.items()]

    def composed(self, config: dict[str, Any]) -> Composed:
        """A trial's config: the plan's (with the trial's seed where only that differs),
        or, for values the plan did not hold (sampled, explored, a replay's), composed
        and checked now."""
        found = self.planned.get(combo_of(config))
        if found is not None:
            return found
        seedless = {k: v for k, v in config.items() if k not in ("seed", TRIAL_INDEX)}
        found = self.planned.get(combo_of(seedless))
        overrides = self.overrides(config)
        if found is None or any("${" in o for o in overrides):
            return compose_and_check(overrides)
        seed = next((int(o.split("=", 1)[1]) for o in reversed(overrides)
                     if o.split("=", 1)[0] == "seed"), found.cfg.seed)
        composed = found.with_seed(seed)
        composed.overrides = overrides
        return composed

    def run_key(self, trial_id: str) -> str:
        """The MLflow tag value that identifies a trial's run across retries and
        resumes."""
        return f"{self.uid}/{trial_id}"
