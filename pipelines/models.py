"""The pyfunc loader of the models this project logged before each model carried its own
loader (before 2026-12-06): their MLmodel names this module (loader_module:
pipelines.models), so it stays at this name. Newer models load through
algos/core/rlpipe_agent.py, shipped inside them."""

from __future__ import annotations


def _load_pyfunc(data_path: str):
    """MLflow's loader_module entry point: the agent saved under `data_path`, read by this
    project's code."""
    from algos.core.rlpipe_agent import AgentModel
    from algos.registry import load_agent

    return AgentModel(*load_agent(data_path))
