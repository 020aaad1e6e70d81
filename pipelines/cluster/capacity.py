"""What a Ray cluster can hold: its nodes (or, before a local Ray starts, this machine as
Ray will see it), each trial's placement group, and why a trial could never be placed,
refused before any trial starts with the override that makes it fit."""

from __future__ import annotations

import math
import os
import socket
from dataclasses import asdict, dataclass, field
from typing import Any

from pipelines import private_api
from pipelines.config.compose import UserError
from pipelines.config.schema import ClusterConfig

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
    from pipelines.config.compose import check_runnable

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


def number(x: float) -> str:
    """A count of CPUs or GPUs as a message shows it (2, 0.25)."""
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
            f"(cluster.gpus_per_trial={number(share)}) keep {_gib(on_gpu)} of frames each "
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
        has = (f"has {number(capacity.gpus)} GPUs" if capacity.local else
               f"has at most {number(most_gpus)} GPUs on one node")
        fix = ("set cluster.gpus_per_trial=0 (the learner then runs on the CPU)"
               if capacity.local else
               "set cluster.gpus_per_trial=0, add GPU nodes, or cluster.autoscaling=true "
               "if an autoscaler adds them")
        return (f"cluster.gpus_per_trial={number(c.gpus_per_trial)}: a trial's learner "
                f"needs {number(c.gpus_per_trial)} GPU on one node, but {capacity.where} "
                f"{has}; {fix}")
    memory = bundles[0].get("memory", 0.0)
    most_memory = max((n.memory for n in capacity.nodes), default=0.0)
    if memory > most_memory + EPS:
        where = capacity.where if capacity.local else f"the largest node of {capacity.where}"
        return (f"algo.buffer_size={cfg.algo.buffer_size}: a trial's replay memory needs "
                f"{_gib(memory)} of host memory, but {where} has {_gib(most_memory)} for "
                "trials (Ray's memory resource); lower algo.buffer_size")
    need = (f"algo.num_rollout_workers={workers} with cluster.cpus_per_trial="
            f"{number(c.cpus_per_trial)}: a trial needs {number(cpus)} CPUs (the learner's "
            f"{number(c.cpus_per_trial)}, 1 per rollout worker)")
    if capacity.local:
        return (f"{need}, but {capacity.where} has {number(capacity.cpus)}; lower "
                f"algo.num_rollout_workers, or set cluster.num_cpus={math.ceil(cpus)} to "
                "oversubscribe this machine on purpose")
    shape = " + ".join(number(n.cpus) for n in capacity.nodes)
    largest = max((n.cpus for n in capacity.nodes), default=0.0)
    short = (f"offers {number(capacity.cpus)} ({len(capacity.nodes)} nodes: {shape} CPUs)"
             if cpus > capacity.cpus + EPS else
             f"has no node for the learner's {number(c.cpus_per_trial)} CPUs"
             + (f" and {number(c.gpus_per_trial)} GPU" if c.gpus_per_trial else "")
             + f" (largest: {number(largest)} CPUs)")
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
