"""conf/ against its schemas, in-process: every option of every group and every experiment
composes, every key it writes is a field of its schema, and a group's option names only
what differs from the schema's defaults (each default lives once, in the dataclass)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from algos.registry import ALGORITHMS
from pipelines import schema
from pipelines.config import CONF_DIR, GROUPS, compose_config, group_options
from pipelines.space import plan_sweep

NEEDS = {("cluster", "remote"): ["cluster.address=127.0.0.1:6379"]}
"""What an option needs beside it to compose (a remote cluster's address)."""
GROUP_SCHEMA = {"env": schema.EnvConfig, "tracking": schema.TrackingConfig,
                "cluster": schema.ClusterConfig, "sweep": schema.SweepConfig}
IDENTITY = {"id", "kind"}
"""Keys an option names even when they equal a default: which env it is."""


def options() -> list[tuple[str, str]]:
    return [(g, o) for g in GROUPS for o in group_options(g)]


def config_files() -> list[Path]:
    return sorted(CONF_DIR.rglob("*.yaml"))


def schema_of(path: Path) -> type:
    """The dataclass a conf/ file is checked against."""
    group = path.relative_to(CONF_DIR).parts[0]
    if group == "algo":
        composed = compose_config([f"algo={path.stem}"])
        return type(composed.cfg.algo)
    if group in ("experiment", "config.yaml"):
        return schema.PipelineConfig
    return GROUP_SCHEMA[group]


def experiment_algo(path: Path, data: dict) -> type:
    """The config class of the algorithm an experiment file chooses: its own
    `override /algo`, else (it inherits one) the composed experiment's."""
    for entry in data.get("defaults", []):
        if isinstance(entry, dict) and "override /algo" in entry:
            return type(compose_config([f"algo={entry['override /algo']}"]).cfg.algo)
    option = str(path.relative_to(CONF_DIR / "experiment").with_suffix(""))
    return type(compose_config([f"experiment={option}"]).cfg.algo)


def field_types(cls: type) -> dict[str, typing.Any]:
    """A dataclass's fields and their types."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def unknown_keys(data: dict, cls: type, where: str, algo_cls: type | None) -> list[str]:
    """Keys of `data` (nested) that are not fields of `cls`; PipelineConfig's algo is
    checked against `algo_cls`."""
    out = []
    types = field_types(cls)
    for key, value in data.items():
        if key == "defaults":
            continue
        if key not in types:
            out.append(f"{where}{key}")
            continue
        sub = algo_cls if (cls is schema.PipelineConfig and key == "algo") else types[key]
        if isinstance(value, dict) and dataclasses.is_dataclass(sub):
            out += unknown_keys(value, sub, f"{where}{key}.", algo_cls)
    return out


@pytest.mark.parametrize("group,option", options(), ids=[f"{g}={o}" for g, o in options()])
def test_every_option_of_every_group_composes(group, option):
    composed = compose_config([f"{group}={option}", *NEEDS.get((group, option), [])])
    assert composed.choices[group] == option


@pytest.mark.parametrize("option", group_options("sweep"))
def test_every_sweep_file_plans_and_validates_its_trials(option):
    plan = plan_sweep([f"sweep={option}"])
    assert plan.dims and plan.trials


@pytest.mark.parametrize("path", config_files(), ids=lambda p: str(p.relative_to(CONF_DIR)))
def test_every_key_of_conf_is_a_field_of_its_schema(path):
    data = yaml.safe_load(path.read_text()) or {}
    group = path.relative_to(CONF_DIR).parts[0]
    algo_cls = None
    if group == "experiment":
        algo_cls = experiment_algo(path, data)
    cls = schema_of(path)
    if group == "sweep":  # params are overrides, checked when a sweep plans (above)
        data = {k: v for k, v in data.items() if k != "params"}
    assert unknown_keys(data, cls, "", algo_cls) == []


@pytest.mark.parametrize("path", [p for p in config_files() if p.parent.name in (
    "algo", "env", "tracking", "cluster")], ids=lambda p: str(p.relative_to(CONF_DIR)))
def test_a_group_option_names_only_what_differs_from_the_defaults(path):
    data = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items()
            if k != "defaults" and k not in IDENTITY}
    cls = schema_of(path)
    defaults = {f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING
                         else f.default) for f in dataclasses.fields(cls)}
    restated = {k: v for k, v in data.items() if defaults.get(k, object()) == v}
    assert restated == {}, f"{path.name} restates defaults of {cls.__name__}: {restated}"


def test_every_algorithm_has_its_option_and_experiments_name_real_ones():
    assert set(ALGORITHMS) <= set(group_options("algo"))
    for option in group_options("experiment"):
        composed = compose_config([f"experiment={option}"])
        assert composed.cfg.algo.name in ALGORITHMS
        assert composed.choices["env"] in group_options("env")


def test_pong_and_breakout_share_one_base_and_differ_only_in_the_game():
    pong = compose_config(["experiment=pong_dqn"]).container
    breakout = compose_config(["experiment=breakout_dqn"]).container
    assert pong["algo"] == breakout["algo"]
    assert {k: v for k, v in pong["env"].items() if k != "id"} == {
        k: v for k, v in breakout["env"].items() if k != "id"}
    assert (pong["env"]["id"], breakout["env"]["id"]) == ("ALE/Pong-v5", "ALE/Breakout-v5")


def test_mc_vs_td_pairs_each_env_with_the_same_budget_and_evaluation_seeds():
    # Monte Carlo's experiments change how it learns, never what it is measured on.
    plan = plan_sweep(["sweep=mc_vs_td"])
    assert plan.size == 30 and len(plan.trials) == 30
    by_env: dict[str, dict[str, object]] = {}
    for _, composed in plan.trials:
        cfg = composed.cfg
        measured = (cfg.algo.episodes, cfg.algo.gamma, cfg.algo.max_steps,
                    tuple(cfg.algo.evaluation_seeds()), cfg.env)
        by_env.setdefault(composed.choices["env"], {}).setdefault(cfg.algo.name, measured)
        assert by_env[composed.choices["env"]][cfg.algo.name] == measured
    assert set(by_env) == {"frozenlake", "frozenlake_slippery", "taxi"}
    for env, algos in by_env.items():
        assert algos["q_learning"] == algos["monte_carlo"], env
