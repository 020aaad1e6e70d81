"""The Ray cluster: start or join it, ship the code to its nodes, and refuse, before any
trial starts, a trial that no node could ever hold.

cluster=local always starts a Ray of its own (`address="local"`), never one that a
`ray start` once recorded on the machine. cluster=remote joins `cluster.address`; its
nodes need the project's dependencies, and get the project itself through Ray's runtime
environment unless `cluster.runtime_env=false` (the project's image holds it). Ray does
not forward the driver's environment to the trials, so what they need goes explicitly.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines import private_api
from pipelines.config import ROOT, UserError
from pipelines.schema import ClusterConfig

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
)
"""The driver's environment variables a trial needs on any node, passed when set."""

SHIP_EXCLUDES = [
    ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache",
    "mlflow.db", "*.db", "mlruns", "mlartifacts", "ray_results", "outputs",
    "benchmarks/results", ".device", ".whl",
]
"""What the code shipped to the nodes leaves out: history, environments, results, stores."""

EPS = 1e-9


@dataclass(frozen=True)
class Node:
    """One alive Ray node and what it offers."""

    node_id: str
    ip: str
    hostname: str
    cpus: float
    gpus: float
    gpu_type: str | None = None
    memory: float = 0.0
    """Ray's `memory` resource: the bytes of host memory trials may reserve on the node."""


@dataclass
class Capacity:
    """What a cluster can ever offer a trial: its nodes (or, before a local Ray starts,
    this machine as Ray will see it)."""

    nodes: list[Node]
    where: str
    """How a message names it: 'this machine', 'the cluster at host:port'."""
    local: bool = True
    hosts: list[str] = field(default_factory=list)
    gpu_memory: float | None = None
    """Bytes of the smallest GPU, where known (this machine's, through NVML)."""

    @property
    def cpus(self) -> float:
        """CPUs of all nodes."""
        return sum(n.cpus for n in self.nodes)

    @property
    def gpus(self) -> float:
        """GPUs of all nodes."""
        return sum(n.gpus for n in self.nodes)

    def summary(self) -> dict[str, Any]:
        """Plain data for MLflow: counts and one entry per node."""
        return {"nodes": len(self.nodes), "hosts": len(set(self.hosts or
                                                           [n.ip for n in self.nodes])),
                "cpus": self.cpus, "gpus": self.gpus, "per_node": [asdict(n) for n in self.nodes]}


GIB = 2**30


def learner_on_gpu(cfg) -> bool:
    """Whether a trial's learner runs on a GPU: it holds a GPU share and may use it."""
    return cfg.cluster.gpus_per_trial > 0 and getattr(cfg.algo, "device", "cpu") != "cpu"


def replay_memory(composed) -> tuple[int, int]:
    """(host bytes, GPU bytes) of a trial's replay memory, from the algorithm's layout and
    the env's observation space; what would live on the learner's device is host memory
    when the learner is not on a GPU."""
    from algos.registry import get_algorithm
    from pipelines.config import check_runnable

    cfg = composed.cfg
    host, device = get_algorithm(cfg.algo.name).replay_nbytes(cfg.algo,
                                                              check_runnable(composed))
    return (host, device) if learner_on_gpu(cfg) else (host + device, 0)


def trial_bundles(composed) -> list[dict[str, float]]:
    """A trial's placement group: the learner's CPUs, GPU share and the host memory its
    replay memory takes, then one CPU per rollout worker, so that Tune packs trials onto
    the cluster without oversubscribing its cores or its memory."""
    cfg = composed.cfg
    learner = {"CPU": float(cfg.cluster.cpus_per_trial)}
    if cfg.cluster.gpus_per_trial:
        learner["GPU"] = float(cfg.cluster.gpus_per_trial)
    host, _ = replay_memory(composed)
    if host:
        learner["memory"] = float(host)
    workers = int(getattr(cfg.algo, "num_rollout_workers", 0))
    return [learner] + [{"CPU": 1.0} for _ in range(workers)]


def _fits_in(bundle: dict[str, float], free: dict[str, float]) -> bool:
    return all(amount <= free.get(key, 0.0) + EPS for key, amount in bundle.items())


