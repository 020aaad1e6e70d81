"""The driver: from a validated plan to a finished Tune run, with MLflow around it.

Order matters: everything that can be bad input is checked before Ray starts or MLflow
is touched (exit 2, nothing written); after that, a failure marks the runs FAILED and
exits 1.
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
from pathlib import Path
from typing import Any

from algos.registry import get_algorithm
from pipelines.cluster import (
    cluster_tags,
    join_and_check,
    running_capacity,
    start_ray,
    trial_bundles,
)
from pipelines.config import ROOT, UserError
from pipelines.schema import ClusterConfig, ProgressConfig, SweepConfig
from pipelines.space import SweepPlan, tune_space
from pipelines.tracking import (
    RunLogger,
    check_tracking,
    find_run,
    get_or_create_experiment,
    resolve_uri,
    run_url,
    set_run_status,
    ui_hint,
    write_json_artifact,
)
from pipelines.trial import (
    FAILURE_KEY,
    FAILURE_MESSAGE_KEY,
    TrialContext,
    budget_of,
    run_key,
    run_trial,
    trial_overrides,
)

CONTEXT_FILE = "rlpipe.json"
EXIT_INTERRUPTED = 130  # the shell's code for a run stopped by Ctrl+C
log = logging.getLogger("rlpipe")


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


def _searcher(sweep: SweepConfig, search: str, seed: int):
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric=sweep.metric, mode=sweep.mode, seed=seed)
    return BasicVariantGenerator(random_state=seed)


def _scheduler(sweep: SweepConfig):
    if sweep.scheduler.name == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    s = sweep.scheduler
    return ASHAScheduler(
        time_attr=s.time_attr,
        max_t=s.max_t,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
    )


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

    progress = ProgressConfig(**ctx.settings.get("progress", {}))
    status = ProgressCallback(ctx, progress.every_s, ctx.settings.get("trials", 0),
                              tuple(ctx.settings.get("budget", ("train/env_steps", 0.0))))
    return tune.RunConfig(
        name=ctx.name,
        storage_path=storage,
        failure_config=tune.FailureConfig(max_failures=cluster.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=[MlflowStatusCallback(ctx), status],
        verbose=progress.tune_verbose,
    )


def planned_trials(plan: SweepPlan, search: str, num_samples: int) -> int:
    """How many trials Tune will run: each grid point num_samples times (grid, auto), or
    num_samples in all (random, optuna)."""
    if search in ("random", "optuna"):
        return num_samples
    points = 1
    for d in plan.dims:
        if d.discrete:
            points *= len(d.values)
    return points * num_samples


def launch(plan: SweepPlan, kind: str) -> int:
    """Run a sweep (kind='sweep') or a single run (kind='train') as a Tune run."""
    base = plan.base
    cfg = base.cfg
    sweep = cfg.sweep
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
        name = sweep.name or f"{base.choices.get('sweep') or 'sweep'}-{stamp}"
        experiment_name = cfg.tracking.experiment or base.choices.get("sweep") or "sweeps"
    else:
        name = f"train-{base.choices.get('experiment') or f'{algo}-{env}'}-{stamp}"
        experiment_name = cfg.tracking.experiment or f"{algo}-{env}"
    if "://" not in storage and (Path(storage) / name).exists():
        raise UserError(
            f"sweep.name={name}: a run of that name exists in {storage}; "
            f"resume it with resume={name} or choose another name"
        )
    search = sweep.search
    space = tune_space(plan, search)
    searcher = _searcher(sweep, search, cfg.seed)
    scheduler = _scheduler(sweep)
    settings = {
        "search": search,
        "num_samples": sweep.num_samples,
        "metric": sweep.metric,
        "mode": sweep.mode,
        "kind": kind,
        "env": env,
        "register": kind == "train" and cfg.tracking.register,
        "cluster": base.container["cluster"],
        "progress": base.container["progress"],
        "trials": planned_trials(plan, search, sweep.num_samples),
        "budget": budget_of(get_algorithm(cfg.algo.name), cfg.algo),
    }

    uid = uuid.uuid4().hex[:12]
    commit = git_commit()

    opened: list[RunLogger] = []

    def open_tracking() -> tuple[str, RunLogger | None]:
        """The MLflow experiment, and a sweep's parent run."""
        experiment_id = get_or_create_experiment(uri, experiment_name)
        if kind != "sweep":
            return experiment_id, None
        opened.append(RunLogger.open(
            uri, experiment_id, f"{uid}/parent", run_name=name,
            tags={"sweep": name, "git_commit": commit, "mlflow.source.git.commit": commit,
                  "algo": algo, "env": env, "rlpipe.kind": "sweep"},
            params={
                **{f"space.{k}": v for k, v in plan.space_text.items()},
                "fixed": " ".join(fixed) or "-",
                "sweep.search": search,
                "sweep.num_samples": sweep.num_samples,
                "sweep.metric": sweep.metric,
                "sweep.mode": sweep.mode,
                "sweep.scheduler": sweep.scheduler.name,
            },
            config=base.container,
        ))
        return experiment_id, opened[0]

    # Ray starts (or is joined and checked: a refusal is still bad input, exit 2); from
    # then on things start, and failures are ours (exit 1). MLflow is set up while Ray
    # starts when nothing after the start can be refused (a local cluster).
    from pipelines.cli import STARTED

    phases = {"perf/startup_s": time.time() - STARTED}
    clock = time.perf_counter()
    try:
        capacity, (experiment_id, parent) = join_and_check(cfg.cluster, uri, storage,
                                                           plan.trials, then=open_tracking)
    except Exception as e:
        for run in opened:  # Ray failed to start while the parent run was being made
            run.finish("FAILED")
        if isinstance(e, UserError) and opened:
            raise RuntimeError(str(e)) from e  # too late to leave nothing behind
        raise
    phases["perf/ray_start_and_mlflow_s"] = time.perf_counter() - clock
    clock = time.perf_counter()
    cluster_record = capacity.summary()
    if parent:
        parent.set_tags(cluster_tags(cluster_record))
        write_json_artifact(parent, cluster_record, "cluster.json")
    ctx = TrialContext(
        name=name, uid=uid, fixed=fixed, tracking_uri=uri, experiment_id=experiment_id,
        experiment_name=experiment_name, parent_run_id=parent.run_id if parent else None,
        git_commit=commit, space=plan.space_text, settings=settings, cluster=cluster_record,
    )
    if "://" not in storage:
        (Path(storage) / name).mkdir(parents=True, exist_ok=True)
        (Path(storage) / name / CONTEXT_FILE).write_text(json.dumps(ctx.to_json(), indent=2))
    from ray import tune

    tuner = tune.Tuner(
        _trainable(ctx, cfg.cluster, plan),
        param_space=space,
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=sweep.num_samples,
            max_concurrent_trials=sweep.max_concurrent_trials,
            reuse_actors=cfg.cluster.reuse_actors,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
        ),
        run_config=_run_config(ctx, storage, cfg.cluster),
    )
    phases["perf/tune_setup_s"] = time.perf_counter() - clock
    return _fit(tuner, ctx, parent, storage, phases)


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
    ctx = TrialContext(**json.loads(ctx_file.read_text()))
    check_tracking(ctx.tracking_uri)
    from ray import tune

    if not tune.Tuner.can_restore(str(path)):
        raise UserError(f"resume={name}: {path} holds no Tune state to resume from")
    saved_cluster = ClusterConfig(**ctx.settings["cluster"])
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
    return _fit(tuner, ctx, parent, storage)


