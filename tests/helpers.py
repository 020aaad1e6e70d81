"""What the tests share, imported by name (the fixtures are in conftest.py): the real
command line run in a process of its own or in this one, a real `mlflow server`, MLflow
read-back checks, a small frozen-lake job, a trained run logged as a trial logs it, and
a stream of frames for the replay memories. No test module imports another.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from algos.core.replay import FrameReplayBuffer
from algos.core.reporting import MemoryReporter
from pipelines.config.compose import compose_and_check, flat_params
from pipelines.results.play import held_out_test
from pipelines.tracking.models import log_agents, log_test
from pipelines.tracking.run_logger import RunLogger
from pipelines.tracking.team_server import wait_healthy
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
            # MLflow's job runner (GenAI jobs; a dozen processes) runs nothing of ours.
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        )
        try:
            wait_healthy(self.uri, self.proc, seconds=90)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"mlflow server did not start: "
                               f"{(self.root / 'server.log').read_text()[-3000:]}") from None

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

SMALL = [
    "experiment=frozenlake_course",
    "algo.episodes=400",
    "algo.report_every=100",
    "cluster.num_cpus=2",
]

def runs_of(client: MlflowClient, experiment: str, name: str | None = None):
    """(the experiment, its parents, its children); with `name`, those of that sweep."""
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, [e.name for e in client.search_experiments()]
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    if name is not None:
        runs = [r for r in runs if r.data.tags.get("sweep") == name]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return exp, parents, children


def batch_for(composed, result) -> np.ndarray:
    """A batch of real observations of the env."""
    from algos.core.envs import make_env

    env = make_env(composed.cfg.env)
    obs = [env.reset(seed=s)[0] for s in range(8)]
    env.close()
    return np.asarray(obs, dtype=result.example_obs().dtype)


def train_curve(experiment: str, seed: int, metric: str) -> list[float]:
    """`experiment` trained on `seed` as the course runs it: `metric` at every
    evaluation, in order."""
    composed = compose_and_check([f"experiment={experiment}"])
    reporter = MemoryReporter()
    composed.algorithm.train(composed.cfg.algo, composed.cfg.env, seed, reporter)
    return [r[metric] for r in reporter.reports]


def on_every_seed(experiments: str | tuple[str, ...], seeds: range, metric: str) -> dict:
    """train_curve of each seed of each experiment, as many at once as there are cores
    (each run is single-threaded: a rollout worker sets torch to one thread), each in a
    process of its own: {seed: curve} for one experiment, {(experiment, seed): curve} for
    several. A run is deterministic on one machine, not across CPUs (their float kernels
    differ), so a claim over seeds allows for a seed that diverges."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    names = (experiments,) if isinstance(experiments, str) else experiments
    runs = [(name, seed) for name in names for seed in seeds]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(len(runs), os.cpu_count() or 1), mp_context=context,
                             initializer=_one_thread) as pool:
        curves = pool.map(train_curve, [n for n, _ in runs], [s for _, s in runs],
                          [metric] * len(runs))
        out = dict(zip(runs, curves, strict=True))
    return {s: c for (_, s), c in out.items()} if isinstance(experiments, str) else out


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def logged_run(args: list[str], uri: str, experiment: str, reporter=None):
    """A run of `args` trained in this process and written to the store `uri` as a trial
    writes it (params, every report, then its models): (composed, result, run id, the
    ids of its final and best models)."""
    composed = compose_and_check(args)
    cfg = composed.cfg
    reporter = reporter if reporter is not None else MemoryReporter()
    result = composed.algorithm.train(cfg.algo, cfg.env, cfg.seed, reporter)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    run = client.create_run(exp.experiment_id if exp else client.create_experiment(experiment))
    logger = RunLogger(uri, run.info.run_id, -np.inf)
    logger.log_params(flat_params(composed.container))
    for r in reporter.reports:
        logger.log_metrics({k: v for k, v in r.items() if k != "step"}, step=r["step"])
    step = reporter.reports[-1]["step"]
    test = held_out_test(composed, result)
    ids = log_agents(logger, result, composed, final_step=step, test=test)
    log_test(logger, test, step, ids["best"])
    return composed, result, run.info.run_id, ids

