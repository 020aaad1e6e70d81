"""The driver: from the command line's overrides to a finished Tune run, with MLflow around
it. The entry points train and sweep call train() and sweep() here.

A launch goes through named phases, in order:

1. plan (pipelines.tune.plan): everything that can be bad input is checked, every
   trial's config composed once; exit 2, nothing written.
2. start: the MLflow experiment and a sweep's parent run opened (while a local Ray
   starts; on a remote cluster once the cluster's checks passed), Ray started or joined,
   and what the cluster can never run refused (still exit 2).
3. fit: Tune runs the trials (pipelines.tune.trial), each recorded as its own MLflow run,
   each with its config carried from the plan.
4. summarize and register (pipelines.tune.outcome), while Ray shuts down; then the exit
   code.

From start on, a failure is ours: the runs made so far are marked FAILED and the exit
code is 1.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from pipelines.cluster.connect import cluster_tags, join_and_check, running_capacity, start_ray
from pipelines.config.compose import UserError, compose_config, parse_overrides
from pipelines.config.schema import ClusterConfig
from pipelines.config.space import plan_sweep
from pipelines.tracking import series
from pipelines.tracking.run_logger import RunLogger, get_or_create_experiment, write_json_artifact
from pipelines.tracking.uri import check_access, check_tracking
from pipelines.tune.context import TrialContext
from pipelines.tune.outcome import EXIT_INTERRUPTED, ended, interrupted, summarize_and_register
from pipelines.tune.plan import CONTEXT_FILE, Launch, plan_launch, storage_root
from pipelines.tune.progress import clear_notes
from pipelines.tune.replay import plan_replay
from pipelines.tune.tuner import build_tuner, restore_tuner

log = logging.getLogger("rlpipe")


def train(args: list[str], started: float) -> int:
    """python -m pipelines.train: one configuration as one trial (or resume one, or replay
    a PBT member). `started` is when the entry point's process started its work
    (time.time())."""
    parsed = parse_overrides(args)
    for o in parsed:
        if o.is_sweep_override():
            raise UserError(
                f"{o.input_line}: a sweep expression; run sweeps with python -m pipelines.sweep"
            )
        if o.key_or_group.startswith("sweep"):
            raise UserError(f"{o.input_line}: sweep settings belong to python -m pipelines.sweep")
    if any(o.key_or_group == "resume" for o in parsed):
        return resume_from(parsed)
    if any(o.key_or_group == "replay" for o in parsed):
        return run(plan_replay(parsed), started)
    return run(plan_launch(plan_sweep(args, sweep_params=False), "train"), started)


def sweep(args: list[str], started: float) -> int:
    """python -m pipelines.sweep (and train -m): the sweep the overrides describe, or
    resume one."""
    parsed = parse_overrides(args)
    if any(o.key_or_group == "resume" for o in parsed):
        return resume_from(parsed)
    return run(plan_launch(plan_sweep(args), "sweep"), started)


def resume_from(parsed) -> int:
    """Resume the Tune run named by `resume=`; only cluster.* may come with it (the
    command line composed once, for those)."""
    others = [o.input_line for o in parsed
              if o.key_or_group != "resume" and not o.key_or_group.startswith("cluster")]
    if others:
        raise UserError(
            f"{others[0]}: a resumed run keeps its own settings; only cluster.* "
            "may be given with resume="
        )
    cfg = compose_config([o.input_line for o in parsed]).cfg
    return resume(str(cfg.resume), cfg.cluster)


def open_tracking(launch: Launch) -> tuple[str, RunLogger | None]:
    """The MLflow experiment (made once, here on the driver), and a sweep's parent run
    with the search space and the sweep's settings as params."""
    experiment_id = get_or_create_experiment(launch.uri, launch.experiment_name)
    if launch.kind != "sweep":
        return experiment_id, None
    plan, sweep_cfg, choices = launch.plan, launch.cfg.sweep, launch.plan.base.choices
    parent = RunLogger.create(
        launch.uri, experiment_id, f"{launch.uid}/parent", run_name=launch.name,
        tags={"sweep": launch.name, "git_commit": launch.commit,
              "mlflow.source.git.commit": launch.commit, "algo": choices.get("algo"),
              "env": choices.get("env"), "rlpipe.kind": "sweep"},
        params={
            **{f"space.{k}": v for k, v in plan.space_text.items()},
            "fixed": " ".join(launch.fixed) or "-",
            "sweep.search": launch.settings.search,
            "sweep.num_samples": sweep_cfg.num_samples,
            "sweep.metric": sweep_cfg.metric,
            "sweep.mode": sweep_cfg.mode,
            "sweep.scheduler": sweep_cfg.scheduler.name,
            "sweep.seeds_per_config": sweep_cfg.seeds_per_config,
            **{f"mutation.{d.key}": d.expression for d in plan.mutations},
        },
        config=plan.base.container,
    )
    return experiment_id, parent


