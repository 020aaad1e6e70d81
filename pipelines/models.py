"""How each algorithm's trained model is recorded in its MLflow run, and read back."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import Composed
from pipelines.tracking import RunLogger

Q_TABLE = "model/q_table.npy"


def log_model(logger: RunLogger, algo_name: str, result: Any, composed: Composed) -> None:
    """Record the trained model of `result` in the run."""
    if algo_name == "q_learning":
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "model"
            folder.mkdir()
            np.save(folder / "q_table.npy", result.q_table)
            (folder / "meta.json").write_text(json.dumps({
                "algo": algo_name,
                "env": composed.container["env"],
                "shape": list(result.q_table.shape),
            }))
            logger.log_artifact(folder, "model")
        return
    raise NotImplementedError(f"no model logging for algo {algo_name}")


def load_q_table(tracking_uri: str, run_id: str) -> np.ndarray:
    """The Q-table a q_learning run logged."""
    from mlflow.artifacts import download_artifacts

    path = download_artifacts(run_id=run_id, artifact_path=Q_TABLE, tracking_uri=tracking_uri)
    return np.load(path)
