"""The Tuner of a launch: its trainable with each trial's resources, its search space,
searcher and scheduler, what a failure retries, and the driver's callbacks."""

from __future__ import annotations

from typing import Any

from pipelines.cluster.capacity import trial_bundles
from pipelines.config.schema import ClusterConfig
from pipelines.tune.context import TrialContext
from pipelines.tune.plan import Launch
from pipelines.tune.schedulers import PAUSING
from pipelines.tune.trial import run_trial


def trainable(ctx: TrialContext):
    """run_trial with the launch's context, each trial reserving its placement group
    (from the trial's config: the plan's, or composed once on the driver for a sampled
    one)."""
    from ray import tune

    def resources(config: dict[str, Any]):
        return tune.PlacementGroupFactory(trial_bundles(ctx.composed(config)))

    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources=resources)


def run_config(ctx: TrialContext, storage: str, cluster: ClusterConfig):
    """Tune's RunConfig: where its state is kept, what a failure retries, how many
    checkpoints stay, and the driver's callbacks."""
    from ray import tune

    from pipelines.tune.callbacks import MlflowStatusCallback
    from pipelines.tune.status_line import ProgressCallback

    return tune.RunConfig(
        name=ctx.name,
        storage_path=storage,
        failure_config=tune.FailureConfig(max_failures=cluster.max_failures),
        # PBT copies a member's newest checkpoint; keep a few so that one is not removed
        # while another member restores it.
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=4 if ctx.settings.scheduler in PAUSING else 2),
        callbacks=[MlflowStatusCallback(ctx), ProgressCallback(ctx)],
        verbose=ctx.settings.progress.tune_verbose,
    )


def build_tuner(launch: Launch, ctx: TrialContext):
    """The launch's Tuner."""
    from ray import tune

    cfg, sweep = launch.cfg, launch.cfg.sweep
    repeats = sweep.seeds_per_config if launch.settings.search in ("optuna", "bohb") else 1
    return tune.Tuner(
        trainable(ctx),
        param_space=launch.space,
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            search_alg=launch.searcher,
            scheduler=launch.scheduler,
            num_samples=sweep.num_samples * repeats,
            max_concurrent_trials=sweep.max_concurrent_trials,
            reuse_actors=cfg.cluster.reuse_actors,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=run_config(ctx, launch.storage, cfg.cluster),
    )


def restore_tuner(path: str, ctx: TrialContext):
    """The Tuner of a stopped launch saved at `path`: unfinished and errored trials go on
    from their last checkpoints."""
    from ray import tune

    return tune.Tuner.restore(path, trainable=trainable(ctx), resume_errored=True)
