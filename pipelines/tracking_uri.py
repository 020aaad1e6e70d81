"""Where MLflow records runs, and how a user opens them: tracking URIs (made absolute,
credentials taken out of them and never written) and the UI's links.

Everything here runs on the driver before anything starts: a URI that cannot be used is
bad input (UserError).
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from pipelines.config import UserError

SCHEMES = ("sqlite", "file", "http", "https", "postgresql", "mysql", "mssql")

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
