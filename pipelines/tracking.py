"""MLflow: where runs go, how trials find their run again, and how a user opens them.

Layout (DESIGN.md): one experiment per sweep config (or tracking.experiment), one parent
run per sweep, one nested child run per trial (tag mlflow.parentRunId), flat params,
tags algo/env/seed/git_commit, the resolved config as an artifact, metrics stepped by
env steps. Runs are found again by the tag `rlpipe.run_key`, so a retried or resumed
trial continues its own run instead of making a second one, and metrics at steps it
already logged are not logged twice.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipelines.config import UserError

SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql")
RUN_KEY_TAG = "rlpipe.run_key"
BATCH = 1000  # MLflow's most metrics in one log_batch call


def take_credentials(uri: str) -> str:
    """The URI without a `user:password@` part; the credentials move to the environment
    (MLFLOW_TRACKING_USERNAME / _PASSWORD, which MLflow's client reads and the trials get),
    so that the password is never written: not in params, tags, configs, files or output."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    if parts.username:
        os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(parts.username)
    if parts.password is not None:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(parts.password)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_uri(uri: str) -> str:
    """The URI with its password, if any, shown as ***."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri) if "://" in uri else None
    if parts is None or parts.password is None:
        return uri
    return uri.replace(f":{parts.password}@", ":***@", 1)


def resolve_uri(uri: str, cwd: Path | None = None) -> str:
    """Make a local store's path absolute, since Tune runs trials in other directories;
    take a server's credentials out of the URI (take_credentials)."""
    uri = take_credentials(uri)
    cwd = cwd or Path.cwd()
    scheme = uri.split(":", 1)[0] if ":" in uri else ""
    if scheme not in SCHEMES or "://" not in uri:
        raise UserError(
            f"tracking.uri={uri}: not a tracking URI; allowed: sqlite:///file.db, "
            "file:///folder, http(s)://host:port, or a database URI "
            "(postgresql://, mysql://, mssql://)"
        )
    if scheme == "sqlite":
        path = uri[len("sqlite:///"):]
        if path and not path.startswith("/") and path != ":memory:":
            return f"sqlite:///{(cwd / path).resolve()}"
    if scheme == "file":
        path = uri[len("file://"):]
        if not path.startswith("/"):
            return f"file://{(cwd / path).resolve()}"
    return uri.rstrip("/")


def check_tracking(uri: str) -> None:
    """Fail early, as bad input, when the tracking store cannot be used."""
    scheme = uri.split(":", 1)[0]
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=5) as response:
                body = response.read(64).decode(errors="replace").strip()
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise UserError(
                f"tracking.uri={uri}: no MLflow server answers there ({reason}); start one "
                "(mlflow server --host 127.0.0.1 --port 5000) or use tracking=local"
            ) from None
        if body != "OK":
            raise UserError(f"tracking.uri={uri}: answers, but not as an MLflow server")
    elif scheme == "sqlite":
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise UserError(f"tracking.uri={uri}: the folder {folder} does not exist")


