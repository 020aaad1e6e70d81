"""The driver: from the command line's overrides to a finished Tune run, with MLflow around
it. The entry points train and sweep call train() and sweep() here.

A launch goes through named phases, in order:

1. plan_launch: everything that can be bad input is checked (the sweep plan validated
   every trial's config already): the tracking store, the storage, the name. Exit 2,
   nothing written.
2. open_tracking: the MLflow experiment, and a sweep's parent run (while a local Ray
   starts; on a remote cluster once the cluster's checks passed).
3. start_ray: start or join Ray; refuse what the cluster can never run (still exit 2).
4. fit: Tune runs the trials (pipelines.trial), each recorded as its own MLflow run.
5. summarize: a sweep's per-configuration summary logged on its parent run, and
6. register: each env's best model registered, both while Ray shuts down.

From start_ray on, a failure is ours: the runs made so far are marked FAILED and the exit
code is 1.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from algos.registry import get_algorithm
from pipelines import private_api
from pipelines.cluster import (
    cluster_tags,
    join_and_check,
    running_capacity,
    start_ray,
    trial_bundles,
)
from pipelines.config import ROOT, UserError, compose_config, parse_overrides
from pipelines.schedulers import (
    ADAPTIVE,
    PAUSING,
    build_scheduler,
    build_searcher,
    check_metric,
    check_scheduler,
    seed_space,
    time_attr,
)
from pipelines.schema import ClusterConfig
from pipelines.space import SweepPlan, plan_sweep, tune_space
from pipelines.tracking import (
    RunLogger,
    find_run,
    get_or_create_experiment,
    set_run_status,
    write_json_artifact,
)
from pipelines.tracking_uri import check_tracking, resolve_uri, run_url, ui_hint
from pipelines.trial import (
    FAILURE_KEY,
    FAILURE_MESSAGE_KEY,
    RunSettings,
    TrialContext,
    budget_of,
    run_key,
    run_trial,
    trial_overrides,
)

CONTEXT_FILE = "rlpipe.json"
EXIT_INTERRUPTED = 130  # the shell's code for a run stopped by Ctrl+C
log = logging.getLogger("rlpipe")


# ----- the entry points' bodies --------------------------------------------------------


def train(args: list[str], started: float) -> int:
    """python -m pipelines.train: one configuration as one trial (or resume one). `started`
    is when the entry point's process started its work (time.time())."""
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
        return run_launch(plan_replay(parsed), started)
    return launch(plan_sweep(args, sweep_params=False), "train", started)


def sweep(args: list[str], started: float) -> int:
    """python -m pipelines.sweep (and train -m): the sweep the overrides describe, or
    resume one."""
    parsed = parse_overrides(args)
    if any(o.key_or_group == "resume" for o in parsed):
        return resume_from(parsed)
    return launch(plan_sweep(args), "sweep", started)


def resume_from(parsed) -> int:
    """Resume the Tune run named by `resume=`; only cluster.* may come with it."""
    others = [o.input_line for o in parsed
              if o.key_or_group != "resume" and not o.key_or_group.startswith("cluster")]
    if others:
        raise UserError(
            f"{others[0]}: a resumed run keeps its own settings; only cluster.* "
            "may be given with resume="
        )
    composed = compose_config([o.input_line for o in parsed])
    return resume(str(composed.cfg.resume), composed.cfg.cluster)


# ----- 1. plan ----------------------------------------------------------------------------


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