def fits(bundles: list[dict[str, float]], nodes: list[Node]) -> bool:
    """Whether the placement group can be placed on these nodes' total resources: the
    learner's bundle tried on each node, the rest first-fit, largest first (exact for
    the learner-plus-unit-CPU groups of trial_bundles)."""
    learner, rest = bundles[0], sorted(bundles[1:], key=lambda b: -sum(b.values()))
    for first in range(len(nodes)):
        free = [{"CPU": n.cpus, "GPU": n.gpus, "memory": n.memory} for n in nodes]
        if not _fits_in(learner, free[first]):
            continue
        for key, amount in learner.items():
            free[first][key] -= amount
        placed = True
        for bundle in rest:
            spot = next((f for f in free if _fits_in(bundle, f)), None)
            if spot is None:
                placed = False
                break
            for key, amount in bundle.items():
                spot[key] -= amount
        if placed:
            return True
    return False


def _number(x: float) -> str:
    return f"{x:g}"


def _gib(x: float) -> str:
    return f"{x / GIB:,.2f} GiB"


def gpu_memory_refusal(composed, capacity: Capacity) -> str | None:
    """Why the frames a trial keeps on its GPU cannot fit there, with as many trials per
    GPU as its share allows; None when they fit or the GPUs' memory is not known."""
    cfg = composed.cfg
    _, on_gpu = replay_memory(composed)
    if not on_gpu or capacity.gpu_memory is None:
        return None
    share = cfg.cluster.gpus_per_trial
    per_gpu = max(1, math.floor(1 / share + EPS)) if share < 1 else 1
    if on_gpu * per_gpu <= capacity.gpu_memory:
        return None
    return (f"algo.buffer_size={cfg.algo.buffer_size}: {per_gpu} trial(s) per GPU "
            f"(cluster.gpus_per_trial={_number(share)}) keep {_gib(on_gpu)} of frames each "
            f"there, but a GPU of {capacity.where} has {_gib(capacity.gpu_memory)}; lower "
            "algo.buffer_size, raise cluster.gpus_per_trial, or keep the frames in host "
            "memory (algo.replay_device=cpu)")


def refusal(composed, capacity: Capacity) -> str | None:
    """Why a trial of this config can never be placed on `capacity`, with the override
    that makes it fit; None when it fits."""
    cfg = composed.cfg
    bundles = trial_bundles(composed)
    if fits(bundles, capacity.nodes):
        return gpu_memory_refusal(composed, capacity)
    c = cfg.cluster
    workers = len(bundles) - 1
    cpus = c.cpus_per_trial + workers
    most_gpus = max((n.gpus for n in capacity.nodes), default=0.0)
    if c.gpus_per_trial > most_gpus + EPS:
        has = (f"has {_number(capacity.gpus)} GPUs" if capacity.local else
               f"has at most {_number(most_gpus)} GPUs on one node")
        fix = ("set cluster.gpus_per_trial=0 (the learner then runs on the CPU)"
               if capacity.local else
               "set cluster.gpus_per_trial=0, add GPU nodes, or cluster.autoscaling=true "
               "if an autoscaler adds them")
        return (f"cluster.gpus_per_trial={_number(c.gpus_per_trial)}: a trial's learner "
                f"needs {_number(c.gpus_per_trial)} GPU on one node, but {capacity.where} "
                f"{has}; {fix}")
    memory = bundles[0].get("memory", 0.0)
    most_memory = max((n.memory for n in capacity.nodes), default=0.0)
    if memory > most_memory + EPS:
        where = capacity.where if capacity.local else f"the largest node of {capacity.where}"
        return (f"algo.buffer_size={cfg.algo.buffer_size}: a trial's replay memory needs "
                f"{_gib(memory)} of host memory, but {where} has {_gib(most_memory)} for "
                "trials (Ray's memory resource); lower algo.buffer_size")
    need = (f"algo.num_rollout_workers={workers} with cluster.cpus_per_trial="
            f"{_number(c.cpus_per_trial)}: a trial needs {_number(cpus)} CPUs (the learner's "
            f"{_number(c.cpus_per_trial)}, 1 per rollout worker)")
    if capacity.local:
        return (f"{need}, but {capacity.where} has {_number(capacity.cpus)}; lower "
                f"algo.num_rollout_workers, or set cluster.num_cpus={math.ceil(cpus)} to "
                "oversubscribe this machine on purpose")
    shape = " + ".join(_number(n.cpus) for n in capacity.nodes)
    largest = max((n.cpus for n in capacity.nodes), default=0.0)
    short = (f"offers {_number(capacity.cpus)} ({len(capacity.nodes)} nodes: {shape} CPUs)"
             if cpus > capacity.cpus + EPS else
             f"has no node for the learner's {_number(c.cpus_per_trial)} CPUs"
             + (f" and {_number(c.gpus_per_trial)} GPU" if c.gpus_per_trial else "")
             + f" (largest: {_number(largest)} CPUs)")
    return (f"{need}, but {capacity.where} {short}; lower algo.num_rollout_workers or "
            "cluster.cpus_per_trial, add nodes, or set cluster.autoscaling=true if an "
            "autoscaler adds them")


