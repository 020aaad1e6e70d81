"""One Tune trial: compose its config, run the algorithm, report to Tune and MLflow.

The trial is the only place where an algorithm meets Tune and MLflow, through
:class:`TrialReporter`, which implements the algorithms' Reporter protocol.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from algos.core.finite import NonFiniteError
from algos.core.metrics import ENV_STEPS
from algos.registry import get_algorithm
from pipelines import private_api
from pipelines.cluster import cluster_tags, node_tags
from pipelines.config import Composed, compose_and_check, flat_params
from pipelines.lineage import (
    COUNTERS,
    Continuation,
    Origin,
    continuation,
    due,
    record_start,
    values_in_use,
)
from pipelines.models import log_agents, model_tag, record_episode
from pipelines.schedulers import PAUSING
from pipelines.schema import ClusterConfig, ProgressConfig
from pipelines.space import CONFIG_TAG, TRIAL_INDEX, config_label
from pipelines.system_metrics import start_system_metrics, stop_system_metrics
from pipelines.tracking import RunLogger, find_run, is_outage

THREAD_TIMEOUT_VAR = "TUNE_FUNCTION_THREAD_TIMEOUT_S"
"""How long Tune waits for a stopped trial's thread before it reuses its actor (2 s)."""
STATE_FILE = "state.pkl"
STEP_FILE = "step.json"
"""The step of the report a checkpoint was taken with (the run's step when it resumes)."""
log = logging.getLogger("rlpipe")
FAILURE_TAG = "rlpipe.failure"
"""Tag of a run that failed in a way a retry cannot mend (non_finite: diverged)."""
FAILURE_KEY, FAILURE_MESSAGE_KEY = "rlpipe/failure", "rlpipe/failure_message"
"""Keys of a trial's last Tune result that say it failed without an error (no retry)."""
DONE = "done"
"""Tune's key of a trial's last result: it ends the trial, no scheduler acts on it."""
PROGRESS_KEY = "rlpipe/progress"
"""Key of a trial's Tune results (not logged to MLflow) for the driver's status line: the
fraction of its training budget done."""


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
    """A replay's changes: after its n-th report, these values (pipelines.lineage)."""

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


