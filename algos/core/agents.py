"""A trained agent as data: how it acts, and how it is saved and loaded without pickle.

An agent acts greedily on a batch of observations (`act`). It saves as plain data in a
folder: a Q-table as `.npy`; a network as its weights in a `.pt` file of tensors (read
back with `torch.load(weights_only=True)`, which builds tensors and nothing else, and
rebuilt from its spec, plain JSON, with this project's code) and as `model.onnx`, the
same network exported to ONNX with its greedy action in the graph, which runs without
this project or PyTorch. `agent.json` records the spec and the SHA-256 of every file, so
a changed or corrupted file is refused when it is loaded, before it is read. How the
manifest is read and checked lives in algos.core.rlpipe_agent, the loader every logged
model carries.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from algos.core.reporting import BestEvaluation
from algos.core.rlpipe_agent import (
    MANIFEST,
    ONNX_ACTION,
    ONNX_FILE,
    ONNX_INPUT,
    TABLE_FILE,
    AgentFileError,
    read_manifest,
    sha256,
    table_actions,
)

__all__ = ["MANIFEST", "AgentFileError", "read_manifest", "save_agent", "TableAgent",
           "NetworkAgent", "NetworkResult"]

OUTPUTS = ("q_values", "probabilities")
"""What a network agent's second output is: DQN's Q-values, or the action probabilities
of a policy whose network gives logits (REINFORCE)."""


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

    FILE = TABLE_FILE

    def __init__(self, table: np.ndarray) -> None:
        self.table = np.asarray(table, dtype=np.float64)

    @property
    def model(self) -> np.ndarray:
        """What the algorithm's evaluate() plays: the table."""
        return self.table

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Greedy actions of a batch of states (ints)."""
        return table_actions(self.table, obs)

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
        """kind, network (mlp or cnn), hidden_sizes, obs_shape, obs_dtype, n_actions,
        outputs (q_values or probabilities; absent in agents saved before it: q_values)."""

    @property
    def model(self):
        """What the algorithm's evaluate() plays: the network."""
        return self.net

    @classmethod
    def of(cls, net, factory, obs_space, n_actions: int, outputs: str = "q_values"
           ) -> NetworkAgent:
        """An agent of a network built by `factory` (algos.core.networks.NetworkFactory)
        for `obs_space`, holding a CPU copy of its weights; `outputs` (OUTPUTS) says what
        its exported graph gives beside the action: the network's outputs as Q-values, or
        their softmax as action probabilities."""
        import copy

        if outputs not in OUTPUTS:
            raise ValueError(f"outputs={outputs!r}; allowed: {', '.join(OUTPUTS)}")
        spec = {"kind": "network", "network": factory.kind,
                "hidden_sizes": list(factory.hidden_sizes),
                "obs_shape": list(obs_space.shape), "obs_dtype": str(obs_space.dtype),
                "n_actions": int(n_actions), "outputs": outputs}
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
        """weights.pt, the state dict's tensors and nothing else; model.onnx, the network
        exported (export_onnx)."""
        import torch

        torch.save({k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()},
                   folder / self.FILE)
        self.export_onnx(folder / ONNX_FILE)
        return dict(self.spec)

    def export_onnx(self, path: Path) -> None:
        """Write the network as an ONNX graph of one input, `obs` (a batch of any size), and
        two outputs: `action`, the greedy action (argmax in the graph), and the Q-values or
        the action probabilities (spec `outputs`). The file is checked with onnx.checker,
        and onnxruntime's outputs must equal PyTorch's on a batch drawn from the
        observation space (the tests check real observations too); ValueError if not."""
        import logging
        import warnings

        import onnx
        import onnxruntime
        import torch

        from algos.core.networks import GreedyHead

        outputs = self.spec.get("outputs", "q_values")
        batch = self.sample_batch(4)
        module = GreedyHead(self.net, softmax=outputs == "probabilities").eval()
        # The exporter warns of torchvision's operators it skips (none is used here), and
        # torch.export of its own deprecations.
        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                module, (torch.as_tensor(batch),), str(path), dynamo=True, verbose=False,
                input_names=[ONNX_INPUT], output_names=[ONNX_ACTION, outputs],
                dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False)
        onnx.checker.check_model(str(path), full_check=True)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        action, values = session.run(None, {ONNX_INPUT: batch})
        with torch.inference_mode():
            expected_action, expected = (t.numpy() for t in module(torch.as_tensor(batch)))
        if not (np.allclose(values, expected, rtol=1e-4, atol=1e-5)
                and np.array_equal(action, expected_action)):
            raise ValueError(f"{path}: onnxruntime's outputs differ from PyTorch's (largest "
                             f"difference {np.abs(values - expected).max():.3g})")

    def sample_batch(self, n: int, seed: int = 0) -> np.ndarray:
        """`n` observations of the spec's shape and dtype, drawn at random (frames: any
        pixel value; vectors: standard normal)."""
        rng = np.random.default_rng(seed)
        shape, dtype = (n, *self.spec["obs_shape"]), np.dtype(self.spec["obs_dtype"])
        if dtype == np.uint8:
            return rng.integers(0, 256, size=shape, dtype=np.uint8)
        return rng.standard_normal(shape).astype(dtype)

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


def save_agent(agent: Agent, folder: Path, algo: str, **about: Any) -> dict[str, Any]:
    """Save `agent` into `folder` (made if needed) with its manifest: the algorithm, the
    spec, the SHA-256 of each file, and `about` (env, step, score, ...). Returns the
    manifest (algos.registry.load_agent reads the folder back)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = agent.save(folder)
    files = {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.name != MANIFEST}
    manifest = {"algo": algo, "spec": spec, "files": files, **about}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
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
           best: BestEvaluation, outputs: str = "q_values") -> NetworkResult:
        """The result of a run whose network ended as `net` (its outputs: OUTPUTS); two
        observations sampled from `obs_space` are the example batch."""
        example = np.stack([np.asarray(obs_space.sample()) for _ in range(2)])
        return cls(NetworkAgent.of(net, factory, obs_space, n_actions, outputs), example,
                   metrics, best)

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