def start(launch: Launch) -> tuple[TrialContext, RunLogger | None]:
    """Ray started (or joined and checked: a refusal is still bad input, exit 2) and the
    tracking opened, meanwhile on a local cluster. Returns what every trial shares, the
    plan's composed trials with it, and a sweep's parent run (which records the
    cluster)."""
    opened: list[RunLogger] = []

    def tracking() -> tuple[str, RunLogger | None]:
        experiment_id, parent = open_tracking(launch)
        opened.extend(filter(None, [parent]))
        return experiment_id, parent

    try:
        capacity, (experiment_id, parent) = join_and_check(
            launch.cfg.cluster, launch.uri, launch.storage, launch.plan.trials, then=tracking)
        cluster_record = capacity.summary()
        if parent:
            parent.set_tags(cluster_tags(cluster_record))
            write_json_artifact(parent, cluster_record, "cluster.json")
        ctx = TrialContext(
            name=launch.name, uid=launch.uid, fixed=launch.fixed, tracking_uri=launch.uri,
            experiment_id=experiment_id, experiment_name=launch.experiment_name,
            parent_run_id=parent.run_id if parent else None, git_commit=launch.commit,
            settings=launch.settings, space=launch.plan.space_text, cluster=cluster_record,
            planned=launch.planned(),
        )
        if "://" not in launch.storage:
            folder = Path(launch.storage) / launch.name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / CONTEXT_FILE).write_text(json.dumps(ctx.to_json(), indent=2))
        return ctx, parent
    except BaseException as e:
        for opened_run in opened:  # failed once the parent run was made: not left RUNNING
            opened_run.finish("FAILED")
        if isinstance(e, UserError) and opened:
            raise RuntimeError(str(e)) from e  # too late to leave nothing behind
        raise


def run(launch: Launch, started: float) -> int:
    """Start, fit, summarize: a planned launch from Ray's start to its exit code.
    `started`: when the entry point started its work (time.time()), the origin of the
    sweep's perf/startup_s."""
    phases = {series.STARTUP_S: time.time() - started}
    clock = time.perf_counter()
    ctx, parent = start(launch)
    try:
        phases[series.RAY_START_AND_MLFLOW_S] = time.perf_counter() - clock
        clock = time.perf_counter()
        tuner = build_tuner(launch, ctx)
        phases[series.TUNE_SETUP_S] = time.perf_counter() - clock
        return fit(tuner, ctx, parent, phases)
    except BaseException:
        if parent is not None:  # whatever failed once it was open: not left RUNNING
            parent.finish("FAILED")
        raise


def resume(name: str, cluster: ClusterConfig) -> int:
    """Continue the sweep `name` where it stopped: unfinished and errored trials resume
    from their last checkpoints, into their own MLflow runs."""
    storage = storage_root(cluster)
    path = Path(storage) / name
    ctx_file = path / CONTEXT_FILE
    if not ctx_file.exists():
        known = sorted(p.parent.name for p in Path(storage).glob(f"*/{CONTEXT_FILE}"))
        raise UserError(
            f"resume={name}: no sweep of that name in {storage}; "
            f"known: {', '.join(known) or 'none'}"
        )
    ctx = TrialContext.from_json(json.loads(ctx_file.read_text()))
    check_tracking(ctx.tracking_uri)
    check_access(ctx.tracking_uri, ctx.experiment_name)
    from ray import tune

    if not tune.Tuner.can_restore(str(path)):
        raise UserError(f"resume={name}: {path} holds no Tune state to resume from")
    saved_cluster = ctx.settings.cluster
    start_ray(cluster if cluster.address else saved_cluster, ctx.tracking_uri)
    ctx.cluster = running_capacity(cluster.address or saved_cluster.address).summary()
    parent = None
    if ctx.parent_run_id:
        parent = RunLogger(ctx.tracking_uri, ctx.parent_run_id, 0)
        parent.client.update_run(ctx.parent_run_id, status="RUNNING")
        parent.set_tags({"rlpipe.resumed": time.strftime("%Y-%m-%d %H:%M:%S")})
    return fit(restore_tuner(str(path), ctx), ctx, parent)


def fit(tuner, ctx: TrialContext, parent: RunLogger | None,
        phases: dict[str, float] | None = None) -> int:
    """Run the Tuner; then the summary and the registration (while Ray shuts down), the
    failures, and how to see the results. `phases`: seconds of the launch's phases so
    far, logged on the parent with the rest."""
    phases = dict(phases or {})
    if not ctx.settings.progress.tune_verbose:
        # Tune's newer console output prints its header box whatever the verbosity; its
        # older one prints nothing at 0, leaving the status line alone.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    # Tune's file loggers look for a restarted trial's result files (a PBT exploit, a
    # pause) where the function API writes none.
    logging.getLogger("ray.tune.logger.logger").setLevel(logging.ERROR)
    started = time.perf_counter()
    try:
        results = tuner.fit()
    except KeyboardInterrupt:
        if parent:
            parent.finish("KILLED")
        print(f"Interrupted. Resume with: python -m pipelines.{ctx.settings.kind} "
              f"resume={ctx.name}")
        return EXIT_INTERRUPTED
    finally:
        clear_notes(ctx.uid)
    import ray

    from pipelines.tune.callbacks import INTERRUPTED

    phases[series.SWEEP_WALL_S] = time.perf_counter() - started
    clock = time.perf_counter()
    summary = summarize_and_register(ctx, parent) if parent and not INTERRUPTED.is_set() \
        else None
    ray.shutdown()  # flushes the trials' logs, so the summary below is what comes last
    phases[series.RAY_SHUTDOWN_S] = time.perf_counter() - clock
    if INTERRUPTED.is_set():
        return interrupted(ctx, parent, results)
    return ended(ctx, parent, results, summary, phases, clock)