def git_commit() -> str:
    """The commit of the code being run: the checkout's, else RLPIPE_GIT_COMMIT (the
    project's image records its build's), else 'unknown'."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        )
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return os.environ.get("RLPIPE_GIT_COMMIT", "unknown")


STORAGE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss", "az", "file")
"""URI schemes of the file systems Tune writes to (through pyarrow or fsspec)."""


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


def plan_launch(plan: SweepPlan, kind: str) -> Launch:
    """Phase 1: check what the plan has not (the tracking store, the storage, the name)
    and name the launch. Bad input raises UserError; nothing is written."""
    base = plan.base
    cfg = base.cfg
    uri = resolve_uri(cfg.tracking.uri)
    check_tracking(uri)
    # What trials compose from and what is recorded name the URI without credentials.
    fixed = [f"tracking.uri={uri}" if o.split("=", 1)[0] == "tracking.uri" else o
             for o in plan.fixed]
    base.container["tracking"]["uri"] = uri
    storage = storage_root(cfg.cluster)
    check_storage(storage)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    algo, env = base.choices.get("algo"), base.choices.get("env")
    if kind == "sweep":
        name = cfg.sweep.name or f"{base.choices.get('sweep') or 'sweep'}-{stamp}"
        experiment_name = cfg.tracking.experiment or base.choices.get("sweep") or "sweeps"
    else:
        name = f"train-{base.choices.get('experiment') or f'{algo}-{env}'}-{stamp}"
        experiment_name = cfg.tracking.experiment or f"{algo}-{env}"
    if "://" not in storage and (Path(storage) / name).exists():
        raise UserError(
            f"sweep.name={name}: a run of that name exists in {storage}; "
            f"resume it with resume={name} or choose another name"
        )
    search, sweep_cfg = cfg.sweep.search, cfg.sweep
    algorithms = {get_algorithm(c.cfg.algo.name) for _, c in plan.trials} or {
        get_algorithm(cfg.algo.name)}
    check_metric(sweep_cfg, algorithms)
    time_key = time_attr(sweep_cfg, algorithms)
    check_scheduler(sweep_cfg, plan)
    # A space Tune cannot take is bad input too.
    space = {**tune_space(plan, search), **seed_space(sweep_cfg, cfg.seed)}
    settings = RunSettings(
        kind=kind, metric=sweep_cfg.metric, mode=sweep_cfg.mode, search=search,
        trials=planned_trials(plan, search, sweep_cfg.num_samples, sweep_cfg.seeds_per_config),
        budget=budget_of(get_algorithm(cfg.algo.name), cfg.algo),
        cluster=cfg.cluster, progress=cfg.progress, env=env,
        register=kind == "train" and cfg.tracking.register,
        seed=cfg.seed, scheduler=sweep_cfg.scheduler.name,
        mutations=[d.key for d in plan.mutations],
    )
    folder = None if "://" in storage else str(Path(storage) / name)
    return Launch(plan=plan, kind=kind, name=name, experiment_name=experiment_name,
                  uri=uri, storage=storage, fixed=fixed, settings=settings, space=space,
                  searcher=build_searcher(sweep_cfg, search, cfg.seed, folder),
                  scheduler=build_scheduler(sweep_cfg, plan, space, time_key))


POLICY_PREFIX = "pbt_policy_"
POLICY_FILE = POLICY_PREFIX + "{trial_id}.txt"
"""Beside a PBT sweep's Tune run: a member's schedule, as Tune's PBT logs it."""


