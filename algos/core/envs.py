"""The env factory: every env the algorithms use is built here from an :class:`EnvConfig`."""

import importlib
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym


@dataclass
class EnvConfig:
    """Which gymnasium env to build and with what arguments."""

    id: str = "FrozenLake-v1"
    """Gymnasium env id, e.g. FrozenLake-v1, Taxi-v3, CartPole-v1, ALE/Pong-v5."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for gym.make (e.g. map_name, is_slippery)."""


def ensure_registered(env_id: str) -> None:
    """Register the envs of the package that provides `env_id`: ale-py for ALE/*, and for
    gymnasium's 'module:EnvName-v0' form the module, which registers its envs on import."""
    if ":" in env_id:
        importlib.import_module(env_id.split(":", 1)[0])
    elif env_id.startswith("ALE/"):
        import ale_py

        gym.register_envs(ale_py)


def check_env_id(env_id: str) -> None:
    """Raise gymnasium's own error when `env_id` is not a registered env."""
    ensure_registered(env_id)
    gym.spec(env_id.split(":", 1)[-1])


def make_env(cfg: EnvConfig, **overrides: Any) -> gym.Env:
    """gym.make(cfg.id, **cfg.kwargs, **overrides)."""
    ensure_registered(cfg.id)
    return gym.make(cfg.id, **{**cfg.kwargs, **overrides})
