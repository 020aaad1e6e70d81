"""The load one tracking server holds: K writer processes, each doing what a trial does,
against a sqlite-backed MLflow server, a PostgreSQL-backed one, and the team server
(PostgreSQL with MLflow's logins: pipelines.tracking.team_server), each with the same
workers, in one run.

Each writer goes through the project's own RunLogger, write buffer and system-metrics
monitor: it opens a run (tags, params, the config as an artifact), then for --seconds
  - the monitor samples the machine every SYSTEM_EVERY_S / --compress seconds and logs
    each sample (MLflow's SystemMetricsMonitor: one batch of a dozen series);
  - a report every REPORT_EVERY_S / --compress seconds: a DQN report's metrics and
    REPORT_RETURNS episode returns, flushed as a trial's TrialReporter flushes them;
then writes what it still holds and closes its run. The rates are a Pong trial's,
experiment=pong_dqn_gpu at the GPU goal of 8,000 env steps/s: a report every 250,000 env
steps (about 31 s), about 100 Pong episodes between two reports, and a system sample every
5 s (tracking.system_metrics_every_s); --compress divides every interval.

Reported per backend and K: requests/s (the flushes and the system samples taken; a slow
server gets several samples a write, so it saw fewer) and points/s the server held, p50
and p99 of a flush's latency, failed flushes (after the MLflow client's own retries),
points lost (the points the writers sent, or their monitors sampled, that the database
does not hold at their run, series and step) and points doubled (rows beyond one per run,
series and step). On this 2-core machine the writers, the monitors and the server
share the cores: the figures are a floor for a server with cores of its own.
Usage: python -m benchmarks.tracking_load [--writers 8,16,32,64,128] [--seconds 20]
       [--compress 10] [--workers 2]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from algos.core.metrics import EPISODE_RETURN
from algos.registry import ALGORITHMS
from benchmarks.common import ROOT, table, write
from pipelines import private_api
from pipelines.tracking.buffer import WriteBuffer
from pipelines.tracking.run_logger import RunLogger
from pipelines.tracking.system_metrics import start_system_metrics, stop_system_metrics
from pipelines.tracking.team_server import wait_healthy

REPORT_EVERY_S, SYSTEM_EVERY_S = 31.0, 5.0
"""A Pong trial's seconds between reports (250,000 env steps at 8,000 a second) and between
system samples."""
REPORT_RETURNS = 100
"""The Pong episodes that end between two reports."""
DQN_REPORT = ALGORITHMS["dqn"].reported
"""What a DQN report holds."""
EXPERIMENT = "load"
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
              "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
POINT = "m.run_uuid || '/' || m.key || '/' || CAST(m.step AS TEXT)"
"""A metric point's identity in the database: its run, series and step."""
BACKENDS = [("sqlite", 0), ("postgresql", 0), ("team server", 60), ("team server", 0)]
"""(backend, the team server's login cache in seconds): its default, and none."""
NO_CACHE_WRITERS = 8
"""The most writers the team server without its login cache gets: each of its requests
hashes the password again (on purpose slowly), so more only queue."""


