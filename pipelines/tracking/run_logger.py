"""The MLflow run logger: one run, created once and found again by its key, written in
batches with the time each point was produced.

Layout (docs/mlflow.md): one experiment per sweep config (or tracking.experiment), one
parent run per sweep, one nested child run per trial (tag mlflow.parentRunId), flat
params, tags algo/env/seed/git_commit, the resolved config as an artifact, metrics stepped
by env steps. Runs are found again by the tag `rlpipe.run_key`, so a retried or resumed
trial continues its own run instead of making a second one, and metrics at steps it
already logged are not logged twice.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from algos.core.metrics import ENV_STEPS

RUN_KEY_TAG = "rlpipe.run_key"
BATCH = 1000  # MLflow's most metrics in one log_batch call


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
        self.existed = False
        """Whether the run existed before this logger continued it."""

    @classmethod
    def continue_run(cls, uri: str, run, continued_tags: Mapping[str, Any] | None = None
                     ) -> RunLogger:
        """Continue an existing run (a retried or resumed trial's): RUNNING again, its
        steps up to its last train/env_steps not logged again, `continued_tags` set."""
        client = _client(uri)
        client.update_run(run.info.run_id, status="RUNNING")
        logger = cls(uri, run.info.run_id, run.data.metrics.get(ENV_STEPS, -math.inf))
        logger.existed = True
        if continued_tags:
            logger.set_tags(continued_tags)
        return logger

    @classmethod
    def create(cls, uri: str, experiment_id: str, run_key: str, run_name: str,
               tags: Mapping[str, Any], params: Mapping[str, Any],
               config: Mapping[str, Any] | None = None, parent_run_id: str | None = None
               ) -> RunLogger:
        """A new run with its key, tags, params (write-once in MLflow) and resolved config
        as an artifact."""
        client = _client(uri)
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

        Its train/env_steps (ENV_STEPS) point goes last, and send() writes a report whole,
        so that a step's train/env_steps in the store means everything of that step is there;
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
                       for name, value in metrics.items() if name != ENV_STEPS]
            points.append(Metric(ENV_STEPS, float(step), now, int(step)))
        return points

    def send(self, queue: list[list]) -> None:
        """Write queued reports (lists of points), whole reports per call, as many as fit
        in MLflow's batch, removing each from the queue once written: when a call fails,
        the queue holds exactly what was not written. (A report larger than a batch is
        written in pieces.)"""
        while queue:
            batch: list = []
            taken = 0
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

    def next_step(self, prefix: str) -> int:
        """One past the last step of the run's metrics named `prefix`...: where a record
        made again goes (a sweep's summary, a resumed sweep's timings), so that no step of
        a key repeats; 0 when there is none yet."""
        run = self.client.get_run(self.run_id)
        steps = [m.step for key in run.data.metrics if key.startswith(prefix)
                 for m in self.client.get_metric_history(self.run_id, key)]
        return max(steps) + 1 if steps else 0

    def finish(self, status: str = "FINISHED") -> None:
        """Mark the run FINISHED, FAILED or KILLED."""
        self.client.set_terminated(self.run_id, status=status)


def is_outage(error: BaseException) -> bool:
    """Whether a tracking call failed because the server could not be reached, answered
    with a server error (5xx, after the client's own retries) or its database was
    overloaded (SERVER_OVERLOAD), not because it refused the request (4xx: a login, a
    permission, a bad value), which waiting would not mend."""
    import re

    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(error, requests.exceptions.RequestException | ConnectionError | TimeoutError):
        return True
    if isinstance(error, MlflowException):
        text = str(error)
        status = re.search(r"failed with error code (\d{3})", text)
        if status:
            return status.group(1).startswith("5")
        return ("API request to" in text and "failed with exception" in text) or (
            error.error_code in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE")) or any(
            sign in text for sign in SERVER_OVERLOAD)
    return False


SERVER_OVERLOAD = ("QueuePool limit", "OperationalError", "database is locked")
"""What an overloaded server's database says in an error MLflow returns as BAD_REQUEST
(400): its connection pool ran dry (SQLAlchemy's QueuePool, seen at 64 writers on a
sqlite-backed server: benchmarks/tracking_load.py), or the database refused for now.
Waiting mends these, as it mends a 5xx."""


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


def table_json(records: Sequence[Mapping[str, Any]]) -> str:
    """Rows as an MLflow table artifact: mlflow.log_table's format (pandas' split orient),
    which the UI renders; the columns in the order they first appear. Written here because
    log_table appends to an existing table, and a summary is rewritten."""
    columns: list[str] = []
    for row in records:
        columns += [c for c in row if c not in columns]
    return json.dumps({"columns": columns, "data": [[row.get(c) for c in columns]
                                                    for row in records]}, default=str)