FRAME = (3, 2)  # tiny frames: the layout, not the size, is under test
STACK = 4


def make_stream(n_envs: int, steps: int, seed: int):
    """Random episodes per env, stacked like FrameStackObservation (reset padding), with
    terminations and truncations; reward = a unique transition id."""
    rng = np.random.default_rng(seed)
    next_id = 0
    stacks = {}
    stream = []
    for _ in range(steps):
        for e in range(n_envs):
            start = e not in stacks
            if start:
                first = rng.integers(0, 255, size=FRAME, dtype=np.uint8)
                stacks[e] = np.stack([first] * STACK)
            obs = stacks[e]
            frame = rng.integers(0, 255, size=FRAME, dtype=np.uint8)
            next_obs = np.concatenate([obs[1:], frame[None]])
            u = rng.random()
            terminated, truncated = u < 0.04, 0.04 <= u < 0.07
            stream.append((e, obs, int(rng.integers(0, 6)), float(next_id), next_obs,
                           terminated, truncated, start))
            next_id += 1
            if terminated or truncated:
                del stacks[e]
            else:
                stacks[e] = next_obs
    return stream


def feed(buffer, stream, chunk: int = 7):
    for i in range(0, len(stream), chunk):
        rows = stream[i:i + chunk]
        cols = list(zip(*rows, strict=True))
        buffer.add(np.array(cols[0]), np.array(cols[1]), np.array(cols[2]),
                   np.array(cols[3], dtype=np.float32), np.array(cols[4]),
                   np.array(cols[5]), np.array(cols[6]), np.array(cols[7]))

def check_frame_memory_on(device) -> None:
    """Frames in a torch tensor on `device` sample, save and restore exactly what the
    numpy memory does with the same seed."""
    import torch

    stream = make_stream(n_envs=2, steps=400, seed=3)
    host = FrameReplayBuffer(300, FRAME, stack=STACK, n_envs=2, seed=7)
    there = FrameReplayBuffer(300, FRAME, stack=STACK, n_envs=2, seed=7, device=device)
    feed(host, stream)
    feed(there, stream)
    assert there.nbytes == host.nbytes and there.obs_nbytes == host.obs_nbytes
    for _ in range(3):
        a, b = host.sample(64), there.sample(64)
        assert b.obs.device.type == torch.device(device).type
        assert np.array_equal(a.obs, b.obs.cpu().numpy())
        assert np.array_equal(a.next_obs, b.next_obs.cpu().numpy())
        assert np.array_equal(a.actions, b.actions) and np.array_equal(a.rewards, b.rewards)
    restored = FrameReplayBuffer(300, FRAME, stack=STACK, n_envs=2, device=device)
    restored.load_state_dict(there.state_dict())
    assert torch.equal(restored.frames, there.frames)
    assert np.array_equal(restored.count, there.count)


PG_BIN = Path("/usr/lib/postgresql/15/bin")
"""Debian's PostgreSQL 15 server binaries (.ci/run installs the package where missing)."""


