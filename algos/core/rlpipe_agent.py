"""The loader a logged model carries: a saved agent read back with numpy and onnxruntime
only, no checkout of this project and no PyTorch.

Every MLflow model of an agent ships this one file (MLflow's `code_paths`, as
`code/rlpipe_agent.py`) and names it as its pyfunc `loader_module`, so that
`mlflow.pyfunc.load_model(uri).predict(observations)` works wherever the model's own
`requirements.txt` is installed (mlflow, numpy; onnxruntime and onnx for a network).
It imports nothing of this project, and this project imports it (algos.core.agents) for
the manifest: one home for how a saved agent's files are checked.

A saved agent is a folder of data: `agent.json` (the manifest: the algorithm, the spec,
the SHA-256 of every file) beside a Q-table as `q_table.npy`, or a network as
`model.onnx` (the greedy action computed in the graph, and the Q-values or the action
probabilities) and `weights.pt` (the same weights for PyTorch, which this module never
reads). Every file is checked against its SHA-256 before any is read; nothing is
unpickled.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "agent.json"
TABLE_FILE = "q_table.npy"
ONNX_FILE = "model.onnx"
ONNX_INPUT = "obs"
ONNX_ACTION = "action"
"""The ONNX graph's input (a batch of observations) and its greedy-action output; its
second output is named by the spec's `outputs` (q_values or probabilities)."""


class AgentFileError(ValueError):
    """An agent's files are missing, changed since they were saved, or not an agent."""


def sha256(path: Path) -> str:
    """The hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a saved agent, every file checked against its SHA-256."""
    folder = Path(folder)
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
        if sha256(file) != expected:
            raise AgentFileError(f"{file}: its SHA-256 is not the one recorded when it was "
                                 "saved (changed or corrupted); refusing to load it")
    return manifest


def table_actions(table: np.ndarray, obs: Any) -> np.ndarray:
    """The greedy action of each state of a batch, by a Q-table (states x actions)."""
    return table[np.asarray(obs, dtype=np.int64)].argmax(-1)


class PortableAgent:
    """A saved agent that acts greedily on a batch of observations: a Q-table with numpy,
    a network with onnxruntime."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.manifest = read_manifest(folder)
        """The saved agent's manifest: algo, spec, env, evaluation, model, score, step."""
        spec = self.manifest["spec"]
        if spec.get("kind") == "table":
            self.table = np.load(folder / TABLE_FILE, allow_pickle=False)
            self.session = None
        elif spec.get("kind") == "network":
            if ONNX_FILE not in self.manifest["files"]:
                raise AgentFileError(f"{folder}: a network saved without {ONNX_FILE} (saved "
                                     "before ONNX export): load it with the project instead")
            import onnxruntime

            self.table = None
            try:
                self.session = onnxruntime.InferenceSession(
                    str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
            except Exception as e:  # onnxruntime's own error types
                raise AgentFileError(f"{folder / ONNX_FILE}: not a model onnxruntime runs "
                                     f"({str(e).splitlines()[0][:200]})") from None
            self.dtype = np.dtype(spec["obs_dtype"])
        else:
            raise AgentFileError(f"{folder / MANIFEST}: unknown agent kind {spec.get('kind')!r}")

    def act(self, obs: Any) -> np.ndarray:
        """The greedy action of each observation of the batch."""
        if self.session is None:
            return table_actions(self.table, obs)
        batch = np.asarray(obs, dtype=self.dtype)
        return self.session.run([ONNX_ACTION], {ONNX_INPUT: batch})[0]


class AgentModel:
    """What mlflow.pyfunc.load_model returns the predict of: greedy actions."""

    def __init__(self, agent: Any, manifest: dict[str, Any]) -> None:
        self.agent = agent
        """Anything with act(batch) -> actions."""
        self.manifest = manifest
        """The saved agent's manifest: algo, env, model (final or best), score, step."""

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """The greedy action of each observation of the batch."""
        return np.asarray(self.agent.act(np.asarray(model_input)))


def _load_pyfunc(data_path: str) -> AgentModel:
    """MLflow's loader_module entry point: the agent saved under `data_path`."""
    agent = PortableAgent(data_path)
    return AgentModel(agent, agent.manifest)