class Backend:
    """One server under load: how to start it, its URI and login, and how to count the
    rows its database holds for a set of runs."""

    def __init__(self, kind: str, workers: int, root: Path, auth_cache_s: int = 60) -> None:
        from tests.helpers import PostgresServer, TeamServer, free_port

        self.kind, self.workers, self.root = kind, workers, root
        self.auth_cache_s = auth_cache_s
        self.login: dict[str, str] = {}
        self.team = TeamServer() if kind == "team server" else None
        self.pg = self.team.pg if self.team else (
            PostgresServer("mlflow", "pg-load") if kind == "postgresql" else None)
        self.port = self.team.port if self.team else free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the server (and its database)."""
        if self.team is not None:
            self.team.args[self.team.args.index("--workers") + 1] = str(self.workers)
            self.team.args += ["--auth-cache-s", str(self.auth_cache_s)]
            self.team.start()
            self.login = self.team.env("editor")
            return
        backend = f"sqlite:///{self.root / 'load.db'}"
        if self.pg is not None:
            self.pg.start()
            self.pg.psql("postgres", "CREATE DATABASE mlflow")
            backend = f"postgresql+psycopg://mlflow@127.0.0.1:{self.pg.port}/mlflow"
        mlflow = Path(sys.executable).parent / "mlflow"
        env = {**os.environ, **SERVER_ENV, "PGPASSWORD": self.pg.password if self.pg else ""}
        self.proc = subprocess.Popen(
            [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", backend, "--workers", str(self.workers),
             "--artifacts-destination", str(self.root / "artifacts")],
            stdout=open(self.root / f"{self.kind}.log", "a"), stderr=subprocess.STDOUT,
            env=env, start_new_session=True)
        wait_healthy(self.uri, self.proc)

    def experiment(self, name: str) -> str:
        """A fresh experiment for one round (made as the admin on the team server, the
        editor granted EDIT on it)."""
        from mlflow import MlflowClient

        if self.team is None:
            return MlflowClient(self.uri).create_experiment(name)
        from mlflow.server import get_app_client

        saved = dict(os.environ)
        os.environ.update(self.team.env("admin"))
        try:
            experiment_id = MlflowClient(self.uri).create_experiment(name)
            get_app_client("basic-auth", tracking_uri=self.uri).grant_user_permission(
                "editor", "experiment", experiment_id, "EDIT")
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return experiment_id

    def query(self, sql: str) -> list[list[str]]:
        """The rows of a query on the server's database, as text."""
        if self.pg is None:
            with sqlite3.connect(self.root / "load.db") as db:
                return [[str(v) for v in row] for row in db.execute(sql).fetchall()]
        return [line.split("|") for line in self.pg.psql("mlflow", sql).split()]

    def counts(self, experiment_id: str) -> dict[str, tuple[int, int]]:
        """The metric rows of the experiment's runs, and the distinct (run, key, step)
        among them: {'trial': (rows, distinct), 'system': (rows, distinct)}."""
        rows = self.query(
            "SELECT CASE WHEN m.key LIKE 'system/%' THEN 'system' ELSE 'trial' END, "
            f"COUNT(*), COUNT(DISTINCT {POINT}) FROM metrics m JOIN runs r ON "
            f"m.run_uuid = r.run_uuid WHERE r.experiment_id = {int(experiment_id)} GROUP BY 1")
        return {kind: (int(n), int(distinct)) for kind, n, distinct in rows}

    def system_series(self, experiment_id: str) -> dict[str, tuple[int, int]]:
        """Per run: its system series, and the distinct (key, step) they hold."""
        rows = self.query(
            f"SELECT m.run_uuid, COUNT(DISTINCT m.key), COUNT(DISTINCT {POINT}) FROM metrics "
            "m JOIN runs r ON m.run_uuid = r.run_uuid WHERE "
            f"r.experiment_id = {int(experiment_id)} AND m.key LIKE 'system/%' "
            "GROUP BY m.run_uuid")
        return {run: (int(series), int(points)) for run, series, points in rows}

    def stop(self) -> None:
        """Stop the server and its database."""
        if self.team is not None:
            self.team.stop()
            return
        if self.proc is not None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(timeout=60)
        if self.pg is not None:
            self.pg.remove()


def writer(uri: str, login: dict[str, str], experiment_id: str, index: int, seconds: float,
           compress: float, out) -> None:
    """One trial's tracking, in its own process: its run, its reports and its monitor for
    `seconds`; what it measured, to `out`."""
    os.environ.update({**login, **SERVER_ENV, "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"})
    try:
        logger = RunLogger.create(
            uri, experiment_id, f"load/{index}", run_name=f"writer-{index}",
            tags={"algo": "dqn", "env": "pong", "seed": index},
            params={f"algo.p{i}": i for i in range(40)},
            config={"algo": {"lr": 1e-4}, "env": {"id": "ALE/Pong-v5"}})
    except Exception as e:  # the server refused the run: a trial that fails at its start
        out.put({"latencies": [], "failed": 0, "sent": 0, "flushes": 0, "run_id": None,
                 "samples": 0, "error": str(e).splitlines()[0][:200]})
        return
    buffer = WriteBuffer(logger, flush_every_s=0.0)
    monitor = start_system_metrics(logger, SYSTEM_EVERY_S / compress)
    latencies, failed, sent, step = [], 0, 0, 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        time.sleep(REPORT_EVERY_S / compress)
        step += 250_000
        now = time.time()
        points = logger.report_points(
            step, {name: 1.0 for name in DQN_REPORT},
            {EPISODE_RETURN: [(step - 2_500 * (REPORT_RETURNS - i), -21.0 + i % 42, now)
                              for i in range(REPORT_RETURNS)]})
        sent += len(points)
        buffer.add(points)
        clock = time.monotonic()
        try:
            if not buffer.flush():
                failed += 1
        except Exception:  # a refusal: the points stay held for the next flush
            failed += 1
        latencies.append(time.monotonic() - clock)
    error = ""
    try:
        buffer.wait(seconds=120, every=1.0)
    except Exception as e:  # what is still held after two minutes is lost
        error = str(e).splitlines()[0][:200]
    finally:
        stop_system_metrics(monitor)
        samples = private_api.system_steps_taken(monitor) if monitor else 0
        try:
            logger.finish("FINISHED")
        except Exception as e:
            error = error or str(e).splitlines()[0][:200]
    out.put({"latencies": latencies, "failed": failed, "sent": sent,
             "flushes": len(latencies), "run_id": logger.run_id, "samples": samples,
             "error": error})


