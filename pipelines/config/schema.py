"""Structured config schemas: types, ranges and the set of allowed keys of every group.

Registered in Hydra's ConfigStore so that conf/*.yaml are checked against them as they
compose.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from algos.core.envs import EnvConfig
from algos.core.metrics import ENV_STEPS, EPISODES, EVAL_SCORE
from algos.core.validation import ConfigValueError, at_least, in_range, one_of, positive
from algos.registry import ALGORITHMS

RUN_SETTINGS = ("tracking", "cluster", "resume", "replay", "sweep", "progress", "report",
                "evaluate", "package", "hydra")
"""Top-level keys that say how and where a run is done, recorded and shown, never what it
trains: they cannot be swept, and no two configurations differ by them."""
NOT_CONFIG = ("seed", *RUN_SETTINGS)
"""Top-level keys that never tell one configuration from another: the run settings and
the seed (a configuration's seeds are its repeats)."""
SEARCHES = ("auto", "grid", "random", "optuna", "bohb")
SCHEDULERS = ("none", "asha", "hyperband", "bohb", "median", "pbt", "pb2")
TIME_ATTRS = ("auto", "training_iteration", ENV_STEPS, EPISODES)


@dataclass
class TrackingConfig:
    """Where MLflow records runs."""

    uri: str = "sqlite:///mlflow.db"
    """MLflow tracking URI: sqlite:///file.db, a folder, or http(s)://host:port."""
    experiment: str | None = None
    """MLflow experiment; null: the sweep's config name (sweeps) or '<algo>-<env>' (train)."""
    flush_every_s: float = 10.0
    """Most seconds a trial holds metrics before writing them to MLflow (a checkpoint and
    the end of the trial always write them first)."""

    max_points_per_report: int = 200
    """Most points a report adds to a per-episode series (train/episode_return): past it,
    consecutive episodes are averaged, each point stepped at its last episode's end.
    0 keeps every episode (MLflow's sqlite store slows as a run's points grow)."""

    register: bool = False
    """train: register the run's best model as <experiment>-<env option>, alias best if it
    beats the alias holder (a sweep always registers its best trial's)."""
    system_metrics_every_s: float = 5.0
    """Seconds between samples of MLflow's system metrics (CPU, memory, GPU utilization and
    memory) in each trial's run; 0: none."""
    video_every: int = 0
    """Record one evaluation episode (the first evaluation seed, greedy; Atari: the game's
    own frames) at every video_every-th evaluation, as the run's artifact
    videos/step-<env step>.mp4; 0: none."""

    def __post_init__(self) -> None:
        at_least(self, "flush_every_s", 0.0)
        at_least(self, "max_points_per_report", 0)
        at_least(self, "system_metrics_every_s", 0.0)
        at_least(self, "video_every", 0)


@dataclass
class ClusterConfig:
    """The Ray cluster and what one trial reserves on it."""

    kind: str = "local"
    """local (start a Ray of its own here) or remote (join the cluster at `address`)."""
    address: str | None = None
    """cluster=remote: host:port of the Ray head (its GCS port), or 'auto' on a node."""
    num_cpus: int | None = None
    """cluster=local: CPUs of the local Ray (null: all of this machine's). More than the
    machine has oversubscribes it on purpose."""
    num_gpus: int | None = None
    """cluster=local: GPUs of the local Ray (null: all of this machine's)."""
    runtime_env: bool = False
    """cluster=remote: ship this project's code to every node with Ray's runtime
    environment (on for a bare cluster; off when the nodes run the project's image)."""
    autoscaling: bool = False
    """cluster=remote: an autoscaler adds nodes, so a trial larger than today's nodes may
    still be placed (the check that refuses such trials is skipped)."""
    cpus_per_trial: float = 1.0
    """CPUs one trial's learner reserves."""
    gpus_per_trial: float = 0.0
    """GPU share one trial's learner reserves (0.25 puts four trials on one GPU)."""
    storage_path: str | None = None
    """Where Tune keeps trial state and checkpoints (null: ./ray_results). Every node must
    reach it on a multi-node cluster."""
    max_failures: int = 2
    """Retries of a failed trial, each from its last checkpoint."""
    reuse_actors: bool = True
    """Run successive trials in the same worker process (saves seconds per short trial)."""
    checkpoint_every_s: float = 30.0
    """Least seconds between a trial's checkpoints (0: at every report). A trial's last
    report always checkpoints; a failed trial restarts from its newest checkpoint."""

    def __post_init__(self) -> None:
        one_of(self, "kind", ("local", "remote"))
        if self.kind == "remote" and not self.address:
            raise ConfigValueError(
                "address", self.address, "required with cluster=remote: host:port of the Ray "
                "head (or auto on a node of the cluster)"
            )
        if self.kind == "local":
            if self.address:
                raise ConfigValueError(
                    "address", self.address, "only with cluster=remote (cluster=local always "
                    "starts a Ray of its own)")
            for key in ("runtime_env", "autoscaling"):
                if getattr(self, key):
                    raise ConfigValueError(key, True, "only with cluster=remote")
        else:
            for key in ("num_cpus", "num_gpus"):
                if getattr(self, key) is not None:
                    raise ConfigValueError(
                        key, getattr(self, key), "only with cluster=local (a remote "
                        "cluster's nodes declare their own resources)")
        for key in ("num_cpus", "num_gpus"):
            if getattr(self, key) is not None:
                at_least(self, key, 0 if key == "num_gpus" else 1)
        at_least(self, "cpus_per_trial", 0.0)
        at_least(self, "gpus_per_trial", 0.0)
        if self.gpus_per_trial > 1 and self.gpus_per_trial != int(self.gpus_per_trial):
            raise ConfigValueError("gpus_per_trial", self.gpus_per_trial,
                                     "a share of one GPU (<= 1) or a whole number of GPUs")
        at_least(self, "max_failures", 0)
        at_least(self, "checkpoint_every_s", 0.0)
        if self.cpus_per_trial == 0 and self.gpus_per_trial == 0:
            raise ConfigValueError("cpus_per_trial", 0, "a trial must reserve a CPU or a GPU")


@dataclass
class SchedulerConfig:
    """A trial scheduler, through Tune's own class: one that stops weak trials early (asha,
    hyperband, bohb, median) or one that changes hyperparameters while trials run (pbt,
    pb2). Each setting names the schedulers that read it; the others must stay unset."""

    name: str = "none"
    """none, asha, hyperband, bohb (HyperBandForBOHB, with search=bohb), median
    (MedianStoppingRule), pbt (PopulationBasedTraining) or pb2 (PB2)."""
    time_attr: str = "auto"
    """What the scheduler counts time in: auto (pbt, pb2: the algorithm's budget,
    train/env_steps, or train/episodes for Q-learning and REINFORCE; the others: reports,
    training_iteration), training_iteration, train/env_steps or train/episodes."""
    max_t: int = 100
    """asha, hyperband, bohb: the longest trial, in time_attr units."""
    grace_period: int = 1
    """asha, median: the shortest trial before it may be stopped, in time_attr units."""
    reduction_factor: float = 3.0
    """asha, hyperband, bohb: keep 1/reduction_factor of the trials at each rung."""
    min_samples_required: int = 3
    """median: trials that must have reached a time before one is compared with them."""
    perturbation_interval: float = 0.0
    """pbt, pb2 (required): time_attr units between a member's exploit/explore steps."""
    burn_in_period: float = 0.0
    """pbt: no exploit before this time."""
    quantile_fraction: float = 0.25
    """pbt, pb2: the bottom fraction of the population copies the top fraction."""
    resample_probability: float = 0.25
    """pbt: chance that an explored value is sampled anew from its range, instead of the
    donor's value times a perturbation factor (or the next value of a choice)."""
    perturbation_factors: list[float] = field(default_factory=lambda: [1.2, 0.8])
    """pbt: what the donor's continuous values are multiplied by (then clipped to their
    range)."""
    synch: bool = False
    """pbt, pb2: the population waits for its slowest member at each interval."""
    mutations: dict[str, str] = field(default_factory=dict)
    """pbt, pb2: key -> range in the sweep grammar (interval(lo, hi), tag(log,
    interval(lo, hi)), choice(...); pb2: intervals only) of the keys that change during a
    run. Only keys the algorithm declares mutable (algos.registry)."""

    def __post_init__(self) -> None:
        one_of(self, "name", SCHEDULERS)
        one_of(self, "time_attr", TIME_ATTRS)
        positive(self, "max_t", "grace_period", "min_samples_required")
        if not self.reduction_factor > 1:
            raise ConfigValueError("reduction_factor", self.reduction_factor, "must be > 1")
        if self.grace_period > self.max_t and self.name == "asha":
            raise ConfigValueError("grace_period", self.grace_period, "must be <= max_t")
        at_least(self, "burn_in_period", 0.0)
        at_least(self, "perturbation_interval", 0.0)
        in_range(self, "quantile_fraction", 0.0, 0.5, low_open=True)
        in_range(self, "resample_probability", 0.0, 1.0)
        if not self.perturbation_factors or any(not f > 0 for f in self.perturbation_factors):
            raise ConfigValueError("perturbation_factors", self.perturbation_factors,
                                   "a list of factors > 0")
        adaptive = self.name in ("pbt", "pb2")
        if adaptive and not self.perturbation_interval > 0:
            raise ConfigValueError("perturbation_interval", self.perturbation_interval,
                                   f"must be > 0 with name={self.name} (in time_attr units)")
        if adaptive and not self.mutations:
            raise ConfigValueError("mutations", {}, f"name={self.name} needs at least one "
                                   "mutable key and its range, e.g. algo.lr: "
                                   "tag(log, interval(1e-4, 1e-2))")
        if not adaptive and self.mutations:
            raise ConfigValueError("mutations", dict(self.mutations),
                                   "only with name=pbt or pb2")


@dataclass
class SweepConfig:
    """A Ray Tune sweep: Hydra overrides whose sweep expressions span the search space."""

    name: str | None = None
    """Names the Tune run and the MLflow parent run (null: '<sweep option>-<timestamp>')."""
    params: dict[str, Any] = field(default_factory=dict)
    """override -> expression: 'a,b', choice(...), range(...), interval(...), tag(log, ...)."""
    num_samples: int = 1
    """Trials to sample (random, optuna), or repeats of the whole grid (grid)."""
    metric: str = EVAL_SCORE
    """The metric that ranks trials."""
    mode: str = "max"
    """max or min."""
    search: str = "auto"
    """auto (discrete dimensions a grid, continuous ones sampled num_samples times per grid
    point), grid (all discrete), random (every dimension sampled), optuna (TPE), bohb
    (TuneBOHB, with scheduler.name=bohb)."""
    seeds_per_config: int = 1
    """Seeds each configuration runs with (seed, seed + 1, ...): the searcher is told the
    IQM of their results once all have finished (random, optuna, bohb; the grid of
    auto/grid sweeps a seed range instead)."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    max_concurrent_trials: int | None = None
    """Upper bound on trials at once (null: as many as the cluster fits)."""

    def __post_init__(self) -> None:
        positive(self, "num_samples")
        one_of(self, "mode", ("max", "min"))
        one_of(self, "search", SEARCHES)
        at_least(self, "seeds_per_config", 1)
        if (self.search == "bohb") != (self.scheduler.name == "bohb"):
            key, value = (("scheduler.name", self.scheduler.name) if self.search == "bohb"
                          else ("search", self.search))
            raise ConfigValueError(key, value, "search=bohb and scheduler.name=bohb go "
                                   "together (TuneBOHB with HyperBandForBOHB)")
        if self.seeds_per_config > 1 and self.search not in ("random", "optuna", "bohb"):
            raise ConfigValueError("seeds_per_config", self.seeds_per_config,
                                   "> 1 only with search=random, optuna or bohb (a grid "
                                   "sweeps seed: range(0, N) instead)")
        if self.seeds_per_config > 1 and self.scheduler.name in ("pbt", "pb2"):
            raise ConfigValueError("seeds_per_config", self.seeds_per_config,
                                   "> 1 not with pbt or pb2 (their population sweeps seed: "
                                   "range(0, N))")
        if self.max_concurrent_trials is not None:
            positive(self, "max_concurrent_trials")


@dataclass
class ProgressConfig:
    """What train and sweep print while they run."""

    every_s: float = 10.0
    """Seconds between status lines (trials done, running and pending, the best
    configuration so far, the time left; a train run's budget done and recent return).
    0: none."""
    tune_verbose: int = 0
    """Ray Tune's own output: 0 none, 1 its status tables, 2 with brief trial results,
    3 with detailed ones."""

    def __post_init__(self) -> None:
        at_least(self, "every_s", 0.0)
        one_of(self, "tune_verbose", (0, 1, 2, 3))


@dataclass
class PlayConfig:
    """A logged model played greedily (what evaluate and package share)."""

    model: str | None = None
    """The model: models:/<name>@<alias>, models:/<name>/<version>, models:/<model id>, or
    runs:/<run id>/<path> (final or best)."""
    episodes: int | None = None
    """Episodes to play, on reset seeds seed, seed+1, ... (null: the run's own seeds:
    evaluate plays its evaluation seeds, package its held-out seeds)."""
    seed: int = 0
    """With episodes: the first reset seed."""

    def __post_init__(self) -> None:
        if self.episodes is not None:
            positive(self, "episodes")
        at_least(self, "seed", 0)


@dataclass
class EvaluateConfig(PlayConfig):
    """What python -m pipelines.evaluate plays."""

    run_id: str | None = None
    """Instead of model: the run whose best model plays."""
    video: bool = False
    """Record the first episode as an mp4 (render mode rgb_array, Atari at its native
    resolution) in the evaluation's run."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model and self.run_id:
            raise ConfigValueError("run_id", self.run_id, "give evaluate.model or "
                                     "evaluate.run_id, not both")


@dataclass
class PackageConfig(PlayConfig):
    """What python -m pipelines.package packs for the Hugging Face Hub, and where."""

    dir: str | None = None
    """The folder to write; it must not exist, or be empty."""
    video: bool = True
    """Record replay.mp4, the first evaluation episode."""
    push: bool = False
    """Upload the folder to the Hub as repo_id, with the token from HF_TOKEN or the
    user's login (hf auth login)."""
    repo_id: str | None = None
    """<user or organization>/<name>: the Hub repository of the model (with push)."""
    private: bool = False
    """With push: create the repository private."""


@dataclass
class ReportConfig:
    """What python -m pipelines.report summarizes."""

    sweep: str | None = None
    """The sweep's name (its MLflow parent run's name, sweep.name)."""
    against: str | None = None
    """Another sweep to compare report.sweep with: each configuration of one against
    each of the other, on the envs both ran, written to a run compare-<sweep>-<against>."""
    config: str | None = None
    """Only this configuration of report.sweep (its config tag, e.g. 'algo=dqn')."""
    against_config: str | None = None
    """Only this configuration of report.against (report.sweep's own when against is
    not set): two configurations of one sweep compared."""
    seeds_for: float | None = None
    """A difference of the sweep metric: the seeds per configuration that would detect
    it, at the spreads observed (one-sided Welch's t-test, alpha 0.05, power 0.8)."""

    def __post_init__(self) -> None:
        if self.seeds_for is not None:
            positive(self, "seeds_for")


@dataclass
class PipelineConfig:
    """The root of the composed config."""

    algo: Any = MISSING
    env: EnvConfig = field(default_factory=EnvConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    package: PackageConfig = field(default_factory=PackageConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    progress: ProgressConfig = field(default_factory=ProgressConfig)
    seed: int = 0
    resume: str | None = None
    replay: str | None = None
    """train: <sweep name>/<trial id> of a PBT or PB2 sweep: a fresh run that follows that
    member's hyperparameter schedule (Tune's PopulationBasedTrainingReplay)."""

    def __post_init__(self) -> None:
        at_least(self, "seed", 0)


def register() -> None:
    """Put the schemas into Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=PipelineConfig)
    for name, algorithm in ALGORITHMS.items():
        cs.store(group="algo", name=f"base_{name}", node=algorithm.config_class)
    cs.store(group="env", name="base_env", node=EnvConfig)


register()