@dataclass
class TrialContext:
    """What every trial of one sweep shares; plain data, saved beside the Tune run."""

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

    def to_json(self) -> dict[str, Any]:
        """Plain data (saved beside the Tune run, for a resume)."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialContext:
        """From to_json()."""
        return cls(**{**data, "settings": RunSettings.from_json(data["settings"])})

    def progress_key(self, trial_id: str) -> str:
        """Where a trial leaves its progress between reports for the driver."""
        return f"progress/{self.uid}/{trial_id}"


def trial_overrides(ctx: TrialContext, config: dict[str, Any]) -> list[str]:
    """A trial's overrides: the sweep's fixed ones, then one per sampled dimension (a
    repeated configuration's index: its seed)."""
    return list(ctx.fixed) + [f"seed={ctx.settings.seed + int(v)}" if k == TRIAL_INDEX
                              else f"{k}={v}" for k, v in config.items()]


def run_key(ctx: TrialContext, trial_id: str) -> str:
    """The MLflow tag that identifies a trial's run across retries and resumes."""
    return f"{ctx.uid}/{trial_id}"


def save_state(state: Mapping[str, Any], folder: Path, origin: Origin) -> None:
    """Write an algorithm's checkpoint state into `folder`, and where it was taken (the
    report step, the trial, its counters: STEP_FILE)."""
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


def downsample(series: Sequence[tuple], max_points: int) -> list[tuple]:
    """At most `max_points` points: consecutive points averaged in near-equal groups, each
    stepped (and, for (step, value, time) points, stamped) at its group's last point. 0
    keeps them all."""
    n = len(series)
    if max_points <= 0 or n <= max_points:
        return list(series)
    bounds = [round(i * n / max_points) for i in range(max_points + 1)]
    out = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        group = series[lo:hi]
        mean = sum(p[1] for p in group) / len(group)
        out.append((group[-1][0], mean, *group[-1][2:]))
    return out


class ScheduleChange(Exception):
    """A replay's schedule changes hyperparameters after this report: the algorithm stops
    here, and goes on from `state` under the new values (as a PBT member after explore,
    in the same process)."""

    def __init__(self, state: dict[str, Any], values: dict[str, Any]) -> None:
        super().__init__(f"schedule: {values}")
        self.state, self.values = state, values


class TrackingOutage(RuntimeError):
    """The tracking server stayed unreachable longer than a trial can hold its points."""


BUFFER_LIMIT = 500_000
"""Most metric points a trial holds while the tracking server is unreachable (about 100 MB);
past it the trial fails, and its retry regenerates them from its last checkpoint."""
FINAL_WAIT_S = 600.0
"""How long a trial's last report waits for the tracking server to come back."""


@dataclass
class EvaluationVideos:
    """tracking.video_every: one evaluation episode recorded at every `every`-th
    evaluation, from the evaluation's first reset seed, into the run as
    videos/step-<env step>.mp4. A trial retried from a checkpoint records the same names
    again (the artifact is replaced, not doubled); a video that cannot be made or
    uploaded is a warning, never the trial's failure."""

    logger: RunLogger
    every: int
    env: Any
    """The run's EnvConfig (Atari videos show the game's own frames)."""
    seed: int
    max_steps: int | None

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


VIDEOS = "videos"
"""The run's artifact folder of tracking.video_every's videos."""


def video_name(step: int) -> str:
    """The file name of the video of the evaluation at env step `step` (zero-padded, so
    names sort by step)."""
    return f"step-{step:012d}.mp4"


class TrialReporter:
    """The Reporter an algorithm gets inside a trial: to MLflow and to Tune.

    Every report goes to Tune at once (schedulers and searchers see it). MLflow writes are
    buffered for up to `flush_every_s`, and a checkpoint is kept at most every
    `checkpoint_every_s` and at the last report. A checkpoint waits until the buffer is
    written, so a trial restarted from its newest checkpoint regenerates exactly what was
    not written yet, and RunLogger's watermark skips what was.

    While the tracking server cannot be reached (after the MLflow client's own retries)
    the trial trains on: its points stay buffered (at most BUFFER_LIMIT, the size logged)
    and are tried again at each flush; checkpoints wait; the last report waits up to
    FINAL_WAIT_S for the server.
    """

    def __init__(
        self,
        logger: RunLogger,
        checkpoint_every_s: float,
        flush_every_s: float,
        max_points_per_report: int = 0,
        budget: tuple[str, float] | None = None,
        progress_key: str | None = None,
        run_key: str | None = None,
        trial_id: str | None = None,
    ) -> None:
        self.logger = logger
        self.run_key, self.trial_id = run_key, trial_id
        """Whose checkpoints these are (written with each: Origin)."""
        self.shift: dict[str, float] = {}
        """Added to the algorithm's counters (env steps, episodes) to make the run's:
        nonzero after an exploit (pipelines.lineage)."""
        self.budget = budget
        """(the metric that counts toward the training budget, the budget)."""
        self.progress_key = progress_key
        """Where progress notes go for the driver's status line (None: nowhere)."""
        self.max_points = max_points_per_report
        self.checkpoint_every_s = checkpoint_every_s
        self.flush_every_s = flush_every_s
        self.unsent: list[list] = []
        """Reports' points not written yet, oldest first."""
        self.outage_since: float | None = None
        self.last_checkpoint = self.last_flush = time.monotonic()
        self.seconds = {"tracking": 0.0, "checkpoint": 0.0, "report_wait": 0.0}
        """Where the trial's time outside training went: MLflow writes, checkpoints (saved
        and handed to Tune), waiting in tune.report for the driver to take a result."""
        self.last_step = 0
        """The step of the newest report (a resumed run's: its checkpoint's, until it
        reports)."""
        self.final: tuple[dict[str, Any], Path | None] | None = None
        """The last report's result and checkpoint folder, until report_final."""
        self.reports = 0
        """Reports the algorithm made (a resumed run's: up to its checkpoint)."""
        self.schedule: list[tuple[int, dict[str, Any]]] = []
        """A replay's changes: after the n-th report, new values (ScheduleChange)."""
        self.videos: EvaluationVideos | None = None
        """tracking.video_every's recorder (None: no videos)."""

    def flush(self) -> bool:
        """Write the buffered points; True when none is left. A tracking outage keeps them
        for the next flush (False); a refusal by the server, or a buffer past
        BUFFER_LIMIT, raises."""
        now = self.last_flush = time.monotonic()
        try:
            self.logger.send(self.unsent)
            self.seconds["tracking"] += time.monotonic() - now
        except Exception as e:
            if not is_outage(e):
                raise
            held = sum(len(points) for points in self.unsent)
            self.outage_since = self.outage_since or now
            down = now - self.outage_since
            if held > BUFFER_LIMIT:
                raise TrackingOutage(
                    f"the tracking server has been unreachable for {down:.0f} s and "
                    f"{held:,} metric points are held, more than {BUFFER_LIMIT:,}: "
                    "failing the trial; its retry regenerates them from its last checkpoint"
                ) from e
            log.warning("tracking server unreachable for %.0f s (%s): %d reports (%d points) "
                        "held, tried again at the next flush", down,
                        str(e).splitlines()[0][:200], len(self.unsent), held)
            return False
        if self.outage_since is not None:
            log.warning("tracking server reachable again after %.0f s: held points written",
                        now - self.outage_since)
            self.outage_since = None
        return True

    def wait_for_tracking(self, seconds: float = FINAL_WAIT_S, every: float = 5.0) -> None:
        """Flush until everything is written, for up to `seconds` (raises TrackingOutage)."""
        deadline = time.monotonic() + seconds
        while not self.flush():
            if time.monotonic() > deadline:
                raise TrackingOutage(
                    f"the tracking server did not come back within {seconds:.0f} s of the "
                    "trial's end; its retry regenerates the unwritten points")
            time.sleep(every)

    def _progress(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        """The share of the budget done at a report, for the status line."""
        if not self.budget or self.budget[1] <= 0:
            return {}
        counter, total = self.budget
        done = step if counter == ENV_STEPS else metrics.get(counter)
        return {} if done is None else {PROGRESS_KEY: min(1.0, float(done) / total)}

    def progress(self, step: int, done: float) -> None:
        """Between reports: leave the fraction of the budget done where the driver's status
        line reads it (the cluster's key-value store; never fails the trial)."""
        if self.progress_key is None or not self.budget or self.budget[1] <= 0:
            return
        try:
            private_api.kv_put(self.progress_key, json.dumps(
                {"done": min(1.0, float(done) / self.budget[1])}).encode())
        except Exception as e:  # a status line must never stop training
            log.debug("progress note not written: %s", e)

    def report(self, step: int, metrics: Mapping[str, float],
               history: Mapping[str, Sequence[tuple]] | None = None,
               state: Mapping[str, Any] | None = None, final: bool = False,
               agent: Callable[[], Any] | None = None) -> None:
        """Buffer for MLflow; a video when one is due; tune.report, with a checkpoint when
        one is due."""
        # Tune (and its schedulers) sees the algorithm's counters; the run logs the
        # member's own, which differ after an exploit (pipelines.lineage).
        result = {**metrics, **self._progress(step, metrics)}
        counters = {k: float(step if k == ENV_STEPS else metrics[k])
                    for k in COUNTERS if k == ENV_STEPS or k in metrics}
        if self.shift:
            step += int(self.shift.get(ENV_STEPS, 0))
            metrics = {**metrics, **{k: v + self.shift.get(k, 0.0)
                                     for k, v in counters.items()}}
            history = {k: [(p[0] + self.shift.get(ENV_STEPS, 0), *p[1:]) for p in v]
                       for k, v in (history or {}).items()}
        self.last_step = step
        history = {k: downsample(v, self.max_points) for k, v in (history or {}).items()}
        self.unsent.append(self.logger.report_points(step, metrics, history))
        if self.videos is not None and agent is not None:
            self.videos.record(self.reports + 1, step, agent)
        now = time.monotonic()
        checkpoint = state is not None and (
            final or now - self.last_checkpoint >= self.checkpoint_every_s)
        written = False
        if checkpoint or final or now - self.last_flush >= self.flush_every_s:
            written = self.flush()
        if final and not written:
            self.wait_for_tracking()
            written = True
        folder = None
        started = time.monotonic()
        if checkpoint and written and state is not None:  # during an outage: after it
            folder = Path(tempfile.mkdtemp(prefix="rlpipe-ckpt-"))
            save_state(state, folder, Origin(
                step=step, run_key=self.run_key, trial_id=self.trial_id, counters=counters,
                shift=dict(self.shift), reports=self.reports + 1))
            self.last_checkpoint = now
            self.seconds["checkpoint"] += time.monotonic() - started
        self.reports += 1
        if final:
            # Told to Tune once the models are logged (report_final), as done: the trial
            # ends there, and no scheduler acts on it (a stop at max_t, an exploit).
            self.final = ({**result, DONE: True}, folder)
            return
        self._tell_tune(result, folder)
        changes = {k: v for at, values in self.schedule if at == self.reports
                   for k, v in values.items()}
        if changes and state is not None and folder is not None:
            raise ScheduleChange(dict(state), changes)

    def report_final(self) -> None:
        """Give Tune the run's last report, held since the algorithm made it."""
        if self.final is not None:
            result, folder = self.final
            self.final = None
            self._tell_tune(result, folder)

    def _tell_tune(self, result: dict[str, Any], folder: Path | None) -> None:
        """tune.report, with the checkpoint in `folder` (removed after) when there is one.
        Raises SystemExit when the scheduler stops or pauses the trial."""
        from ray import tune

        started = time.monotonic()
        try:
            checkpoint = tune.Checkpoint.from_directory(folder) if folder else None
            tune.report(result, checkpoint=checkpoint)
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            self.seconds["checkpoint" if folder else "report_wait"] += (
                time.monotonic() - started)


def run_tags(ctx: TrialContext, composed: Composed, trial_id: str) -> dict[str, Any]:
    """The tags a trial's run is created with: what it trains, its configuration (a
    sweep's swept overrides; a train run's own), the code and the sweep."""
    tags = {
        "algo": composed.choices.get("algo"),
        "env": composed.choices.get("env"),
        "seed": composed.cfg.seed,
        "git_commit": ctx.git_commit,
        "mlflow.source.git.commit": ctx.git_commit,
        "tune.trial_id": trial_id,
        "sweep": ctx.name,
    }
    if composed.choices.get("experiment"):
        tags["experiment"] = composed.choices["experiment"]
    if ctx.settings.replay_of:
        tags["rlpipe.replay_of"] = ctx.settings.replay_of
    swept = [o for o in composed.overrides if o not in ctx.fixed]
    tags[CONFIG_TAG] = config_label(swept if ctx.parent_run_id else composed.overrides)
    return tags


def where_it_runs(ctx: TrialContext, composed: Composed) -> dict[str, str]:
    """Tags of where the trial runs: the node, its GPUs, the learner's device; and for a
    train run (no parent to hold it) the cluster. Set again on a retry, which may run
    elsewhere."""
    where = node_tags()
    device = getattr(composed.cfg.algo, "device", None)
    if device:  # a network's learner (torch is imported only where there is one)
        from algos.core.networks import resolve_device

        where["learner.device"] = str(resolve_device(device))
    if not ctx.parent_run_id and ctx.cluster:
        where.update(cluster_tags(ctx.cluster))
    return where


def finished_before(run) -> bool:
    """Whether a trial's run (found by its key) already finished with its models logged: a
    resumed sweep whose saved state did not record that the trial had ended."""
    return run is not None and run.info.status == "FINISHED" and model_tag("final") in (
        run.data.tags)


def open_run(ctx: TrialContext, composed: Composed, trial_id: str, existing) -> RunLogger:
    """The trial's MLflow run: `existing` (found by its run key) continued after a failure
    or a resume, else created."""
    where = where_it_runs(ctx, composed)
    if existing is not None:
        return RunLogger.continue_run(ctx.tracking_uri, existing, where)
    swept = [o for o in composed.overrides if o not in ctx.fixed]
    return RunLogger.create(
        ctx.tracking_uri, ctx.experiment_id, run_key(ctx, trial_id),
        run_name=(",".join(swept) if ctx.parent_run_id else ctx.name) or ctx.name,
        tags={**run_tags(ctx, composed, trial_id), **where},
        params=flat_params(composed.container), config=composed.container,
        parent_run_id=ctx.parent_run_id)


def budget_of(algorithm, algo_cfg) -> tuple[str, float]:
    """(the metric that counts toward the run's training budget, the budget)."""
    field_name, counter = algorithm.budget
    return counter, float(getattr(algo_cfg, field_name))


def quiet_ray_logs() -> None:
    """Ray Train/Tune log every checkpoint, MLflow every model's input example, at INFO from
    the trial; keep warnings only."""
    for name in ("ray.train", "ray.tune", "mlflow.pyfunc", "mlflow.models"):
        logging.getLogger(name).setLevel(logging.WARNING)


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
    logger.set_tags({"rlpipe.restored_from": checkpoint.path})
    return state, origin


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune trainable: `config` holds one value per swept key."""
    from ray import tune

    entered = time.monotonic()
    quiet_ray_logs()
    # A paused trial's thread ends after it flushed its points (PBT pauses at every
    # exploit); Tune reuses the actor only if it ends within this, else fails the trial.
    os.environ.setdefault(THREAD_TIMEOUT_VAR, "30")
    composed = compose_and_check(trial_overrides(ctx, config))
    cfg = composed.cfg
    algorithm = get_algorithm(cfg.algo.name)
    trial_id = tune.get_context().get_trial_id()
    existing = find_run(ctx.tracking_uri, ctx.experiment_id, run_key(ctx, trial_id))
    if finished_before(existing):  # tell Tune its last result; log nothing again
        tune.report({**existing.data.metrics, PROGRESS_KEY: 1.0, DONE: True})
        return
    logger = open_run(ctx, composed, trial_id, existing)
    state, origin = restore_checkpoint(logger)
    donor_run = None
    if origin is not None and origin.run_key not in (None, run_key(ctx, trial_id)):
        found = find_run(ctx.tracking_uri, ctx.experiment_id, origin.run_key)
        donor_run = found.info.run_id if found is not None else None
    go_on = continuation(run_key(ctx, trial_id), origin, existing, donor_run)
    reports = origin.reports if origin is not None else 0
    config = {**config, **due(ctx.settings.schedule, reports)}  # a replay's, so far
    if ctx.settings.schedule:
        composed = compose_and_check(trial_overrides(ctx, config))
        cfg = composed.cfg
    record_start(logger, existing, ctx.settings.mutations,
                 values_in_use(composed.container, ctx.settings.mutations), go_on)
    monitor = start_system_metrics(logger, cfg.tracking.system_metrics_every_s,
                                   resume=logger.existed)
    # Schedulers that pause trials restart them from a newest checkpoint: one a report.
    every_s = 0.0 if ctx.settings.scheduler in PAUSING else cfg.cluster.checkpoint_every_s
    reporter = TrialReporter(logger, every_s, cfg.tracking.flush_every_s,
                             cfg.tracking.max_points_per_report,
                             budget_of(algorithm, cfg.algo), ctx.progress_key(trial_id),
                             run_key=run_key(ctx, trial_id), trial_id=trial_id)
    reporter.last_step, reporter.shift = go_on.step, go_on.shift
    reporter.reports, reporter.schedule = reports, list(ctx.settings.schedule)
    if cfg.tracking.video_every:
        evaluation = algorithm.evaluation(cfg.algo)
        reporter.videos = EvaluationVideos(logger, cfg.tracking.video_every, cfg.env,
                                           evaluation["seeds"][0], evaluation["max_steps"])
    try:
        training = time.monotonic()
        while True:
            try:
                result = algorithm.train(cfg.algo, cfg.env, cfg.seed, reporter, state)
                break
            except ScheduleChange as change:  # a replay: go on under the new values
                config, state = {**config, **change.values}, change.state
                composed = compose_and_check(trial_overrides(ctx, config))
                cfg = composed.cfg
                record_start(logger, logger.client.get_run(logger.run_id),
                             ctx.settings.mutations,
                             values_in_use(composed.container, ctx.settings.mutations),
                             Continuation(step=reporter.last_step))
        trained = time.monotonic()
        reporter.flush()
        logging_models = time.monotonic()
        log_agents(logger, result, composed, reporter.last_step)
        models_s = time.monotonic() - logging_models
    except SystemExit:
        # tune.report exits the trial's thread when the scheduler stops the trial early,
        # or pauses it (PBT's exploit restarts it from a donor's checkpoint): the driver's
        # callback marks a stopped trial's run FINISHED; a paused one's goes on.
        reporter.flush()
        stop_system_metrics(monitor)
        raise
    except NonFiniteError as e:
        # Diverged: retrying from the last checkpoint would diverge again. The run fails
        # with the value where it went bad; Tune sees a finished trial (no retry) whose
        # last result says it failed, and the driver counts it among the failures.
        reporter.flush()
        logger.log_metrics({e.name: e.value}, step=e.step)
        stop_system_metrics(monitor)
        logger.set_tags({FAILURE_TAG: "non_finite", f"{FAILURE_TAG}.message": str(e)})
        logger.finish("FAILED")
        print(f"Trial {trial_id} failed: {e}", file=sys.stderr)
        tune.report({ctx.settings.metric: float("nan"), FAILURE_KEY: "non_finite",
                     FAILURE_MESSAGE_KEY: str(e), ENV_STEPS: float(e.step)})
        return
    except BaseException:
        reporter.flush()
        stop_system_metrics(monitor)
        logger.finish("FAILED")
        raise
    stop_system_metrics(monitor)
    # Where this trial's time went (benchmarks/sweep_efficiency adds them up).
    spent = reporter.seconds
    logger.log_metrics({
        "perf/trial_setup_s": training - entered,
        "perf/trial_train_s": trained - training - sum(spent.values()),
        **{f"perf/trial_{k}_s": v for k, v in spent.items()},
        "perf/trial_models_s": models_s,
        "perf/trial_teardown_s": time.monotonic() - trained - models_s,
    })
    logger.finish("FINISHED")
    reporter.report_final()