def readable_store(uri: str) -> str:
    """The resolved URI of a store to read runs from; bad input (UserError) when it cannot
    be reached or holds nothing yet."""
    uri = resolve_uri(uri)
    check_tracking(uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise UserError(f"tracking.uri={uri}: no MLflow store there to read runs from")
    return uri


LOCAL_UI = "http://127.0.0.1:5000"
"""Where `mlflow ui` serves a local store."""


def run_url(uri: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the UI: on the tracking server, or on the `mlflow ui` of a local
    store (ui_hint says how to start it)."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{redact_uri(base)}/#/experiments/{experiment_id}/runs/{run_id}"


def ui_hint(uri: str, experiment_id: str, experiment_name: str) -> str:
    """The last line a user sees: how to open these runs in the MLflow UI."""
    query = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return f"See the runs of experiment '{experiment_name}' at {uri}/{query}"
    venv_mlflow = Path(sys.executable).parent / "mlflow"
    mlflow_cmd = "mlflow"
    if venv_mlflow.exists():
        try:
            mlflow_cmd = str(venv_mlflow.relative_to(Path.cwd()))
        except ValueError:
            mlflow_cmd = str(venv_mlflow)
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if db.name == "mlflow.db":
            command = f"cd {db.parent} && {mlflow_cmd} ui"
        else:
            command = f"{mlflow_cmd} ui --backend-store-uri {uri}"
    else:
        command = f"{mlflow_cmd} ui --backend-store-uri {uri}"
    return (
        f"See the runs of experiment '{experiment_name}': {command}, then open "
        f"{LOCAL_UI}/{query}"
    )


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def get_or_create_experiment(uri: str, name: str) -> str:
    """The experiment's id; created here, once, on the driver (mlflow#4123)."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:
        return client.get_experiment_by_name(name).experiment_id


def find_run(uri: str, experiment_id: str, run_key: str):
    """The run tagged with `run_key`, or None."""
    runs = _client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'", max_results=2
    )
    return runs[0] if runs else None


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


class RunLogger:
    """One MLflow run, opened (created or found again) by its key."""

    def __init__(self, uri: str, run_id: str, watermark: float) -> None:
        self.uri = uri
        self.run_id = run_id
        self.watermark = watermark
        """Steps at or below this were logged before a restart and are not logged again."""
        self.client = _client(uri)

    @classmethod
    def open(
        cls,
        uri: str,
        experiment_id: str,
        run_key: str,
        run_name: str,
        tags: Mapping[str, Any],
        params: Mapping[str, Any],
        config: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        continued_tags: Mapping[str, Any] | None = None,
    ) -> RunLogger:
        """Continue the run tagged `run_key` if there is one (setting `continued_tags`
        again), else create it with its params, tags and resolved config (params are
        write-once in MLflow)."""
        client = _client(uri)
        existing = find_run(uri, experiment_id, run_key)
        if existing is not None:
            client.update_run(existing.info.run_id, status="RUNNING")
            watermark = existing.data.metrics.get("train/env_steps", -math.inf)
            logger = cls(uri, existing.info.run_id, watermark)
            if continued_tags:
                logger.set_tags(continued_tags)
            return logger
        all_tags = {str(k): str(v) for k, v in tags.items()}
        all_tags[RUN_KEY_TAG] = run_key
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        logger = cls(uri, run.info.run_id, -math.inf)
        logger.log_params(params)
        if config is not None:
            logger.log_dict(config, "config.yaml")
        return logger

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (write-once), in batches."""
        from mlflow.entities import Param

        items = [Param(str(k), _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set (or overwrite) tags."""
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, tags=items[i:i + 100])

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        """An artifact made of a dict (yaml or json by the name's suffix)."""
        self.client.log_dict(self.run_id, dict(data), name)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file or folder."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log(
        self,
        step: int,
        metrics: Mapping[str, float],
        history: Mapping[str, Sequence[tuple]] | None = None,
    ) -> None:
        """Log one report: history points and this step's metrics."""
        self.log_reports([(step, metrics, history)])

    def log_reports(
        self,
        reports: Sequence[
            tuple[int, Mapping[str, float], Mapping[str, Sequence[tuple]] | None]
        ],
    ) -> None:
        """Log reports of (step, metrics, history) in as few calls as MLflow allows."""
        queue = [self.report_points(*report) for report in reports]
        self.send(queue)

    def report_points(
        self, step: int, metrics: Mapping[str, float],
        history: Mapping[str, Sequence[tuple]] | None = None,
    ) -> list:
        """One report's points: its metrics stamped now (when it is made, not when it is
        written), its history points at the wall time each carries (step, value, time), or
        now for a (step, value) point.

        Its `train/env_steps` point goes last, and send() writes a report whole, so that a
        step's `train/env_steps` in the store means everything of that step is there;
        steps at or below the watermark (logged before a restart) are skipped. NaN and
        infinite values are logged as they are (MLflow keeps NaN, and stores infinities
        as the largest float): never dropped.
        """
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [
            Metric(name, float(p[1]), int(p[2] * 1000) if len(p) > 2 else now, int(p[0]))
            for name, series in (history or {}).items()
            for p in series
            if p[0] > self.watermark
        ]
        if step > self.watermark:
            points += [Metric(name, float(value), now, int(step))
                       for name, value in metrics.items() if name != "train/env_steps"]
            points.append(Metric("train/env_steps", float(step), now, int(step)))
        return points

    def send(self, queue: list[list]) -> None:
        """Write queued reports (lists of points), whole reports per call, as many as fit
        in MLflow's batch, removing each from the queue once written: when a call fails,
        the queue holds exactly what was not written. (A report larger than a batch is
        written in pieces.)"""
        while queue:
            batch, taken = [], 0
            while taken < len(queue) and (not batch or len(batch) + len(queue[taken]) <= BATCH):
                batch += queue[taken]
                taken += 1
            if len(batch) > BATCH:  # one report alone exceeds a batch
                self.client.log_batch(self.run_id, metrics=batch[:BATCH])
                del queue[0][:BATCH]
                continue
            if batch:
                self.client.log_batch(self.run_id, metrics=batch)
            del queue[:taken]

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log plain metrics at one step (no watermark, no env-step bookkeeping)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        points = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=points)

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.run_id, status=status)


def start_system_metrics(logger: RunLogger, every_s: float, resume: bool = False):
    """MLflow's system-metrics monitor on the run (CPU, memory, disk, network, and GPU
    utilization and memory where NVML sees a GPU), sampled every `every_s` seconds, its
    steps continued after a restart; None when every_s is 0."""
    if not every_s:
        return None
    import logging

    import psutil
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    # Its start, stop and "no GPU" lines are INFO: keep the trial's log for what matters.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    # psutil measures CPU use per calling thread, since that thread's previous call: start
    # the clock of this thread, which takes the last sample (stop_system_metrics).
    psutil.cpu_percent()
    monitor = SystemMetricsMonitor(logger.run_id, sampling_interval=every_s,
                                   resume_logging=resume, tracking_uri=logger.uri)
    monitor.start()
    return monitor


def stop_system_metrics(monitor) -> None:
    """Stop the monitor, then log one last sample over its unfinished interval, so that a
    run shorter than one interval still has a point (call it before the run is marked
    finished: the monitor logs only into a RUNNING run), from the thread that started it.
    The interval's pending sample is dropped: taken at its start, it read CPU use since
    the sample before (or 0 at a run's first)."""
    if monitor is None:
        return
    monitor.finish()
    try:
        for m in monitor.monitors:
            m.clear_metrics()
        monitor.collect_metrics()
        pending = monitor.aggregate_metrics()
        if pending:
            monitor.publish_metrics(pending)
            monitor.mlflow_logger.flush()
    except Exception as e:  # a missing last sample must not fail a finished trial
        import logging

        logging.getLogger("rlpipe").warning("last system-metrics sample not logged: %s", e)


def is_outage(error: BaseException) -> bool:
    """Whether a tracking call failed because the server could not be reached or answered
    with a server error (after the client's own retries), not because it refused it."""
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(error, requests.exceptions.RequestException | ConnectionError | TimeoutError):
        return True
    if isinstance(error, MlflowException):
        text = str(error)
        return ("API request to" in text and "failed with" in text) or error.error_code in (
            "INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE")
    return False


def set_run_status(uri: str, run_id: str, status: str, only_if_running: bool = True) -> None:
    """Set a run's status from outside its process (the driver's view of a trial)."""
    client = _client(uri)
    if only_if_running and client.get_run(run_id).info.status != "RUNNING":
        return
    client.set_terminated(run_id, status=status)


def write_json_artifact(logger: RunLogger, data: Mapping[str, Any], name: str) -> None:
    """Log a json artifact through a temporary file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(data, indent=2, default=str))
        logger.log_artifact(path)
