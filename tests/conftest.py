"""The session's fixtures: a working directory, a real MLflow server, a real local Ray.
The helpers the tests share live in tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import PG_BIN, MlflowServer, TeamServer


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty working directory for one command-line run."""
    d = tmp_path / "work"
    d.mkdir()
    return d


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


@pytest.fixture(scope="session")
def team_server():
    """The team's tracking server, for real (tests/helpers.py TeamServer): PostgreSQL,
    MLflow's logins and permissions, artifacts through the server. Shared by the session's
    tests; those that stop PostgreSQL start a TeamServer of their own."""
    if not PG_BIN.is_dir():
        pytest.skip(f"PostgreSQL 15 is not installed ({PG_BIN}): apt-get install postgresql "
                    "(.ci/run does)")
    server = TeamServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