def plan_replay(parsed) -> Launch:
    """python -m pipelines.train replay=<sweep>/<trial>: a train run of the sweep's fixed
    overrides that follows the member's schedule (its first values, then each explored
    configuration from the report where its lineage took it), through Tune's
    PopulationBasedTrainingReplay. Only cluster.* and progress.* may come with it."""
    others = [o.input_line for o in parsed if o.key_or_group != "replay"
              and not o.key_or_group.startswith(("cluster", "progress"))]
    if others:
        raise UserError(f"{others[0]}: a replay runs the sweep's own settings; only "
                        "cluster.* and progress.* may be given with replay=")
    cfg = compose_config([o.input_line for o in parsed]).cfg
    given = [o.input_line for o in parsed if o.key_or_group != "replay"]
    sweep_name, _, trial_id = str(cfg.replay).rpartition("/")
    folder = Path(storage_root(cfg.cluster)) / sweep_name
    if not sweep_name or not (folder / CONTEXT_FILE).exists():
        raise UserError(f"replay={cfg.replay}: no sweep {sweep_name or '?'} in "
                        f"{folder.parent}; give <sweep name>/<trial id>")
    policy = folder / POLICY_FILE.format(trial_id=trial_id)
    if not policy.exists():
        known = sorted(p.stem.removeprefix(POLICY_PREFIX)
                       for p in folder.glob(POLICY_FILE.format(trial_id="*")))
        raise UserError(f"replay={cfg.replay}: trial {trial_id} has no schedule (it never "
                        f"exploited, or the sweep was not pbt/pb2); with one: "
                        f"{', '.join(known) or 'none'}")
    ctx = TrialContext.from_json(json.loads((folder / CONTEXT_FILE).read_text()))
    # Tune's own reading of the policy: the lineage's first configuration, then each
    # configuration from the report (training_iteration) where the lineage took it.
    initial, changes = private_api.pbt_schedule(str(policy))
    first = [f"{k}={v}" for k, v in initial.items()]
    fixed = list(ctx.fixed) + given  # what is given now wins over the sweep's
    plan = plan_sweep(fixed + first, sweep_params=False)
    for _, config in changes:  # every configuration of the schedule is checked
        plan_sweep(fixed + [f"{k}={v}" for k, v in config.items()], sweep_params=False)
    plan.fixed = fixed + first
    the_launch = plan_launch(plan, "train")
    the_launch.name = f"replay-{sweep_name}-{trial_id}-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = the_launch.settings
    settings.scheduler = "replay"
    settings.mutations = list(ctx.settings.mutations)
    settings.replay_of = f"{sweep_name}/{trial_id}"
    settings.schedule = [(at, {k: v for k, v in config.items() if k in settings.mutations})
                         for at, config in changes]
    return the_launch


# ----- 2. open tracking, 3. start Ray ----------------------------------------------------


def open_tracking(launch: Launch) -> tuple[str, RunLogger | None]:
    """Phase 2: the MLflow experiment (made once, here on the driver), and a sweep's parent
    run with the search space and the sweep's settings as params."""
    experiment_id = get_or_create_experiment(launch.uri, launch.experiment_name)
    if launch.kind != "sweep":
        return experiment_id, None
    plan, cfg, choices = launch.plan, launch.cfg, launch.plan.base.choices
    parent = RunLogger.create(
        launch.uri, experiment_id, f"{launch.uid}/parent", run_name=launch.name,
        tags={"sweep": launch.name, "git_commit": launch.commit,
              "mlflow.source.git.commit": launch.commit, "algo": choices.get("algo"),
              "env": choices.get("env"), "rlpipe.kind": "sweep"},
        params={
            **{f"space.{k}": v for k, v in plan.space_text.items()},
            "fixed": " ".join(launch.fixed) or "-",
            "sweep.search": launch.settings.search,
            "sweep.num_samples": cfg.sweep.num_samples,
            "sweep.metric": cfg.sweep.metric,
            "sweep.mode": cfg.sweep.mode,
            "sweep.scheduler": cfg.sweep.scheduler.name,
            "sweep.seeds_per_config": cfg.sweep.seeds_per_config,
            **{f"mutation.{d.key}": d.expression for d in plan.mutations},
        },
        config=plan.base.container,
    )
    return experiment_id, parent


def start(launch: Launch) -> tuple[TrialContext, RunLogger | None]:
    """Phases 2 and 3: Ray started (or joined and checked: a refusal is still bad input,
    exit 2) and the tracking opened, meanwhile on a local cluster. Returns what every trial
    shares, and a sweep's parent run (which records the cluster)."""
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
        )
        if "://" not in launch.storage:
            folder = Path(launch.storage) / launch.name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / CONTEXT_FILE).write_text(json.dumps(ctx.to_json(), indent=2))
        return ctx, parent
    except BaseException as e:
        for run in opened:  # failed once the parent run was made: not left RUNNING
            run.finish("FAILED")
        if isinstance(e, UserError) and opened:
            raise RuntimeError(str(e)) from e  # too late to leave nothing behind
        raise


# ----- 4. fit ----------------------------------------------------------------------------


