"""A trained agent as data: how it acts, and how it is saved and loaded without pickle.

An agent acts greedily on a batch of observations (`act`). It saves as plain data in a
folder: a Q-table as `.npy`, a network's weights as a `.pt` file of tensors (read back
with `torch.load(weights_only=True)`, which builds tensors and nothing else), beside a
spec (plain JSON) that rebuilds the network with this project's own code. `agent.json`
records the spec and the SHA-256 of every file, so a changed or corrupted file is refused
when it is loaded, before it is read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from algos.core.reporting import BestEvaluation

MANIFEST = "agent.json"


class AgentFileError(ValueError):
    """An agent's files are missing, changed since they were saved, or not an agent."""


class Agent(Protocol):
    """A trained policy, acting greedily."""

    def act(self, obs: np.ndarray) -> np.ndarray:
        """The greedy action of each observation of a batch."""

    def save(self, folder: Path) -> dict[str, Any]:
        """Write the agent's data into `folder`; return the spec that rebuilds it."""

    def same_as(self, other: Any) -> bool:
        """Whether `other` is the same agent (class, spec and weights)."""


class TableAgent:
    """A Q-table (states x actions): the action of largest value in each state."""

    FILE = "q_table.npy"

    def __init__(self, table: np.ndarray) -> None:
        self.table = np.asarray(table, dtype=np.float64)

    @property
    def model(self) -> np.ndarray:
        """What the algorithm's evaluate() plays: the table."""
        return self.table

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Greedy actions of a batch of states (ints)."""
        return self.table[np.asarray(obs, dtype=np.int64)].argmax(-1)

    def save(self, folder: Path) -> dict[str, Any]:
        """q_table.npy."""
        np.save(folder / self.FILE, self.table, allow_pickle=False)
        return {"kind": "table", "shape": list(self.table.shape)}

    def same_as(self, other: Any) -> bool:
        """Whether `other` holds the same table."""
        return isinstance(other, TableAgent) and np.array_equal(self.table, other.table)

    @classmethod
    def load(cls, folder: Path, spec: dict[str, Any]) -> TableAgent:
        """From what save() wrote."""
        table = np.load(folder / cls.FILE, allow_pickle=False)
        if list(table.shape) != spec["shape"]:
            raise AgentFileError(f"{folder / cls.FILE}: shape {list(table.shape)}, "
                                 f"the spec says {spec['shape']}")
        return cls(table)


class NetworkAgent:
    """A network with one output per action (Q-values, or a policy's logits): the action
    of largest output."""

    FILE = "weights.pt"

    def __init__(self, net, spec: dict[str, Any]) -> None:
        self.net = net.eval()
        self.spec = spec
        """kind, network (mlp or cnn), hidden_sizes, obs_shape, obs_dtype, n_actions."""

    @property
    def model(self):
        """What the algorithm's evaluate() plays: the network."""
        return self.net

    @classmethod
    def of(cls, net, factory, obs_space, n_actions: int) -> NetworkAgent:
        """An agent of a network built by `factory` (algos.core.networks.NetworkFactory)
        for `obs_space`, holding a CPU copy of its weights."""
        import copy

        spec = {"kind": "network", "network": factory.kind,
                "hidden_sizes": list(factory.hidden_sizes),
                "obs_shape": list(obs_space.shape), "obs_dtype": str(obs_space.dtype),
                "n_actions": int(n_actions)}
        return cls(copy.deepcopy(net).cpu(), spec)

    def with_weights(self, weights: Mapping[str, Any]) -> NetworkAgent:
        """The same network with other weights (a copy)."""
        import copy

        net = copy.deepcopy(self.net)
        net.load_state_dict(weights)
        return NetworkAgent(net, self.spec)

    def same_as(self, other: Any) -> bool:
        """Whether `other` holds the same network and weights."""
        import torch

        if not isinstance(other, NetworkAgent) or other.spec != self.spec:
            return False
        mine, theirs = self.net.state_dict(), other.net.state_dict()
        return mine.keys() == theirs.keys() and all(
            torch.equal(mine[k], theirs[k]) for k in mine)

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Greedy actions of a batch of observations."""
        import torch

        with torch.inference_mode():
            batch = torch.as_tensor(np.asarray(obs, dtype=self.spec["obs_dtype"]))
            return self.net(batch).argmax(-1).numpy()

    def save(self, folder: Path) -> dict[str, Any]:
        """weights.pt: the state dict's tensors, nothing else."""
        import torch

        torch.save({k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()},
                   folder / self.FILE)
        return dict(self.spec)

    @classmethod
    def load(cls, folder: Path, spec: dict[str, Any]) -> NetworkAgent:
        """Rebuild the network from the spec with this project's code; read the weights as
        tensors only."""
        import gymnasium as gym
        import torch

        from algos.core.networks import build_network

        dtype = np.dtype(spec["obs_dtype"])
        space = gym.spaces.Box(
            low=0 if dtype == np.uint8 else -np.inf, high=255 if dtype == np.uint8 else np.inf,
            shape=tuple(spec["obs_shape"]), dtype=dtype)
        net = build_network(space, spec["n_actions"], spec["hidden_sizes"], spec["network"])
        try:
            weights = torch.load(folder / cls.FILE, map_location="cpu", weights_only=True)
            net.load_state_dict(weights)
        except (RuntimeError, KeyError, ValueError, EOFError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise AgentFileError(f"{folder / cls.FILE}: not this network's weights "
                                 f"({first})") from None
        return cls(net, spec)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_agent(agent: Agent, folder: Path, algo: str, **about: Any) -> dict[str, Any]:
    """Save `agent` into `folder` (made if needed) with its manifest: the algorithm, the
    spec, the SHA-256 of each file, and `about` (env, step, score, ...). Returns the
    manifest (algos.registry.load_agent reads the folder back)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = agent.save(folder)
    files = {p.name: _sha256(p) for p in sorted(folder.iterdir()) if p.name != MANIFEST}
    manifest = {"algo": algo, "spec": spec, "files": files, **about}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a saved agent, every file checked against its SHA-256."""
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        files, _, _ = manifest["files"], manifest["algo"], manifest["spec"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AgentFileError(f"{path}: not an agent's manifest ({e})") from None
    for name, expected in files.items():
        file = folder / name
        if not file.is_file():
            raise AgentFileError(f"{file}: missing")
        if _sha256(file) != expected:
            raise AgentFileError(f"{file}: its SHA-256 is not the one recorded when it was "
                                 "saved (changed or corrupted); refusing to load it")
    return manifest


@dataclass
class NetworkResult:
    """What a finished network run (DQN, REINFORCE) leaves: the final network as an agent,
    its last metrics, and its weights at its best evaluation."""

    final: NetworkAgent
    example: np.ndarray
    """A batch of observations the agents take (for model signatures)."""
    metrics: dict[str, float] = field(default_factory=dict)
    best: BestEvaluation = field(default_factory=BestEvaluation)

    @classmethod
    def of(cls, net, factory, obs_space, n_actions: int, metrics: dict[str, float],
           best: BestEvaluation) -> NetworkResult:
        """The result of a run whose network ended as `net`; two observations sampled
        from `obs_space` are the example batch."""
        example = np.stack([np.asarray(obs_space.sample()) for _ in range(2)])
        return cls(NetworkAgent.of(net, factory, obs_space, n_actions), example, metrics, best)

    @property
    def network(self):
        """The final network (CPU)."""
        return self.final.net

    def agents(self) -> dict[str, NetworkAgent]:
        """The final and the best agent (each acting on the network's largest output)."""
        best = self.best.weights
        return {"final": self.final,
                "best": self.final if best is None else self.final.with_weights(best)}

    def example_obs(self) -> np.ndarray:
        """A batch of observations the agents take."""
        return self.example
