"""One Tune trial, step by step: find its config (carried from the plan), open or find
again its MLflow run, restore its checkpoint, train, test the best agent on the held-out
seeds, log the agents as models, and close the run. The only place where an algorithm
meets Tune and MLflow: through the TrialReporter it trains with."""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from algos.core.finite import NonFiniteError
from algos.core.metrics import ENV_STEPS
from pipelines.cluster.connect import cluster_tags, node_tags
from pipelines.config.compose import Composed, flat_params
from pipelines.config.space import CONFIG_TAG, config_label
from pipelines.results.play import held_out_test
from pipelines.tracking import series
from pipelines.tracking.buffer import WriteBuffer
from pipelines.tracking.lineage import (
    Continuation,
    StepShift,
    continuation,
    record_start,
    values_in_use,
)
from pipelines.tracking.models import log_agents, log_test, model_tag
from pipelines.tracking.run_logger import RunLogger, find_run
from pipelines.tracking.system_metrics import start_system_metrics, stop_system_metrics
from pipelines.tune.checkpoints import Checkpointer, restore_checkpoint
from pipelines.tune.context import TrialContext, budget_of
from pipelines.tune.progress import ProgressNotes, note_key
from pipelines.tune.replay import ReplaySchedule, ScheduleChange, due
from pipelines.tune.reporter import ReportParts, TrialReporter
from pipelines.tune.schedulers import PAUSING
from pipelines.tune.videos import EvaluationVideos

THREAD_TIMEOUT_VAR = "TUNE_FUNCTION_THREAD_TIMEOUT_S"
"""How long Tune waits for a stopped trial's thread before it reuses its actor (2 s)."""
FAILURE_TAG = "rlpipe.failure"
"""Tag of a run that failed in a way a retry cannot mend (non_finite: diverged)."""
REPLAY_TAG = "rlpipe.replay_of"
"""Tag of a replay's run: the <sweep>/<trial> whose schedule it follows."""
log = logging.getLogger("rlpipe")


@dataclass
class Trial:
    """One trial as its steps see it."""

    ctx: TrialContext
    trial_id: str
    config: dict[str, Any]
    """Tune's config: one value per swept key (a replay's: the values in use)."""
    composed: Composed
    existing: Any
    """Its MLflow run, found by its run key (a retry's, a resumed trial's), or None."""
    clock: dict[str, float] = field(default_factory=dict)
    """When each step ended (time.monotonic())."""

    @property
    def run_key(self) -> str:
        """The tag value that finds its run again."""
        return self.ctx.run_key(self.trial_id)

    def mark(self, step: str) -> None:
        """Note that `step` ended now."""
        self.clock[step] = time.monotonic()