def _trainable(ctx: TrialContext, cluster: ClusterConfig, plan: SweepPlan | None = None):
    from ray import tune

    from pipelines.config import compose_config

    # The plan composed every trial already: the driver, which shares the CPUs with the
    # trials, need not compose them again (only sampled values and resumes are new).
    known = {combo: trial_bundles(composed) for combo, composed in (plan.trials if plan
                                                                     else [])}

    def resources(config: dict[str, Any]):
        combo = tuple(f"{k}={v}" for k, v in config.items())
        bundles = known.get(combo) or trial_bundles(compose_config(trial_overrides(ctx,
                                                                                 config)))
        return tune.PlacementGroupFactory(bundles)

    return tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), resources=resources)


def _run_config(ctx: TrialContext, storage: str, cluster: ClusterConfig):
    from ray import tune

    from pipelines.callbacks import MlflowStatusCallback, ProgressCallback

    progress = ctx.settings.progress
    return tune.RunConfig(
        name=ctx.name,
        storage_path=storage,
        failure_config=tune.FailureConfig(max_failures=cluster.max_failures),
        # PBT copies a member's newest checkpoint; keep a few so that one is not removed
        # while another member restores it.
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=4 if ctx.settings.scheduler in PAUSING else 2),
        callbacks=[MlflowStatusCallback(ctx), ProgressCallback(ctx)],
        verbose=progress.tune_verbose,
    )


