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

from pipelines.config.compose import UserError

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


USER_VAR, PASSWORD_VAR = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
"""Where MLflow's client reads a server's login from (take_credentials puts a URI's there)."""
WRITE = ("EDIT", "MANAGE")
"""The permissions of MLflow's basic-auth app that let a user log runs in an experiment."""


def _ask(uri: str, path: str) -> tuple[int, dict]:
    """GET `path` of a tracking server with the login MLflow's client would send: (HTTP
    status, the JSON answer or {})."""
    import base64
    import json

    headers = {}
    if os.environ.get(USER_VAR):
        login = f"{os.environ[USER_VAR]}:{os.environ.get(PASSWORD_VAR, '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(login.encode()).decode()
    request = urllib.request.Request(f"{uri}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    try:
        return status, json.loads(body or b"{}")
    except ValueError:
        return status, {}


def login_refused(uri: str) -> str:
    """The line that says a server refused the login (or asked for one)."""
    user = os.environ.get(USER_VAR)
    if not user:
        return (f"tracking.uri={uri}: the server asks for a login; set {USER_VAR} and "
                f"{PASSWORD_VAR}, or give http://user:password@host:port")
    return (f"tracking.uri={uri}: the server refused the login of user '{user}'; check "
            f"{USER_VAR} and {PASSWORD_VAR}")


def check_login(uri: str) -> str | None:
    """Bad input (UserError) when a server with logins (MLflow's basic-auth app) refuses
    the login, or asks for one that was not given. Returns the user, None for an admin or
    a server without logins."""
    if not uri.startswith(("http://", "https://")):
        return None
    status, me = _ask(uri, "/api/2.0/mlflow/users/current")
    if status == 401:
        raise UserError(login_refused(uri))
    if status != 200 or "user" not in me or me["user"].get("is_admin"):
        return None  # no logins here (404), or an admin
    return str(me["user"]["username"])


def check_access(uri: str, experiment: str) -> None:
    """check_login, then bad input when the user may only read the experiment the runs go
    to. Asks, writes nothing: a refused user leaves no run and no experiment behind. An
    experiment not made yet passes (its maker may write to it)."""
    from urllib.parse import quote

    user = check_login(uri)
    if user is None:
        return
    status, found = _ask(uri, "/api/2.0/mlflow/experiments/get-by-name?experiment_name="
                         + quote(experiment))
    if status != 200:
        return
    experiment_id = found["experiment"]["experiment_id"]
    status, granted = _ask(uri, f"/api/3.0/mlflow/users/permissions/get?username={quote(user)}"
                           f"&resource_type=experiment&resource_id={experiment_id}")
    permission = granted.get("permission")
    if status == 200 and permission not in WRITE:
        raise UserError(
            f"tracking.experiment={experiment}: user '{user}' may only read it on {uri} "
            f"(permission {permission}); ask its owner or an admin for EDIT, or log to "
            "another experiment (tracking.experiment=...)")


def refusal(error: BaseException, uri: str, action: str) -> str | None:
    """The line for a tracking call the server refused for the user's login or
    permissions (HTTP 401 or 403): the user may not `action`; None for any other error."""
    code = getattr(error, "error_code", None)
    if code == "UNAUTHENTICATED":
        return login_refused(uri)
    if code == "PERMISSION_DENIED":
        user = os.environ.get(USER_VAR, "(no login)")
        return f"user '{user}' may not {action} on {uri} (permission denied)"
    return None


def readable_store(uri: str) -> str:
    """The resolved URI of a store to read runs from; bad input (UserError) when it cannot
    be reached or holds nothing yet."""
    uri = resolve_uri(uri)
    check_tracking(uri)
    check_login(uri)
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
