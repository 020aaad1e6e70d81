"""Shared fixtures: the real command line, a real MLflow server, MLflow read-back."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ray_cluster import free_port

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class CliResult:
    """What one command-line run left."""

    returncode: int
    stdout: str
    stderr: str
    cwd: Path
    ray_started: bool
    """Whether Ray wrote a session into the run's own RAY_TMPDIR."""

    @property
    def last_line(self) -> str:
        """The last non-empty line of stdout."""
        lines = [line for line in self.stdout.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def cli_env(ray_tmp: Path) -> dict[str, str]:
    """The environment of a command-line run: the repo importable by Ray's workers, Ray's
    session files in a folder of the test's own (so a test can see whether Ray started)."""
    env = dict(os.environ)
    # mlflow.set_tracking_uri in the test process exports MLFLOW_TRACKING_URI: a command
    # must use the store its own arguments name, as a user's would.
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(name, None)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["RAY_TMPDIR"] = str(ray_tmp)
    env.setdefault("RAY_DEDUP_LOGS", "1")
    return env


def run_cli(
    module: str, args: list[str], cwd: Path, timeout: float = 600,
    env: dict[str, str] | None = None, recorded_address: str | None = None,
) -> CliResult:
    """python -m <module> <args> in `cwd`, as a user would run it; `env` adds to its
    environment; `recorded_address` is written where `ray start` records its cluster."""
    # Ray's socket paths must stay under 107 bytes: keep its folder short.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    record = ray_tmp / "ray" / "ray_current_cluster"
    if recorded_address:
        record.parent.mkdir()
        record.write_text(recorded_address)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=cwd, env={**cli_env(ray_tmp), **(env or {})}, capture_output=True, text=True,
            timeout=timeout,
        )
        started = any(p != record.parent for p in ray_tmp.iterdir()) or any(
            p != record for p in record.parent.glob("*"))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return CliResult(proc.returncode, proc.stdout, proc.stderr, cwd, started)


def assert_no_step_twice(client, run) -> None:
    """Every metric of the run, system/* and perf/* included, holds each step once."""
    from collections import Counter

    for key in run.data.metrics:
        steps = Counter(m.step for m in client.get_metric_history(run.info.run_id, key))
        twice = sorted(step for step, n in steps.items() if n > 1)
        assert not twice, f"run {run.info.run_id}, {key}: steps logged twice: {twice[:10]}"


def assert_models_once(client, run) -> None:
    """The run logged its models once: final, and best unless it is the same model."""
    models = client.search_logged_models(
        [run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")
    names = sorted(m.name for m in models)
    assert names in (["best", "final"], ["final"]), names
    assert {run.data.tags["model.final"], run.data.tags["model.best"]} == {
        m.model_id for m in models}


def _loggers() -> list[logging.Logger]:
    return [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                   if isinstance(lg, logging.Logger))]


def _quiet_logging() -> dict[str, tuple[int, list[logging.Handler]]]:
    """Before an in-process run: every logger's level and handlers (to put back after),
    and no handler left writing to a stream an earlier test closed (pytest's captures):
    logging would report that on the run's own stderr, which a real process never sees."""
    saved = {lg.name: (lg.level, list(lg.handlers)) for lg in _loggers()}
    for lg in _loggers():
        for h in list(lg.handlers):
            if getattr(getattr(h, "stream", None), "closed", False):
                lg.removeHandler(h)
    return saved


def _restore_logging(saved: dict[str, tuple[int, list[logging.Handler]]]) -> None:
    """After an in-process run: each logger as it was (a real process ends instead)."""
    for lg in _loggers():
        level, handlers = saved.get(lg.name, (lg.level, []))
        lg.setLevel(level)
        lg.handlers[:] = handlers


def run_in_process(module: str, args: list[str], cwd: Path) -> CliResult:
    """An entry point's main(args) in this process, in `cwd`, its output captured, as
    run_cli gives it: for commands that start no Ray (evaluate, report, --cfg, --info),
    without the seconds of a new interpreter and its imports. ray_started: whether it
    called ray.init (which is refused)."""
    import contextlib
    import importlib
    import io

    import ray

    calls: list[tuple] = []

    def refuse(*a, **kw):
        calls.append((a, kw))
        raise RuntimeError("this command must not start Ray")

    out, err = io.StringIO(), io.StringIO()
    previous, init = os.getcwd(), ray.init
    # What the command may export (a store's URI, a URI's credentials) stays its own.
    saved = {k: os.environ.pop(k, None) for k in (
        "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD")}
    os.chdir(cwd)
    ray.init = refuse
    handlers = _quiet_logging()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = importlib.import_module(module).main(list(args))
    finally:
        _restore_logging(handlers)
        ray.init = init
        os.chdir(previous)
        for k, v in saved.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v
    return CliResult(code, out.getvalue(), err.getvalue(), cwd, bool(calls))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory for one command-line run."""
    d = tmp_path / "work"
    d.mkdir()
    return d


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with its own sqlite file and artifact folder,
    which a test can stop and start again (same port, same store)."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Start it and wait until /health answers."""
        mlflow_bin = Path(sys.executable).parent / "mlflow"
        log = open(self.root / "server.log", "a")
        self.proc = subprocess.Popen(
            [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--workers", "2"],
            cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.read().decode().strip() == "OK":
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server did not start: "
                                   f"{(self.root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop it (the whole process group: the server and its workers)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)
        self.proc = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """The URI of a real `mlflow server` shared by the session's tests (each writes its
    own experiments)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server.uri
    server.stop()


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray instance (2 CPUs, no dashboard) for every test of the session
    that uses Ray in this process (rollout-worker actors, the key-value store) and does
    not test Ray's own start."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()