def check_trials_fit(trials, capacity: Capacity) -> None:
    """Refuse (UserError) the first trial config that can never be placed. `trials` are
    (overrides that make the trial, Composed) pairs, as validated by the sweep plan."""
    seen: set[tuple] = set()
    for combo, composed in trials:
        shape = (tuple(tuple(sorted(b.items())) for b in trial_bundles(composed)),
                 replay_memory(composed)[1], composed.cfg.cluster.gpus_per_trial)
        if shape in seen:
            continue
        seen.add(shape)
        why = refusal(composed, capacity)
        if why:
            where = " ".join(combo)
            raise UserError(f"{why} (in the trial {where})" if where else why)


def local_capacity(cluster: ClusterConfig) -> Capacity:
    """This machine as a local Ray will see it (its CPUs and GPUs, or cluster.num_cpus /
    num_gpus), worked out without starting Ray."""
    try:
        cpus, gpus, memory = private_api.local_resources(cluster.num_cpus, cluster.num_gpus)
    except (ImportError, AttributeError, TypeError):  # Ray's private API moved
        from algos.core.replay import available_memory

        cpus = float(cluster.num_cpus or os.cpu_count() or 1)
        gpus = float(cluster.num_gpus or 0)
        memory = 0.7 * (available_memory() or 0)
    where = "this machine" if cluster.num_cpus is None else (
        f"the local Ray of cluster.num_cpus={cluster.num_cpus}")
    node = Node("local", "127.0.0.1", socket.gethostname(), cpus, gpus, memory=float(memory))
    return Capacity([node], where, local=True, gpu_memory=_smallest_gpu() if gpus else None)


def _smallest_gpu() -> float | None:
    """Bytes of this machine's smallest GPU, through NVML (no CUDA context); None if NVML
    cannot tell."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return float(min(
                pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).total
                for i in range(pynvml.nvmlDeviceGetCount())))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no GPU, no pynvml: unknown
        return None


def running_capacity(address: str | None = None) -> Capacity:
    """The alive nodes of the Ray this driver is connected to."""
    import ray

    nodes = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        gpu_type = next((k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")),
                        None)
        nodes.append(Node(n["NodeID"], n.get("NodeManagerAddress", ""),
                          n.get("NodeManagerHostname", ""), float(res.get("CPU", 0.0)),
                          float(res.get("GPU", 0.0)), gpu_type,
                          memory=float(res.get("memory", 0.0))))
    where = f"the cluster at {address}" if address else "this machine"
    return Capacity(nodes, where, local=address is None, hosts=[n.ip for n in nodes])


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
    tags = {f"cluster.{k}": _number(float(summary[k])) for k in ("nodes", "hosts", "cpus",
                                                                  "gpus")}
    if gpu_types:
        tags["cluster.gpu_types"] = ",".join(gpu_types)
    tags["cluster.per_node"] = json.dumps(
        [{k: n[k] for k in ("ip", "cpus", "gpus")} for n in summary["per_node"]])[:5000]
    return tags