@dataclass
class Start:
    """Where the algorithm starts: from scratch, its own checkpoint, or a donor's."""

    state: dict[str, Any] | None
    go_on: Continuation
    reports: int
    """Reports made up to the checkpoint."""


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune trainable: `config` holds one value per swept key."""
    from ray import tune

    entered = time.monotonic()
    prepare_process()
    trial = Trial(ctx, tune.get_context().get_trial_id(), dict(config),
                  ctx.composed(config), None)
    trial.clock["entered"] = entered
    trial.existing = find_run(ctx.tracking_uri, ctx.experiment_id, trial.run_key)
    if finished_before(trial.existing):  # tell Tune its last result; log nothing again
        tune.report({**trial.existing.data.metrics, series.PROGRESS: 1.0, series.DONE: True})
        return
    logger = open_run(trial)
    start = restore(trial, logger)
    reporter = build_reporter(trial, logger, start)
    monitor = start_system_metrics(logger, trial.composed.cfg.tracking.system_metrics_every_s,
                                   resume=logger.existed)
    trial.mark("setup")
    try:
        result = train(trial, logger, reporter, start)
        test_and_log_models(trial, logger, reporter, result)
    except BaseException as error:
        end_early(trial, logger, reporter, monitor, error)
        return
    finish(trial, logger, reporter, monitor)


def prepare_process() -> None:
    """Quiet Ray's and MLflow's INFO lines in the trial (every checkpoint, every model's
    input example), and give a paused trial's thread time to end: it ends after it
    flushed its points (PBT pauses at every exploit), and Tune reuses the actor only if it
    ends within THREAD_TIMEOUT_VAR, else fails the trial."""
    for name in ("ray.train", "ray.tune", "mlflow.pyfunc", "mlflow.models"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault(THREAD_TIMEOUT_VAR, "30")


def finished_before(run) -> bool:
    """Whether a trial's run (found by its key) already finished with its models logged: a
    resumed sweep whose saved state did not record that the trial had ended."""
    return run is not None and run.info.status == "FINISHED" and model_tag("final") in (
        run.data.tags)


def run_tags(trial: Trial) -> dict[str, Any]:
    """The tags a trial's run is created with: what it trains, its configuration (a
    sweep's swept overrides; a train run's own), the code and the sweep."""
    ctx, composed = trial.ctx, trial.composed
    tags = {
        "algo": composed.choices.get("algo"),
        "env": composed.choices.get("env"),
        "seed": composed.cfg.seed,
        "git_commit": ctx.git_commit,
        "mlflow.source.git.commit": ctx.git_commit,
        "tune.trial_id": trial.trial_id,
        "sweep": ctx.name,
    }
    if composed.choices.get("experiment"):
        tags["experiment"] = composed.choices["experiment"]
    if ctx.settings.replay_of:
        tags[REPLAY_TAG] = ctx.settings.replay_of
    swept = [o for o in composed.overrides if o not in ctx.fixed]
    tags[CONFIG_TAG] = config_label(swept if ctx.parent_run_id else composed.overrides)
    return tags


def where_it_runs(trial: Trial) -> dict[str, str]:
    """Tags of where the trial runs: the node, its GPUs, the learner's device; and for a
    train run (no parent to hold it) the cluster. Set again on a retry, which may run
    elsewhere."""
    where = node_tags()
    device = getattr(trial.composed.cfg.algo, "device", None)
    if device:  # a network's learner (torch is imported only where there is one)
        from algos.core.networks import resolve_device

        where["learner.device"] = str(resolve_device(device))
    if not trial.ctx.parent_run_id and trial.ctx.cluster:
        where.update(cluster_tags(trial.ctx.cluster))
    return where


def open_run(trial: Trial) -> RunLogger:
    """The trial's MLflow run: the one found by its run key continued after a failure or
    a resume, else created."""
    ctx, composed = trial.ctx, trial.composed
    where = where_it_runs(trial)
    if trial.existing is not None:
        return RunLogger.continue_run(ctx.tracking_uri, trial.existing, where)
    swept = [o for o in composed.overrides if o not in ctx.fixed]
    return RunLogger.create(
        ctx.tracking_uri, ctx.experiment_id, trial.run_key,
        run_name=(",".join(swept) if ctx.parent_run_id else ctx.name) or ctx.name,
        tags={**run_tags(trial), **where},
        params=flat_params(composed.container), config=composed.container,
        parent_run_id=ctx.parent_run_id)


def restore(trial: Trial, logger: RunLogger) -> Start:
    """Where the algorithm starts: Tune's checkpoint of the trial, if it has one (its own,
    or a donor's after an exploit, recorded on the run), and a replay's values so far;
    what the member runs with is logged (hp/*)."""
    ctx = trial.ctx
    state, origin = restore_checkpoint(logger)
    donor_run = None
    if origin is not None and origin.run_key not in (None, trial.run_key):
        found = find_run(ctx.tracking_uri, ctx.experiment_id, origin.run_key)
        donor_run = found.info.run_id if found is not None else None
    go_on = continuation(trial.run_key, origin, trial.existing, donor_run)
    reports = origin.reports if origin is not None else 0
    if ctx.settings.schedule:  # a replay's values so far
        trial.config = {**trial.config, **due(ctx.settings.schedule, reports)}
        trial.composed = ctx.composed(trial.config)
    record_start(logger, trial.existing, ctx.settings.mutations,
                 values_in_use(trial.composed.container, ctx.settings.mutations), go_on)
    return Start(state, go_on, reports)


def build_reporter(trial: Trial, logger: RunLogger, start: Start) -> TrialReporter:
    """The reporter the algorithm trains with, built whole."""
    ctx, cfg = trial.ctx, trial.composed.cfg
    # Schedulers that pause trials restart them from a newest checkpoint: one a report.
    every_s = 0.0 if ctx.settings.scheduler in PAUSING else cfg.cluster.checkpoint_every_s
    videos = None
    if cfg.tracking.video_every:
        evaluation = trial.composed.algorithm.evaluation(cfg.algo)
        videos = EvaluationVideos(logger, cfg.tracking.video_every, cfg.env,
                                  evaluation["seeds"][0], evaluation["max_steps"])
    parts = ReportParts(
        buffer=WriteBuffer(logger, cfg.tracking.flush_every_s),
        checkpointer=Checkpointer(every_s, trial.run_key, trial.trial_id),
        shift=StepShift(dict(start.go_on.shift)),
        schedule=ReplaySchedule(ctx.settings.schedule),
        notes=ProgressNotes(budget_of(trial.composed), note_key(ctx.uid, trial.trial_id)),
        videos=videos, max_points=cfg.tracking.max_points_per_report)
    return TrialReporter(parts, reports=start.reports, last_step=start.go_on.step)


def train(trial: Trial, logger: RunLogger, reporter: TrialReporter, start: Start) -> Any:
    """The algorithm's train(), from the start's state; a replay goes on under each new
    configuration of its schedule (ScheduleChange) in this process."""
    state = start.state
    while True:
        cfg = trial.composed.cfg
        try:
            result = trial.composed.algorithm.train(cfg.algo, cfg.env, cfg.seed, reporter,
                                                    state)
            trial.mark("trained")
            return result
        except ScheduleChange as change:
            trial.config, state = {**trial.config, **change.values}, change.state
            trial.composed = trial.ctx.composed(trial.config)
            mutations = trial.ctx.settings.mutations
            record_start(logger, logger.client.get_run(logger.run_id), mutations,
                         values_in_use(trial.composed.container, mutations),
                         Continuation(step=reporter.last_step))


def test_and_log_models(trial: Trial, logger: RunLogger, reporter: TrialReporter,
                        result: Any) -> None:
    """The run's metrics written; the held-out test of its best agent; the final and best
    agents logged as models, the test's figures linked to the best."""
    reporter.parts.buffer.flush()
    test = held_out_test(trial.composed, result)
    trial.mark("tested")
    ids = log_agents(logger, result, trial.composed, reporter.last_step, test)
    log_test(logger, test, reporter.last_step, ids["best"])
    trial.mark("models")


def end_early(trial: Trial, logger: RunLogger, reporter: TrialReporter, monitor,
              error: BaseException) -> None:
    """A trial that did not end with its models logged: its points written, its monitor
    stopped, then

    - stopped or paused by its scheduler (tune.report raised SystemExit: PBT's exploit
      restarts it from a donor's checkpoint): raised on; the driver's callback marks a
      stopped trial's run FINISHED, a paused one's goes on;
    - diverged (NonFiniteError): retrying from the last checkpoint would diverge again.
      The run fails with the value where it went bad; Tune sees a finished trial (no
      retry) whose last result says it failed, and the driver counts it;
    - any other error: the run FAILED, and the error raised on (Tune retries it)."""
    try:
        reporter.parts.buffer.flush()
        if isinstance(error, NonFiniteError):
            logger.log_metrics({error.name: error.value}, step=error.step)
    finally:  # a monitor left running would go on sampling into this run
        stop_system_metrics(monitor)
    if isinstance(error, SystemExit):
        raise error
    if not isinstance(error, NonFiniteError):
        logger.finish("FAILED")
        raise error
    from ray import tune

    logger.set_tags({FAILURE_TAG: "non_finite", f"{FAILURE_TAG}.message": str(error)})
    logger.finish("FAILED")
    print(f"Trial {trial.trial_id} failed: {error}", file=sys.stderr)
    tune.report({trial.ctx.settings.metric: float("nan"), series.FAILURE: "non_finite",
                 series.FAILURE_MESSAGE: str(error), ENV_STEPS: float(error.step)})


def finish(trial: Trial, logger: RunLogger, reporter: TrialReporter, monitor) -> None:
    """The trial's end: its monitor stopped, where its time went logged, the run
    FINISHED, and its last report told to Tune."""
    stop_system_metrics(monitor)
    clock, spent = trial.clock, reporter.time_spent()
    logger.log_metrics({
        series.TRIAL_SETUP_S: clock["setup"] - clock["entered"],
        series.TRIAL_TRAIN_S: clock["trained"] - clock["setup"] - sum(spent.values()),
        series.TRIAL_TRACKING_S: spent["tracking"],
        series.TRIAL_CHECKPOINT_S: spent["checkpoint"],
        series.TRIAL_REPORT_WAIT_S: spent["report_wait"],
        series.TRIAL_TEST_S: clock["tested"] - clock["trained"],
        series.TRIAL_MODELS_S: clock["models"] - clock["tested"],
        series.TRIAL_TEARDOWN_S: time.monotonic() - clock["models"],
    })
    logger.finish("FINISHED")
    reporter.report_final()
