"""Composing and validating the config: the edge where every user error is caught.

Everything here runs before Ray starts or MLflow is touched. A problem a user can cause
becomes a :class:`UserError` with one line that names the key and what is allowed.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import (
    ConfigCompositionException,
    HydraException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from algos.core.validation import ConfigValueError
from pipelines import private_api
from pipelines.config import schema

if TYPE_CHECKING:
    from algos.registry import Algorithm

ROOT = Path(__file__).resolve().parents[2]
"""The folder that holds the packages: a checkout (or the code shipped to a cluster node),
or site-packages."""


def _conf_dir() -> Path:
    """conf/ beside the packages (a checkout, or the code shipped to a cluster node), else
    the copy a non-editable install put in site-packages as the package rlpipe_conf."""
    beside = ROOT / "conf"
    if beside.is_dir():
        return beside
    import importlib.util

    spec = importlib.util.find_spec("rlpipe_conf")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the project's configs are missing: neither conf/ nor rlpipe_conf")
    return Path(next(iter(spec.submodule_search_locations)))


CONF_DIR = _conf_dir()
GROUPS = ("algo", "env", "tracking", "cluster", "experiment", "sweep")


class UserError(Exception):
    """Bad input: reported as one line, exit code 2, before anything starts."""


@dataclass
class Composed:
    """A composed, validated config."""

    cfg: schema.PipelineConfig
    """The config as typed objects (algo is the algorithm's own config dataclass)."""
    container: dict[str, Any]
    """The same, resolved, as plain data: what MLflow records."""
    choices: dict[str, str | None]
    """The option chosen in each config group (algo, env, experiment, ...)."""
    overrides: list[str]
    """The overrides it was composed from."""

    @property
    def algorithm(self) -> Algorithm:
        """The algorithm it configures (algos.registry)."""
        from algos.registry import get_algorithm

        return get_algorithm(self.cfg.algo.name)

    def with_seed(self, seed: int) -> Composed:
        """The same config with another seed (nothing else reads the seed: composing once
        serves every seed of a configuration)."""
        composed = copy.deepcopy(self)
        composed.cfg = dataclasses.replace(composed.cfg, seed=seed)
        composed.container["seed"] = seed
        composed.overrides = [o for o in self.overrides if o.split("=", 1)[0] != "seed"] + [
            f"seed={seed}"]
        return composed


def group_options(group: str) -> list[str]:
    """The options of a config group: the yaml files in conf/<group>/."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def parse_overrides(args: list[str]) -> list[Override]:
    """Parse command-line overrides with Hydra's grammar, one bad one named at a time."""
    parser = OverridesParser.create()
    parsed = []
    for arg in args:
        try:
            parsed.extend(parser.parse_overrides([arg]))
        except OverrideParseException as e:
            reason = str(e).splitlines()[0]
            raise UserError(
                f"{arg}: not a valid override ({reason}); write key=value, or a sweep "
                "as a,b / choice(...) / range(...) / interval(...) / tag(log, interval(...))"
            ) from None
    return parsed


def _describe(e: BaseException, overrides: list[str]) -> str:
    """One line for a Hydra / OmegaConf composition error."""
    if isinstance(e, MissingConfigException):
        text = str(e)
        for group in GROUPS:
            marker = f"Could not find '{group}/"
            if marker in text:
                option = text.split(marker, 1)[1].split("'", 1)[0]
                allowed = ", ".join(group_options(group))
                return f"{group}={option}: unknown option; allowed: {allowed}"
        return text.splitlines()[0]
    cause = e.__cause__ or e.__context__
    if isinstance(cause, OmegaConfBaseException) or isinstance(e, OmegaConfBaseException):
        oc = cause if isinstance(cause, OmegaConfBaseException) else e
        key = getattr(oc, "full_key", None) or "?"
        msg = str(getattr(oc, "msg", oc)).splitlines()[0]
        if "not in" in msg or "is not in struct" in msg:
            return f"{key}: unknown key; to add one to a free-form dict use +{key}=..."
        value = next((o.split("=", 1)[1] for o in overrides if o.split("=")[0] == key), None)
        shown = f"{key}={value}" if value is not None else key
        return f"{shown}: {msg}"
    text = str(e)
    if "Ambiguous value for argument" in text:
        arg = text.split("'", 2)[1]
        return (
            f"{arg}: a sweep expression; run sweeps with python -m pipelines.sweep "
            "(or quote it to pass a string, or use [a,b] for a list)"
        )
    return text.splitlines()[0]


def _find_unknown_keys(node: DictConfig, path: str) -> None:
    """Reject keys a '+key=' override added to a typed node (struct mode lets '+' through)."""
    obj_type = OmegaConf.get_type(node)
    if obj_type is not None and dataclasses.is_dataclass(obj_type):
        fields = {f.name for f in dataclasses.fields(obj_type)}
        for key in map(str, node.keys()):
            if key not in fields:
                raise UserError(
                    f"{path}{key}: unknown key; allowed: {', '.join(sorted(fields))}"
                )
    for key in map(str, node.keys()):
        child = private_api.child_node(node, key)
        if isinstance(child, DictConfig) and not (private_api.is_missing(child)
                                                  or private_api.is_none(child)):
            _find_unknown_keys(child, f"{path}{key}.")


def _to_object(node: DictConfig, path: str) -> Any:
    """OmegaConf.to_object, running each dataclass's range checks innermost first, so that
    an error names its full key (sweep.scheduler.max_t, not max_t)."""
    for key in map(str, node.keys()):
        child = private_api.child_node(node, key)
        if isinstance(child, DictConfig) and not private_api.is_none(child) and (
                OmegaConf.get_type(child) not in (None, dict)):
            _to_object(child, f"{path}{key}.")
    try:
        return OmegaConf.to_object(node)
    except ConfigValueError as e:
        raise UserError(str(e.with_prefix(path.rstrip(".")) if path else e)) from None


def compose_config(overrides: list[str]) -> Composed:
    """Compose conf/config.yaml with `overrides` (no sweep expressions) and validate it."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(
            config_dir=str(CONF_DIR), version_base="1.3", job_name="rlpipe"
        ):
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ConfigCompositionException) as e:
        raise UserError(_describe(e, overrides)) from None
    finally:
        GlobalHydra.instance().clear()
    runtime_choices = cast(dict[str, Any], OmegaConf.to_container(cfg.hydra.runtime.choices))
    choices = {k: v for k, v in runtime_choices.items() if not k.startswith("hydra/")}
    with open_dict(cfg):
        del cfg["hydra"]
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        key = missing[0]
        hint = " (host:port of the Ray head)" if key == "cluster.address" else ""
        raise UserError(f"{key}: required, has no value{hint}; set it with {key}=...")
    _find_unknown_keys(cfg, "")
    try:
        container = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    except OmegaConfBaseException as e:
        raise UserError(_describe(e, overrides)) from None
    obj = _to_object(cfg, "")
    return Composed(cfg=obj, container=container, choices=choices, overrides=list(overrides))


def _reason(e: BaseException) -> str:
    """An exception as one line: its message, after its type where the message alone may
    say little (a KeyError's is just the key)."""
    text = " ".join(str(e).split())
    if isinstance(e, TypeError | ValueError) and text:
        return text
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@functools.lru_cache(maxsize=64)
def _check_env(algo_name: str, env_id: str, kwargs_items: tuple, extra: tuple):
    import gymnasium as gym

    from algos.core.envs import EnvConfig, check_env_id, make_env
    from algos.registry import get_algorithm

    try:
        check_env_id(env_id)
    except ModuleNotFoundError as e:
        raise UserError(f"env.id={env_id}: cannot import the env's module ({e})") from None
    except gym.error.Error as e:
        raise UserError(f"env.id={env_id}: {e}") from None
    try:
        env = make_env(EnvConfig(id=env_id, kwargs=dict(kwargs_items), **dict(extra)))
    except Exception as e:  # an env refuses its arguments with whatever it raises
        given = f"env.kwargs={dict(kwargs_items)}" if kwargs_items else f"env.id={env_id}"
        raise UserError(f"{given}: gym.make({env_id!r}) refused: {_reason(e)}") from None
    try:
        get_algorithm(algo_name).check_env(env)
        return env.observation_space
    except ValueError as e:
        raise UserError(f"algo={algo_name} with env.id={env_id}: {e}") from None
    finally:
        env.close()


def check_runnable(composed: Composed):
    """What composition cannot see: the env exists, builds, and suits the algorithm.
    Returns the env's observation space (cached: later calls are free)."""
    from algos.registry import ALGORITHMS

    algo_name = composed.cfg.algo.name
    if algo_name not in ALGORITHMS:
        raise UserError(f"algo.name={algo_name}: unknown; allowed: {', '.join(ALGORITHMS)}")
    env = composed.cfg.env
    extra = tuple((k, v) for k, v in sorted(vars(env).items()) if k not in ("id", "kwargs"))
    return _check_env(algo_name, env.id, tuple(sorted(env.kwargs.items(),
                                                      key=lambda kv: kv[0])), extra)


def compose_and_check(overrides: list[str]) -> Composed:
    """compose_config + check_runnable: a config a trial can run.

    Configurations that differ only in their seed compose once: a sweep over 16 seeds
    validates (on the driver) and composes (in each trial's reused worker) one config, and
    the seed is set on a copy. Any other seed value, or an interpolation that could read
    the seed, composes in full.
    """
    seeds = [o for o in overrides if o.split("=", 1)[0] == "seed"]
    value = seeds[-1].split("=", 1)[1] if seeds else ""
    if not value.isdigit() or any("${" in o for o in overrides):
        composed = compose_config(overrides)
        check_runnable(composed)
        return composed
    composed = _compose_without_seed(tuple(o for o in overrides if o not in seeds)).with_seed(
        int(value))
    composed.overrides = list(overrides)
    return composed


@functools.lru_cache(maxsize=32)
def _compose_without_seed(overrides: tuple[str, ...]) -> Composed:
    composed = compose_config(list(overrides))
    check_runnable(composed)
    return composed


def flat_params(container: dict[str, Any], prefixes: tuple[str, ...] = ("algo", "env")) -> dict:
    """Flat dotted keys (algo.lr, env.id, seed) of the run's hyperparameters."""
    out: dict[str, Any] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        else:
            out[path] = node

    for prefix in prefixes:
        walk(container.get(prefix), prefix)
    out["seed"] = container.get("seed")
    return out