def build_tuner(launch: Launch, ctx: TrialContext):
    """Phase 4's Tuner: the search space, searcher and scheduler of the plan, a trial's
    resources, what a failure retries, and the driver's callbacks."""
    from ray import tune

    cfg, sweep_cfg = launch.cfg, launch.cfg.sweep
    return tune.Tuner(
        _trainable(ctx, cfg.cluster, launch.plan),
        param_space=launch.space,
        tune_config=tune.TuneConfig(
            metric=sweep_cfg.metric,
            mode=sweep_cfg.mode,
            search_alg=launch.searcher,
            scheduler=launch.scheduler,
            num_samples=sweep_cfg.num_samples * (
                sweep_cfg.seeds_per_config if launch.settings.search in ("optuna", "bohb")
                else 1),
            max_concurrent_trials=sweep_cfg.max_concurrent_trials,
            reuse_actors=cfg.cluster.reuse_actors,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=_run_config(ctx, launch.storage, cfg.cluster),
    )


def launch(plan: SweepPlan, kind: str, started: float) -> int:
    """Run a sweep (kind='sweep') or a single run (kind='train') as a Tune run, phase by
    phase; `started`: when the entry point started its work (time.time()), the origin of
    the sweep's perf/startup_s."""
    return run_launch(plan_launch(plan, kind), started)


def run_launch(the_launch: Launch, started: float) -> int:
    """Phases 2 to 6 of a planned launch."""
    phases = {"perf/startup_s": time.time() - started}
    clock = time.perf_counter()
    ctx, parent = start(the_launch)
    try:
        phases["perf/ray_start_and_mlflow_s"] = time.perf_counter() - clock
        clock = time.perf_counter()
        tuner = build_tuner(the_launch, ctx)
        phases["perf/tune_setup_s"] = time.perf_counter() - clock
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
    tuner = tune.Tuner.restore(
        str(path), trainable=_trainable(ctx, saved_cluster), resume_errored=True
    )
    return fit(tuner, ctx, parent)


def fit(tuner, ctx: TrialContext, parent: RunLogger | None,
        phases: dict[str, float] | None = None) -> int:
    """Phase 4, then 5 and 6: run the Tuner; then the summary and the registration (while
    Ray shuts down), the failures, and how to see the results. `phases`: seconds of the
    launch's phases so far, logged on the parent with the rest."""
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
        clear_progress(ctx)
    import ray

    from pipelines.callbacks import INTERRUPTED

    phases["perf/sweep_wall_s"] = time.perf_counter() - started
    clock = time.perf_counter()
    summary = summarize_and_register(ctx, parent) if parent and not INTERRUPTED.is_set() \
        else None
    ray.shutdown()  # flushes the trials' logs, so the summary below is what comes last
    phases["perf/ray_shutdown_s"] = time.perf_counter() - clock
    if INTERRUPTED.is_set():
        return interrupted(ctx, parent, results)
    if parent is not None and summary is not None:
        print(_summary_text(ctx, summary))
        phases["perf/summary_s"] = time.perf_counter() - clock - phases["perf/ray_shutdown_s"]
        # Where the sweep's time went (benchmarks/sweep_efficiency adds them up).
        parent.log_metrics({**phases, "perf/trials": len(results)},
                           step=parent.next_step("perf/"))
    return finish(ctx, parent, results)


def _summary_text(ctx: TrialContext, summary: Future) -> str:
    """What the summary thread made, or why there is none."""
    try:
        return summary.result()
    except Exception as e:  # the trials are done and logged: report, do not fail
        log.exception("the sweep's summary failed")
        return (f"No summary: {type(e).__name__}: {e} (python -m pipelines.report "
                f"report.sweep={ctx.name} tries again)")


def finish(ctx: TrialContext, parent: RunLogger | None, results) -> int:
    """After a fit that ran to its end: a train run's table and registration, the failed
    trials, the parent run's status, and how to see the runs. The exit code."""
    errors = [r for r in results if r.error is not None]
    failed = [r for r in results if r.error is None and (r.metrics or {}).get(FAILURE_KEY)]
    if parent is None:
        print(_summary_table(results, ctx, ctx.settings.metric))
        if ctx.settings.register and results and not errors and not failed:
            run = find_run(ctx.tracking_uri, ctx.experiment_id,
                           run_key(ctx, results[0].metrics.get("trial_id", "")))
            if run is not None:
                print(_register(ctx, ctx.settings.env or "env", run.info.run_id, None)
                      or "Not registered (see the warning above)")
    for r in errors:
        print(f"Trial failed: {r.path}: {type(r.error).__name__}: {r.error}", file=sys.stderr)
    for r in failed:
        print(f"Trial failed: {_config_text(r, ctx)}: {r.metrics.get(FAILURE_MESSAGE_KEY)}",
              file=sys.stderr)
    if parent:
        parent.finish("FAILED" if errors or failed else "FINISHED")
    print(ui_hint(ctx.tracking_uri, ctx.experiment_id, ctx.experiment_name))
    return 1 if errors or failed else 0


def clear_progress(ctx: TrialContext) -> None:
    """Remove the trials' progress notes from the cluster's key-value store (a remote
    cluster outlives the launch)."""
    try:
        private_api.kv_delete(ctx.progress_key(""))
    except Exception as e:  # the notes are a status line's: never fail over them
        log.debug("progress notes not removed: %s", e)


def interrupted(ctx: TrialContext, parent: RunLogger | None, results) -> int:
    """Tune stopped on Ctrl+C (SIGINT) and saved its state: nothing is lost, the unfinished
    trials continue from their checkpoints on resume. Their runs, and the parent, are
    marked KILLED."""
    unfinished = _unfinished_trials(results)
    for trial_id in filter(None, unfinished):
        run = find_run(ctx.tracking_uri, ctx.experiment_id, run_key(ctx, trial_id))
        if run is not None:
            # The trial's own thread saw a stop and may have called it early-stopped.
            if "tune.stopped_early" in run.data.tags:
                RunLogger(ctx.tracking_uri, run.info.run_id, 0).client.delete_tag(
                    run.info.run_id, "tune.stopped_early"
                )
            set_run_status(ctx.tracking_uri, run.info.run_id, "KILLED", only_if_running=False)
    if parent:
        parent.finish("KILLED")
    print(f"Interrupted with {len(unfinished)} trial(s) unfinished; their state is saved. "
          f"Resume with: python -m pipelines.{ctx.settings.kind} resume={ctx.name}")
    return EXIT_INTERRUPTED


# ----- 5. summarize, 6. register ------------------------------------------------------------


def summarize_and_register(ctx: TrialContext, parent: RunLogger) -> Future:
    """Phases 5 and 6, in a thread while Ray shuts down: the sweep's summary (MLflow
    reads, statistics, plots) logged on its parent run, and each env's best model
    registered. The future's result is the text to print."""
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.stats import winners
    from pipelines.summary import summarize_sweep

    def work() -> str:
        rows, text = summarize_sweep(
            parent, ctx.experiment_id, ctx.settings.metric, ctx.settings.mode,
            ui_run=lambda run_id: run_url(ctx.tracking_uri, ctx.experiment_id, run_id))
        registered = [_register(ctx, env, row.top_run_id, parent)
                      for env, row in winners(rows).items()]
        replays = [_replay_line(ctx, row.top_run_id) for row in winners(rows).values()]
        return "\n".join([text, *filter(None, registered + replays)])

    worker = ThreadPoolExecutor(1, thread_name_prefix="rlpipe-summary")
    future = worker.submit(work)
    worker.shutdown(wait=False)
    return future


def _replay_line(ctx: TrialContext, run_id: str) -> str | None:
    """For a PBT or PB2 sweep, the command that trains a fresh run with the schedule of
    the member whose run is `run_id` (when it has one: it exploited)."""
    if ctx.settings.scheduler not in ADAPTIVE:
        return None
    from mlflow import MlflowClient

    trial_id = MlflowClient(ctx.tracking_uri).get_run(run_id).data.tags.get("tune.trial_id")
    folder = Path(storage_root(ctx.settings.cluster)) / ctx.name
    if not trial_id or not (folder / POLICY_FILE.format(trial_id=trial_id)).exists():
        return (f"The best member ({trial_id}) never exploited: its first values ran "
                "throughout (its run's params).")
    return (f"Replay the best member's schedule in a fresh run: python -m pipelines.train "
            f"replay={ctx.name}/{trial_id}")


def _register(ctx: TrialContext, env: str, run_id: str,
              parent: RunLogger | None) -> str | None:
    """Register the run's best model as <experiment>-<env option>, alias best when it
    beats the alias holder; tag the parent run; the line that says so. A failure is
    logged, not raised (None): the runs are done and logged."""
    from mlflow import MlflowClient

    from pipelines.models import model_tag, register_champion

    name = f"{ctx.experiment_name}-{env}"
    try:
        client = MlflowClient(ctx.tracking_uri)
        model_id = client.get_run(run_id).data.tags[model_tag("best")]
        out = register_champion(client, ctx.tracking_uri, name, model_id, run_id)
    except Exception as e:
        log.warning("could not register the best model of run %s as %s: %s", run_id, name, e)
        return None
    verdict = ("now holds the alias best" if out["moved"] else
               f"alias best stays on version {out['champion_version']} "
               f"({out['champion_score']:.4g} on the same held-out seeds)")
    if parent:
        parent.set_tags({f"registered.{env}": f"{name}/{out['version']}",
                         f"registered.{env}.best_moved": str(out["moved"]).lower()})
    return (f"Registered {name} version {out['version']} (test/score {out['score']:.4g} on "
            f"held-out seeds): "
            f"{verdict}. Play it: python -m pipelines.evaluate evaluate.model=models:/{name}@best")


def _unfinished_trials(results) -> list[str]:
    """Ids of the trials an interrupt stopped: no error, and no final (done) result."""
    return [
        r.metrics.get("trial_id")
        for r in results
        if r.error is None and r.metrics and not r.metrics.get("done")
    ]


def _config_text(result, ctx: TrialContext) -> str:
    return " ".join(f"{k}={v}" for k, v in (result.config or {}).items()) or ctx.name


def _summary_table(results, ctx: TrialContext, metric: str) -> str:
    rows = []
    for r in results:
        config = _config_text(r, ctx)
        value = (r.metrics or {}).get(metric)
        shown = f"{value:.4g}" if isinstance(value, (int, float)) else "-"
        status = ("ERROR" if r.error is not None else
                  "FAILED" if (r.metrics or {}).get(FAILURE_KEY) else "done")
        rows.append(f"  {status:6}  {metric}={shown:>8}  {config}")
    return "Trials:\n" + "\n".join(rows)