def _fit(tuner, ctx: TrialContext, parent: RunLogger | None, storage: str,
         phases: dict[str, float] | None = None) -> int:
    """Run the Tuner; then the summary, the failures, and how to see the results.
    `phases`: seconds of the launch's phases so far, logged on the parent with the rest."""
    phases = dict(phases or {})
    metric, mode = ctx.settings["metric"], ctx.settings["mode"]
    if not ProgressConfig(**ctx.settings.get("progress", {})).tune_verbose:
        # Tune's newer console output prints its header box whatever the verbosity; its
        # older one prints nothing at 0, leaving the status line alone.
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    started = time.perf_counter()
    try:
        results = tuner.fit()
    except KeyboardInterrupt:
        if parent:
            parent.finish("KILLED")
        entry = "train" if ctx.settings.get("kind") == "train" else "sweep"
        print(f"Interrupted. Resume with: python -m pipelines.{entry} resume={ctx.name}")
        return EXIT_INTERRUPTED
    except BaseException:
        if parent:
            parent.finish("FAILED")
        raise
    import ray

    from pipelines.callbacks import INTERRUPTED

    phases["perf/sweep_wall_s"] = time.perf_counter() - started
    clock = time.perf_counter()
    summary = None
    if parent and not INTERRUPTED.is_set():
        from concurrent.futures import ThreadPoolExecutor

        from pipelines.summary import summarize_sweep

        def summarize_and_register() -> str:
            from pipelines.summary import winners

            rows, text = summarize_sweep(
                parent, ctx.experiment_id, metric, mode,
                ui_run=lambda run_id: run_url(ctx.tracking_uri, ctx.experiment_id, run_id))
            registered = [_register(ctx, env, row.top_run_id, parent)
                          for env, row in winners(rows).items()]
            return "\n".join([text, *filter(None, registered)])

        # The summary (MLflow reads, statistics, plots) and the registration of each env's
        # best model are made while Ray shuts down.
        worker = ThreadPoolExecutor(1, thread_name_prefix="rlpipe-summary")
        summary = worker.submit(summarize_and_register)
        worker.shutdown(wait=False)
    ray.shutdown()  # flushes the trials' logs, so the summary below is what comes last
    phases["perf/ray_shutdown_s"] = time.perf_counter() - clock
    unfinished = _unfinished_trials(results) if INTERRUPTED.is_set() else []
    if INTERRUPTED.is_set():
        # Tune stopped on Ctrl+C (SIGINT) and saved its state: nothing is lost, the
        # unfinished trials continue from their checkpoints on resume.
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
        entry = "train" if ctx.settings.get("kind") == "train" else "sweep"
        print(f"Interrupted with {len(unfinished)} trial(s) unfinished; their state is saved. "
              f"Resume with: python -m pipelines.{entry} resume={ctx.name}")
        return EXIT_INTERRUPTED
    errors = [r for r in results if r.error is not None]
    failed = [r for r in results if r.error is None and (r.metrics or {}).get(FAILURE_KEY)]
    if summary is not None:
        try:
            text = summary.result()
        except Exception as e:  # the trials are done and logged: report, do not fail
            log.exception("the sweep's summary failed")
            text = f"No summary: {type(e).__name__}: {e} (python -m pipelines.report " \
                   f"report.sweep={ctx.name} tries again)"
        print(text)
        phases["perf/summary_s"] = time.perf_counter() - clock - phases["perf/ray_shutdown_s"]
        # Where the sweep's time went (benchmarks/sweep_efficiency adds them up).
        parent.log_metrics({**phases, "perf/trials": len(results)})
    else:
        print(_summary_table(results, ctx, metric))
        if ctx.settings.get("register") and results and not errors and not failed:
            run = find_run(ctx.tracking_uri, ctx.experiment_id,
                           run_key(ctx, results[0].metrics.get("trial_id", "")))
            if run is not None:
                print(_register(ctx, ctx.settings.get("env") or "env", run.info.run_id, None)
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


def _register(ctx: TrialContext, env: str, run_id: str,
              parent: RunLogger | None) -> str | None:
    """Register the run's best model as <experiment>-<env option>, alias best when it
    beats the alias holder; tag the parent run; the line that says so. A failure is
    logged, not raised (None): the runs are done and logged."""
    from mlflow import MlflowClient

    from pipelines.models import register_champion

    name = f"{ctx.experiment_name}-{env}"
    try:
        client = MlflowClient(ctx.tracking_uri)
        model_id = client.get_run(run_id).data.tags["model.best"]
        out = register_champion(client, ctx.tracking_uri, name, model_id, run_id)
    except Exception as e:
        log.warning("could not register the best model of run %s as %s: %s", run_id, name, e)
        return None
    verdict = ("now holds the alias best" if out["moved"] else
               f"alias best stays on version {out['champion_version']} "
               f"({out['champion_score']:.4g} on the same seeds)")
    if parent:
        parent.set_tags({f"registered.{env}": f"{name}/{out['version']}",
                         f"registered.{env}.best_moved": str(out["moved"]).lower()})
    return (f"Registered {name} version {out['version']} (eval/score {out['score']:.4g}): "
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
