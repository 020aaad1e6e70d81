"""The team's tracking server: MLflow on PostgreSQL, with MLflow's basic-auth app (logins
and permissions; its user store in PostgreSQL too) and the artifacts served through the
server, so that clients need no access to the artifact store.

docker/compose.yaml runs it, the tests start it, and docs/mlflow.md ("Team server") runs it
on a plain machine, all three through this module, so their flags cannot drift apart:

    python -m pipelines.tracking.team_server --database-host 127.0.0.1 \\
        --database-port 5432 --artifacts /srv/mlflow/artifacts --port 5000

It writes the auth app's ini (no secret in it) to a folder of its own and runs `mlflow server`
in its place. The secrets come from the environment, never from the command line:
PGPASSWORD (the database user's, read by libpq), MLFLOW_AUTH_ADMIN_USERNAME and
MLFLOW_AUTH_ADMIN_PASSWORD (the admin made on an empty user store), and
MLFLOW_FLASK_SERVER_SECRET_KEY (the auth app's CSRF key: one made here when unset, the same
for every worker).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DATABASE, AUTH_DATABASE, DATABASE_USER = "mlflow", "mlflow_auth", "mlflow"
"""The two databases (runs; users and permissions) and the user that owns them."""
DEFAULT_PERMISSION = "READ"
"""What a user may do in an experiment or model nobody granted them anything on."""
AUTH_APP = "basic-auth"
SECRET_KEY_VAR = "MLFLOW_FLASK_SERVER_SECRET_KEY"
SERVER_ENVIRONMENT = {
    # MLflow's job runner serves GenAI jobs (a dozen processes); nothing here uses it.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


@dataclass
class TeamServer:
    """One team server's settings: where its databases and artifacts are, where it
    listens."""

    database_host: str
    database_port: int
    artifacts: str
    """The folder (or bucket URI) the server keeps artifacts in (--artifacts-destination)."""
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 2
    allowed_hosts: str | None = None
    """Host headers the server answers (its DNS-rebinding guard); None: MLflow's default."""
    database_user: str = DATABASE_USER
    auth_cache_s: int = 60
    """How long each worker trusts a login it checked (0: check every request). A check
    hashes the password on purpose slowly, and a trial sends a request every few seconds:
    benchmarks/results/tracking_load.json has what the cache holds. A password changed or
    a user deleted reaches the other workers within this many seconds."""

    def database_uri(self, database: str) -> str:
        """SQLAlchemy's URI of one of its databases (psycopg 3; the password from
        PGPASSWORD)."""
        return (f"postgresql+psycopg://{self.database_user}@{self.database_host}:"
                f"{self.database_port}/{database}")

    @property
    def uri(self) -> str:
        """The tracking URI clients use (on this machine)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def auth_ini(self) -> str:
        """The basic-auth app's configuration (keys of mlflow/server/auth/basic_auth.ini):
        its user store in PostgreSQL, READ for anyone not granted more, checked logins
        trusted for auth_cache_s seconds."""
        return "\n".join([
            "[mlflow]",
            f"default_permission = {DEFAULT_PERMISSION}",
            f"database_uri = {self.database_uri(AUTH_DATABASE)}",
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
            f"auth_cache_ttl_seconds = {self.auth_cache_s}",
            "",
        ])

    def command(self, mlflow: str = "mlflow") -> list[str]:
        """`mlflow server` with the basic-auth app, the runs in PostgreSQL, the artifacts
        served through it."""
        command = [mlflow, "server", "--app-name", AUTH_APP,
                   "--host", self.host, "--port", str(self.port),
                   "--workers", str(self.workers),
                   "--backend-store-uri", self.database_uri(DATABASE),
                   "--serve-artifacts", "--artifacts-destination", self.artifacts]
        if self.allowed_hosts:
            command += ["--allowed-hosts", self.allowed_hosts]
        return command

    def environment(self, ini: Path) -> dict[str, str]:
        """What the server's process needs beside the caller's environment: the ini's
        path, the CSRF key (made now when unset), no job runner."""
        return {**SERVER_ENVIRONMENT, "MLFLOW_AUTH_CONFIG_PATH": str(ini),
                SECRET_KEY_VAR: os.environ.get(SECRET_KEY_VAR) or secrets.token_hex(32)}


def wait_healthy(uri: str, proc, seconds: float = 120) -> None:
    """Until the MLflow server at `uri` answers /health with OK; RuntimeError when its
    process `proc` (a subprocess.Popen) ends first or `seconds` pass."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.read().decode().strip() == "OK":
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise RuntimeError(f"no MLflow server at {uri}")


def parser() -> argparse.ArgumentParser:
    """The command line (every flag a TeamServer field)."""
    p = argparse.ArgumentParser(prog="python -m pipelines.tracking.team_server",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--database-host", required=True)
    p.add_argument("--database-port", type=int, default=5432)
    p.add_argument("--database-user", default=DATABASE_USER)
    p.add_argument("--artifacts", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--allowed-hosts", default=None)
    p.add_argument("--auth-cache-s", type=int, default=60)
    return p


def from_args(argv: list[str]) -> TeamServer:
    """The TeamServer a command line describes."""
    args = parser().parse_args(argv)
    return TeamServer(**{k: v for k, v in vars(args).items()})


def main(argv: list[str] | None = None) -> None:
    """Write the ini and become `mlflow server` (its signals and exit code are the
    server's)."""
    server = from_args(sys.argv[1:] if argv is None else argv)
    folder = Path(tempfile.mkdtemp(prefix="mlflow-auth-"))
    ini = folder / "basic_auth.ini"
    ini.write_text(server.auth_ini())
    mlflow = shutil.which("mlflow") or str(Path(sys.executable).parent / "mlflow")
    os.execvpe(mlflow, server.command(mlflow), {**os.environ, **server.environment(ini)})


if __name__ == "__main__":
    main()