class PostgresServer:
    """A real PostgreSQL server of its own: an initdb data folder (owned by the `postgres`
    user the Debian package made when we are root: initdb refuses root), listening on
    127.0.0.1 at a free port, its socket in its own folder, password logins
    (scram-sha-256) for the database user `user`. stop() and start() again keep its
    data."""

    def __init__(self, user: str, password: str) -> None:
        self.user, self.password, self.port = user, password, free_port()
        self.root = Path(tempfile.mkdtemp(prefix="pg-", dir="/tmp"))
        self.data, self.socket = self.root / "data", self.root / "socket"
        self.socket.mkdir()
        pwfile = self.root / "pwfile"
        pwfile.write_text(password + "\n")
        if os.geteuid() == 0:
            for path in (self.root, self.socket, pwfile):
                shutil.chown(path, "postgres")
        self._as_postgres(PG_BIN / "initdb", "-D", self.data, "-U", user, "--pwfile", pwfile,
                          "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
        pwfile.unlink()

    def _as_postgres(self, *command, check: bool = True) -> subprocess.CompletedProcess:
        """Run a server binary: as `postgres` when we are root (initdb refuses root)."""
        sudo = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*sudo, *map(str, command)], capture_output=True, text=True,
                              check=check, timeout=120)

    def start(self) -> None:
        """Start it and wait until it takes connections."""
        options = f"-p {self.port} -k {self.socket} -c listen_addresses=127.0.0.1"
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.root / "server.log",
                          "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Stop it (fast: open connections are closed)."""
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop",
                          check=False)

    def psql(self, database: str, sql: str) -> str:
        """Run `sql` with psql as the database user; its output (tuples only, | between
        columns)."""
        env = {**os.environ, "PGPASSWORD": self.password}
        out = subprocess.run(["psql",
                              "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user,
                              "-d", database, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
                             capture_output=True, text=True, env=env, timeout=120)
        if out.returncode:
            raise RuntimeError(f"psql: {out.stderr.strip()}")
        return out.stdout

    def remove(self) -> None:
        """Stop it and delete its folder."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


TEAM_EXPERIMENT = "team"
"""The experiment the team server's users sweep into."""
TEAM_USERS = {"admin": None, "editor": "EDIT", "reader": "READ", "intern": "EDIT"}
"""The team server's users and their permission on TEAM_EXPERIMENT (the admin: all)."""


class TeamServer:
    """The team's tracking server, for real: a PostgreSQL of its own, and `python -m
    pipelines.tracking.team_server` on it (what docker/compose.yaml runs): MLflow's
    basic-auth app with its user store in PostgreSQL, artifacts served through the server,
    2 workers. Users made through MLflow's own auth client: TEAM_USERS, each with a
    password of its own."""

    def __init__(self) -> None:
        self.pg = PostgresServer("mlflow", "pg-" + os.urandom(8).hex())
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.passwords = {user: f"{user}-{os.urandom(6).hex()}" for user in TEAM_USERS}
        self.args = ["--database-host", "127.0.0.1", "--database-port", str(self.pg.port),
                     "--artifacts", str(self.pg.root.parent / f"{self.pg.root.name}-artifacts"),
                     "--port", str(self.port), "--workers", "2"]
        self.proc: subprocess.Popen | None = None
        self.experiment_id = ""

    def env(self, user: str) -> dict[str, str]:
        """The environment a command of `user` runs with (MLflow's client reads the login
        from it)."""
        return {"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": self.passwords[user]}

    def start(self) -> None:
        """PostgreSQL, its two databases, the server; then the users and the experiment."""
        self.pg.start()
        for database in ("mlflow", "mlflow_auth"):
            self.pg.psql("postgres", f"CREATE DATABASE {database}")
        self.serve()
        self._users()

    def serve(self) -> None:
        """Start the MLflow server and wait until /health answers."""
        log = open(self.pg.root.parent / f"{self.pg.root.name}-server.log", "a")
        env = {**os.environ, "PGPASSWORD": self.pg.password, "PYTHONPATH": str(ROOT),
               "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
               "MLFLOW_AUTH_ADMIN_PASSWORD": self.passwords["admin"]}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.tracking.team_server", *self.args],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            wait_healthy(self.uri, self.proc)
        except RuntimeError:
            raise RuntimeError(f"the team server did not start: {log.name}") from None

    def _users(self) -> None:
        from mlflow.server import get_app_client

        saved = {k: os.environ.get(k) for k in self.env("admin")}
        os.environ.update(self.env("admin"))
        try:
            auth = get_app_client("basic-auth", tracking_uri=self.uri)
            self.experiment_id = MlflowClient(self.uri).create_experiment(TEAM_EXPERIMENT)
            for user, permission in TEAM_USERS.items():
                if permission is None:
                    continue
                auth.create_user(user, self.passwords[user])
                auth.grant_user_permission(user, "experiment", self.experiment_id, permission)
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)

    def stop(self) -> None:
        """Stop the server (its whole process group) and PostgreSQL, and delete them."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.pg.remove()
