"""One Tune trial: compose its config, run the algorithm, report to Tune and MLflow.

The trial is the only place where an algorithm meets Tune and MLflow, through
:class:`TrialReporter`, which implements the algorithms' Reporter protocol.
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from algos.registry import get_algorithm
from pipelines.config import Composed, flat_params, load
from pipelines.models import log_model
from pipelines.tracking import RunLogger

STATE_FILE = "state.pkl"


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
    space: dict[str, str] = field(default_factory=dict)
    """The swept keys and their expressions, as written."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The sweep settings (search, metric, mode, ...), for a resume to rebuild the Tuner."""

    def to_json(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)


def run_key(ctx: TrialContext, trial_id: str) -> str:
    """The MLflow tag that identifies a trial's run across retries and resumes."""
    return f"{ctx.uid}/{trial_id}"


def save_state(state: Mapping[str, Any], folder: Path) -> None:
    """Write an algorithm's checkpoint state into `folder`."""
    with open(folder / STATE_FILE, "wb") as f:
        pickle.dump(dict(state), f, protocol=pickle.HIGHEST_PROTOCOL)


def load_state(folder: str | Path) -> dict[str, Any]:
    """Read back what save_state wrote."""
    with open(Path(folder) / STATE_FILE, "rb") as f:
        return pickle.load(f)


class TrialReporter:
    """The Reporter an algorithm gets inside a trial: MLflow first, then Tune.

    MLflow goes first so that a trial stopped by the scheduler (inside tune.report) has
    its last metrics recorded; a restart from an earlier checkpoint does not log them
    twice (RunLogger's watermark).
    """

    def __init__(self, logger: RunLogger) -> None:
        self.logger = logger
        self.last_state: Mapping[str, Any] | None = None

    def report(
        self,
        step: int,
        metrics: Mapping[str, float],
        history: Mapping[str, Sequence[tuple[int, float]]] | None = None,
        state: Mapping[str, Any] | None = None,
    ) -> None:
        """Log to MLflow, then tune.report with a checkpoint when `state` is given."""
        from ray import tune

        self.logger.log(step, metrics, history)
        result = {**metrics, "train/env_steps": float(step)}
        if state is None:
            tune.report(result)
            return
        self.last_state = state
        folder = Path(tempfile.mkdtemp(prefix="rlpipe-ckpt-"))
        try:
            save_state(state, folder)
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def open_run(ctx: TrialContext, composed: Composed, trial_id: str) -> RunLogger:
    """Create (or continue, after a failure) the trial's MLflow run."""
    cfg = composed.cfg
    tags = {
        "algo": composed.choices.get("algo"),
        "env": composed.choices.get("env"),
        "seed": cfg.seed,
        "git_commit": ctx.git_commit,
        "mlflow.source.git.commit": ctx.git_commit,
        "tune.trial_id": trial_id,
        "sweep": ctx.name,
    }
    if composed.choices.get("experiment"):
        tags["experiment"] = composed.choices["experiment"]
    trial_overrides = [o for o in composed.overrides if o not in ctx.fixed]
    run_name = ",".join(trial_overrides) if ctx.parent_run_id else ctx.name
    return RunLogger.open(
        ctx.tracking_uri,
        ctx.experiment_id,
        run_key(ctx, trial_id),
        run_name=run_name or ctx.name,
        tags=tags,
        params=flat_params(composed.container),
        config=composed.container,
        parent_run_id=ctx.parent_run_id,
    )


def quiet_ray_logs() -> None:
    """Ray Train/Tune log every checkpoint at INFO from the trial; keep warnings only."""
    import logging

    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune trainable: `config` holds one value per swept key."""
    from ray import tune

    quiet_ray_logs()
    overrides = list(ctx.fixed) + [f"{k}={v}" for k, v in config.items()]
    composed = load(overrides)
    cfg = composed.cfg
    algorithm = get_algorithm(cfg.algo.name)
    trial_id = tune.get_context().get_trial_id()
    logger = open_run(ctx, composed, trial_id)
    checkpoint = tune.get_checkpoint()
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = load_state(folder)
        logger.set_tags({"rlpipe.restored_from": checkpoint.path})
    reporter = TrialReporter(logger)
    try:
        result = algorithm.train(cfg.algo, cfg.env, cfg.seed, reporter, state)
        log_model(logger, cfg.algo.name, result, composed)
    except SystemExit:
        # tune.report exits the trial's thread when the scheduler stops the trial early.
        logger.set_tags({"tune.stopped_early": "true"})
        logger.finish("FINISHED")
        raise
    except BaseException:
        logger.finish("FAILED")
        raise
    logger.finish("FINISHED")