def one_round(backend: Backend, writers: int, seconds: float, compress: float
              ) -> dict[str, Any]:
    """K writers at once against `backend`: the round's figures."""
    experiment_id = backend.experiment(f"{EXPERIMENT}-{writers}")
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    procs = [context.Process(target=writer, args=(backend.uri, backend.login, experiment_id,
                                                  i, seconds, compress, out))
             for i in range(writers)]
    started = time.monotonic()
    for proc in procs:
        proc.start()
    results = [out.get(timeout=seconds + 600) for _ in procs]
    for proc in procs:
        proc.join(60)
    wall = time.monotonic() - started
    counts, series = backend.counts(experiment_id), backend.system_series(experiment_id)
    (rows, stored), (system_rows, system_stored) = (counts.get(k, (0, 0))
                                                    for k in ("trial", "system"))
    # Each sample a writer's monitor took is a point in each of its run's system series.
    system_taken = sum(r["samples"] * series.get(r["run_id"], (0, 0))[0] for r in results)
    latencies = sorted(x for r in results for x in r["latencies"]) or [math.nan]
    errors = [r["error"] for r in results if r.get("error")]
    sent = sum(r["sent"] for r in results)
    flushes = sum(r["flushes"] for r in results)
    samples = sum(r["samples"] for r in results)
    return {
        "backend": backend.kind + (f", login cache {backend.auth_cache_s} s"
                                   if backend.team else ""), "writers": writers, "seconds": wall,
        "requests_per_s": (flushes + samples) / wall,
        "points_per_s": (rows + system_rows) / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "failed_flushes": sum(r["failed"] for r in results),
        "points_sent": sent, "points_stored": stored, "points_lost": sent - stored,
        "points_doubled": rows - stored, "system_points_taken": system_taken,
        "system_points_lost": system_taken - system_stored,
        "system_points_doubled": system_rows - system_stored,
        "runs_failed": sum(1 for r in results if not r["flushes"] and r.get("error")),
        "errors": sorted(set(errors))[:3],
    }


def main() -> None:
    """Measure, print the table, write results/tracking_load.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writers", default="8,16,32,64,128")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--compress", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # tests.helpers: the tests' own PostgreSQL and team server
    rounds = []
    for kind, cache in BACKENDS:
        with tempfile.TemporaryDirectory() as tmp:
            backend = Backend(kind, args.workers, Path(tmp), cache)
            try:
                backend.start()
                for k in map(int, args.writers.split(",")):
                    if backend.team is not None and not cache and k > NO_CACHE_WRITERS:
                        continue
                    rounds.append(one_round(backend, k, args.seconds, args.compress))
                    print(rounds[-1], flush=True)
            finally:
                backend.stop()
    columns = ["backend", "writers", "requests/s", "points/s", "p50 flush ms", "p99 flush ms",
               "failed flushes", "runs refused", "points lost", "points doubled",
               "system points lost", "system points doubled"]
    print(table(columns, [[r["backend"], r["writers"], r["requests_per_s"], r["points_per_s"],
                           r["p50_ms"], r["p99_ms"], r["failed_flushes"], r["runs_failed"],
                           r["points_lost"], r["points_doubled"], r["system_points_lost"],
                           r["system_points_doubled"]] for r in rounds],
                title=f"{args.workers} server workers, Pong trials compressed "
                      f"{args.compress:g}x, {args.seconds:g} s a round"))
    print(f"written to {write('tracking_load', {'args': vars(args), 'rounds': rounds})}")


if __name__ == "__main__":
    main()
