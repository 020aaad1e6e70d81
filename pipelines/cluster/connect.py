"""Starting or joining Ray: cluster=local always starts a Ray of its own
(`address="local"`), never one that a `ray start` once recorded on the machine;
cluster=remote joins `cluster.address`, whose nodes need the project's dependencies and
get the project itself through Ray's runtime environment unless
`cluster.runtime_env=false` (the project's image holds it). Ray does not forward the
driver's environment to the trials, so what they need goes explicitly. A cluster that
cannot run the launch is refused before any trial starts (UserError)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.cluster.capacity import (
    Capacity,
    check_trials_fit,
    local_capacity,
    number,
    running_capacity,
)
from pipelines.config.compose import ROOT, UserError
from pipelines.config.schema import ClusterConfig

log = logging.getLogger("rlpipe")

FORWARDED_ENV = (
    "RAY_AUTH_MODE",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT",
)
"""The driver's environment variables a trial needs on any node, passed when set."""

SHIP_EXCLUDES = [
    ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
    "mlflow.db", "*.db", "mlruns", "mlartifacts", "ray_results", "outputs",
    "benchmarks/results", ".device", ".whl",
]
"""What the code shipped to the nodes leaves out: history, environments, results, stores."""

def check_remote(capacity: Capacity, tracking_uri: str, storage: str) -> None:
    """What a cluster of several hosts cannot do: write a tracking file on one host's
    disk (refused), restore checkpoints kept on one host's disk (warned)."""
    hosts = sorted(set(capacity.hosts))
    if len(hosts) < 2:
        return
    scheme = tracking_uri.split(":", 1)[0]
    if scheme in ("sqlite", "file"):
        raise UserError(
            f"tracking.uri={tracking_uri}: the cluster's nodes span {len(hosts)} hosts "
            f"({', '.join(hosts)}), and trials on the others cannot write this host's file; "
            "use a tracking server every node reaches: tracking.uri=http://<host>:5000 "
            "(mlflow server --host 0.0.0.0 --port 5000)"
        )
    if "://" not in storage:
        log.warning(
            "cluster.storage_path=%s is a local path on a cluster of %d hosts: a trial "
            "retried on another host cannot restore its checkpoints; use storage every node "
            "reaches (a shared file system or s3://...)", storage, len(hosts))


HIDE_UNASSIGNED_GPUS = {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1"}
"""Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for a task or actor given no GPU, so a trial
(or a rollout worker) without a GPU share would still see, and with algo.device=auto use,
the node's GPUs. With this, Ray hides them from it: a GPU is used only where reserved."""


def runtime_env(cluster: ClusterConfig, tracking_uri: str) -> dict[str, Any]:
    """The job's runtime environment on a remote cluster: what the trials need from the
    driver's environment, and the project's code when cluster.runtime_env is on."""
    env_vars = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env_vars["MLFLOW_TRACKING_URI"] = tracking_uri
    env_vars.update(HIDE_UNASSIGNED_GPUS)
    env: dict[str, Any] = {"env_vars": env_vars}
    if not cluster.runtime_env or inside_job():
        return env  # the nodes' image has the code, or the job's working_dir ships it
    if (ROOT / "conf").is_dir() and (ROOT / "pipelines").is_dir():
        # A checkout: ship it whole (configs, benchmarks), less what SHIP_EXCLUDES names.
        env["working_dir"] = str(ROOT)
        env["excludes"] = list(SHIP_EXCLUDES)
    else:
        # An installed project: ship its packages; configs travel as rlpipe_conf.
        env["py_modules"] = [package_folder(name) for name in ("algos", "pipelines",
                                                                 "rlpipe_conf")]
        env["excludes"] = ["__pycache__"]
    return env


COMMIT_VAR = "RLPIPE_GIT_COMMIT"
"""The commit of code that runs without its history: set by the image's build, and by
job_runtime_env for a Ray Job (whose working dir travels without .git)."""


def git_commit() -> str:
    """The commit of the code being run: the checkout's (with -dirty when tracked files
    changed), else COMMIT_VAR, else 'unknown'. Only this project's own .git counts, not a
    repository that happens to hold the folder Ray unpacked it into."""
    if (ROOT / ".git").exists():
        try:
            out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                                 capture_output=True, text=True, timeout=5, check=True)
            dirty = subprocess.run(
                ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, timeout=5,
            ).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return os.environ.get(COMMIT_VAR, "unknown")


def job_runtime_env() -> dict[str, Any]:
    """The runtime env of `ray job submit --working-dir .` from a checkout: what the code
    shipped leaves out, and the checkout's commit, which the job's runs record."""
    return {"excludes": list(SHIP_EXCLUDES), "env_vars": {COMMIT_VAR: git_commit()}}


JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set in the driver of a Ray Job (ray job submit, KubeRay's RayJob): the job's config,
its runtime env (working_dir) included."""


def inside_job() -> bool:
    """Whether this driver runs as a Ray Job, whose runtime env (its --working-dir) every
    task and actor already gets: a second working_dir would clash with it."""
    return JOB_CONFIG_VAR in os.environ


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Bad input (UserError) when nothing listens at a cluster's host:port: Ray's own
    client retries such an address for minutes. 'auto' (a node's own cluster) is Ray's to
    find."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"cluster.address={address}: not host:port (the Ray head's GCS port, "
                        "6379 by default), ray://host:port, nor auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise UserError(f"cluster.address={address}: nothing answers there ({reason}); start "
                        "the head with ray start --head, or give its host:port") from None


def package_folder(name: str) -> str:
    """The folder an installed package imports from."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the package {name} is not installed")
    return str(Path(next(iter(spec.submodule_search_locations))))


def start_ray(cluster: ClusterConfig, tracking_uri: str) -> None:
    """Start a Ray of its own (cluster=local) or join cluster.address (remote)."""
    import ray

    # Short trials checkpoint at every report by design; Tune's warning about frequent
    # experiment snapshots is noise for them.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    common: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": True,
    }
    if cluster.kind == "local":
        os.environ.update(HIDE_UNASSIGNED_GPUS)  # the local Ray's workers inherit it
        ray.init(address="local", num_cpus=cluster.num_cpus, num_gpus=cluster.num_gpus,
                 **common)
        return
    from ray.exceptions import RayError

    check_reachable(cluster.address or "auto")
    # SHIP_EXCLUDES holds Ray's own default excludes (.git, .venv, __pycache__): with them
    # emptied, Ray does not warn at every upload that it leaves those out.
    os.environ["RAY_OVERRIDE_RUNTIME_ENV_DEFAULT_EXCLUDES"] = ""
    try:
        ray.init(address=cluster.address, runtime_env=runtime_env(cluster, tracking_uri),
                 **common)
    except (ConnectionError, ValueError, RuntimeError, RayError) as e:
        reason = " ".join(str(e).split())[:300]
        hint = ("; every process needs RAY_AUTH_MODE=token and the cluster's token "
                "(RAY_AUTH_TOKEN or ~/.ray/auth_token)" if any(
                    word in reason.lower() for word in ("token", "auth", "unauthenticated",
                                                        "permission")) else "")
        raise UserError(f"cluster.address={cluster.address}: cannot join a Ray cluster there "
                        f"({reason}){hint}") from None


def join_and_check(cluster: ClusterConfig, tracking_uri: str, storage: str,
                   trials=None, then: Callable[[], Any] | None = None) -> tuple[Capacity, Any]:
    """Start or join Ray; on a remote cluster refuse what cannot work there. Returns what
    the cluster offers, for the record, and what `then()` returned: it runs once nothing
    can be refused any more (on a local cluster, in a thread while Ray starts). Bad input
    raises UserError with Ray disconnected and `then` not called."""
    if cluster.kind == "local":
        if trials is not None:
            check_trials_fit(trials, local_capacity(cluster))
        if then is None:
            start_ray(cluster, tracking_uri)
            return running_capacity(), None
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1, thread_name_prefix="rlpipe-setup") as pool:
            meanwhile = pool.submit(then)
            start_ray(cluster, tracking_uri)
            return running_capacity(), meanwhile.result()
    start_ray(cluster, tracking_uri)
    import ray

    try:
        capacity = running_capacity(cluster.address)
        if trials is not None and not cluster.autoscaling:
            check_trials_fit(trials, capacity)
        check_remote(capacity, tracking_uri, storage)
    except UserError:
        ray.shutdown()
        raise
    return capacity, then() if then else None


def node_tags() -> dict[str, str]:
    """Where the calling Ray worker runs: its node id, IP and host name, and the GPUs Ray
    gave it (ray.gpu_ids, when any)."""
    import ray

    tags = {
        "ray.node_id": ray.get_runtime_context().get_node_id(),
        "ray.node_ip": ray.util.get_node_ip_address(),
        "host": socket.gethostname(),
    }
    gpus = ray.get_gpu_ids()
    if gpus:
        tags["ray.gpu_ids"] = ",".join(str(g) for g in gpus)
    return tags


def cluster_tags(summary: dict[str, Any]) -> dict[str, str]:
    """A cluster's record as run tags."""
    gpu_types = sorted({n["gpu_type"] for n in summary["per_node"] if n.get("gpu_type")})
    tags = {f"cluster.{k}": number(float(summary[k])) for k in ("nodes", "hosts", "cpus",
                                                                  "gpus")}
    if gpu_types:
        tags["cluster.gpu_types"] = ",".join(gpu_types)
    tags["cluster.per_node"] = json.dumps(
        [{k: n[k] for k in ("ip", "cpus", "gpus")} for n in summary["per_node"]])[:5000]
    return tags
