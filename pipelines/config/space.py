"""Sweeps as Hydra overrides: which overrides are search dimensions, and their Tune domains.

A sweep is the overrides of conf/sweep/<name>.yaml (`params:`) with the command line's on
top. Any override whose value is a sweep expression is a dimension: `a,b` / `choice(...)`
/ `range(...)` (discrete) or `interval(lo, hi)` / `tag(log, interval(lo, hi))`
(continuous). Every other override is fixed for all trials. Each trial composes its own
config from the fixed overrides plus one value per dimension, so config groups sweep too.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from hydra.core.override_parser.types import IntervalSweep, Override

from pipelines.config.compose import (
    Composed,
    UserError,
    compose_and_check,
    compose_config,
    parse_overrides,
)
from pipelines.config.schema import NOT_CONFIG, RUN_SETTINGS

FULL_CHECK_LIMIT = 256
CONFIG_TAG = "config"
"""Tag of every trial's run: its configuration (Group by in the MLflow UI)."""
BASE_CONFIG = "base"
"""The configuration of a sweep that sweeps nothing but seeds."""
TRIAL_INDEX = "__trial_index__"
"""The key Tune's Repeater sets in a repeated trial's config: its repeat's index (its seed
is the sweep's seed plus it), never part of the configuration."""


def config_label(overrides: Iterable[str]) -> str:
    """One configuration as one value: its overrides without the seed (and without where
    it ran and was logged: NOT_CONFIG), sorted, space-separated; `base` when nothing is
    left."""
    kept = sorted(o for o in overrides
                  if o.split("=", 1)[0].lstrip("+~").split(".", 1)[0] not in NOT_CONFIG
                  and not o.startswith(TRIAL_INDEX))
    return " ".join(kept) or BASE_CONFIG


@dataclass
class Dimension:
    """One search dimension."""

    key: str
    """The override's key as written (algo.lr, experiment, +algo.x)."""
    expression: str
    """The sweep expression as written."""
    values: list[str] = field(default_factory=list)
    """Discrete dimensions: each value, ready to follow `key=` (continuous: none)."""
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False
    """Continuous dimensions over an int-typed key sample integers."""
    mutated: bool = False
    """A key Population Based Training changes during a run (sweep.scheduler.mutations):
    its range gives each member's first value and bounds what explore may set."""

    @property
    def discrete(self) -> bool:
        """Whether the dimension is a finite list of values."""
        return bool(self.values)

    def override(self, value: Any) -> str:
        """The override `key=value` for one sampled value."""
        if not self.discrete:
            value = int(round(value)) if self.integer else float(value)
        return f"{self.key}={value}"

    def first(self) -> str:
        """An override with a representative value (to compose a base config)."""
        return self.override(self.values[0] if self.discrete else self.low)


@dataclass
class SweepPlan:
    """What a sweep runs: fixed overrides, dimensions, and a validated base config."""

    fixed: list[str]
    dims: list[Dimension]
    base: Composed
    space_text: dict[str, str] = field(default_factory=dict)
    trials: list[tuple[tuple[str, ...], Composed]] = field(default_factory=list)
    """The validated trial configs with the overrides that make each: every combination,
    or past FULL_CHECK_LIMIT every value of each dimension (the others at their first)."""

    @property
    def mutations(self) -> list[Dimension]:
        """The dimensions a scheduler changes while trials run (pbt, pb2)."""
        return [d for d in self.dims if d.mutated]

    @property
    def size(self) -> int | None:
        """Number of grid points (None when a dimension is continuous)."""
        if any(not d.discrete for d in self.dims):
            return None
        n = 1
        for d in self.dims:
            n *= len(d.values)
        return n


def _line(o: Override) -> str:
    """The override as written."""
    return o.input_line or ""


def _root_key(o: Override) -> str:
    return o.key_or_group.split(".", 1)[0].split("/", 1)[0]


def _as_dimension(o: Override) -> Dimension:
    key = o.get_key_element()
    text = _line(o).split("=", 1)[1] if o.input_line else ""
    if _root_key(o) in RUN_SETTINGS:
        raise UserError(f"{key}={text}: {_root_key(o)} settings cannot be swept")
    if o.is_discrete_sweep():
        if o.value_type is not None and o.value_type.name == "GLOB_CHOICE_SWEEP":
            raise UserError(f"{key}={text}: glob() sweeps are not supported; list the options")
        values = list(o.sweep_string_iterator())
        if not values:
            raise UserError(f"{key}={text}: the sweep has no values")
        return Dimension(key=key, expression=text, values=values)
    sweep = cast(IntervalSweep, o.value())
    low, high = float(cast(float, sweep.start)), float(cast(float, sweep.end))
    log = "log" in sweep.tags
    if not low < high:
        raise UserError(f"{key}={text}: interval(low, high) needs low < high")
    if log and low <= 0:
        raise UserError(f"{key}={text}: a log interval needs low > 0")
    return Dimension(key=key, expression=text, low=low, high=high, log=log)


def _lookup(container: dict[str, Any], dotted: str) -> Any:
    node: Any = container
    for part in dotted.lstrip("+~").split("@")[0].split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def plan_sweep(args: list[str], sweep_params: bool = True) -> SweepPlan:
    """Turn command-line overrides (plus the chosen sweep file's params) into a plan,
    validating every trial's config the search space can produce."""
    cli = parse_overrides(args)
    for o in cli:
        if o.is_hydra_override():
            raise UserError(f"{o.input_line}: hydra.* settings are not used by these entry points")
    merged: list[Override] = list(cli)
    sweep_cfg = None
    if sweep_params:
        sweep_only = [_line(o) for o in cli if _root_key(o) == "sweep" and not
                      o.is_sweep_override()]
        sweep_composed = compose_config(sweep_only)
        sweep_cfg = sweep_composed.cfg.sweep
        params = sweep_composed.container["sweep"]["params"]
        cli_keys = {o.key_or_group for o in cli}
        from_file = [f"{k}={v}" for k, v in params.items()]
        try:
            file_overrides = parse_overrides(from_file)
        except UserError as e:
            raise UserError(f"sweep.params: {e}") from None
        merged = [o for o in file_overrides if o.key_or_group not in cli_keys] + list(cli)
    fixed = [_line(o) for o in merged if not o.is_sweep_override()]
    _refuse_fixed_and_swept(merged)
    dims = [_as_dimension(o) for o in merged if o.is_sweep_override()]
    keys = [d.key for d in dims]
    if len(set(keys)) != len(keys):
        raise UserError(f"{keys}: a key is swept twice")
    if sweep_cfg is not None:
        mutations = _mutations(sweep_cfg.scheduler.mutations, fixed, dims)
        if sweep_cfg.seeds_per_config > 1 and "seed" in keys:
            raise UserError(f"sweep.seeds_per_config={sweep_cfg.seeds_per_config}: seed is "
                            "swept too; give one or the other")
        if mutations:  # a key that may not change, named before its range is composed
            _check_mutable(mutations, [compose_and_check(fixed + [d.first() for d in dims])])
        dims += mutations
    mutated = [d for d in dims if d.mutated]
    continuous = [d for d in dims if not d.discrete]
    if continuous:
        # An interval over an int-typed key samples ints: read the key's type first.
        without = compose_and_check(fixed + [d.first() for d in dims if d.discrete]).container
        for d in continuous:
            current = _lookup(without, d.key)
            d.integer = isinstance(current, int) and not isinstance(current, bool)
    base = compose_and_check(fixed + [d.first() for d in dims])
    trials = _validate_space(fixed, dims)
    _check_mutable(mutated, [composed for _, composed in trials])
    space_text = {d.key: d.expression for d in dims}
    return SweepPlan(fixed=fixed, dims=dims, base=base, space_text=space_text, trials=trials)


def _refuse_fixed_and_swept(overrides: list[Override]) -> None:
    """A key given both a value and a sweep is bad input: which one a trial's config
    holds, and whether its `config` tag names it, would depend on their order."""
    fixed = {o.key_or_group: _line(o) for o in overrides if not o.is_sweep_override()}
    for o in overrides:
        if o.is_sweep_override() and o.key_or_group in fixed:
            raise UserError(f"{o.key_or_group}: given a value ({fixed[o.key_or_group]}) and "
                            f"a sweep ({_line(o)}); give one")


MUTATIONS = "sweep.scheduler.mutations"


def _mutations(written: dict[str, str], fixed: list[str], dims: list[Dimension]
               ) -> list[Dimension]:
    """The dimensions of sweep.scheduler.mutations: ranges in the sweep grammar, of keys
    no other dimension sweeps."""
    out = []
    swept = {d.key for d in dims}
    for key, expression in written.items():
        try:
            (o,) = parse_overrides([f"{key}={expression}"])
        except UserError as e:
            raise UserError(f"{MUTATIONS}.{e}") from None
        if not o.is_sweep_override():
            raise UserError(f"{MUTATIONS}.{key}={expression}: a range, as interval(lo, hi), "
                            "tag(log, interval(lo, hi)) or choice(a, b, ...)")
        if key in swept:
            raise UserError(f"sweep.params.{key}: {key} is also a mutation; its range in "
                            f"{MUTATIONS} gives each member's first value (a grid over a "
                            "mutated key would be undone by the first explore)")
        if any(f.split("=", 1)[0].lstrip("+~") == key for f in fixed):
            raise UserError(f"{key}: fixed by an override and mutated by {MUTATIONS}; "
                            "give its range once, in the mutations")
        d = _as_dimension(o)
        d.mutated = True
        out.append(d)
    return out


def _check_mutable(mutations: list[Dimension], trials: Iterable[Composed]) -> None:
    """Every mutated key is one each trial's algorithm may change during a run."""
    from algos.registry import get_algorithm

    for composed in trials:
        algorithm = get_algorithm(composed.cfg.algo.name)
        for d in mutations:
            group, _, name = d.key.partition(".")
            if group != "algo" or name not in algorithm.mutable:
                raise UserError(
                    f"{MUTATIONS}.{d.key}: {d.key} cannot change during a {algorithm.name} "
                    f"run; mutable: {', '.join('algo.' + k for k in algorithm.mutable)}")


def _points(d: Dimension) -> list[str]:
    if d.discrete:
        return [d.override(v) for v in d.values]
    return [d.override(d.low), d.override(d.high)]


def _validate_space(
    fixed: list[str], dims: list[Dimension]
) -> list[tuple[tuple[str, ...], Composed]]:
    """Compose and check every combination (or, past FULL_CHECK_LIMIT, every value of each
    dimension with the others at their first value); name the first that fails. Returns
    the composed trials."""
    per_dim = [_points(d) for d in dims]
    total = 1
    for p in per_dim:
        total *= len(p)
    combos: Iterable[tuple[str, ...]]
    if total <= FULL_CHECK_LIMIT:
        combos = itertools.product(*per_dim)
    else:
        firsts = [p[0] for p in per_dim]
        combos = (
            tuple(firsts[:i] + [value] + firsts[i + 1:])
            for i, p in enumerate(per_dim) for value in p
        )
    trials = []
    for combo in combos:
        try:
            trials.append((tuple(combo), compose_and_check(fixed + list(combo))))
        except UserError as e:
            where = " ".join(combo)
            raise UserError(f"{e} (in the trial {where})" if where else str(e)) from None
    return trials


def tune_space(plan: SweepPlan, search: str) -> dict[str, Any]:
    """The Tune param space of the plan's dimensions.

    grid: every dimension a grid axis (all must be discrete). random and optuna: every
    dimension sampled (discrete ones uniformly). auto: discrete dimensions are grid axes and
    continuous ones are sampled num_samples times per grid point (Tune's own semantics).
    """
    from ray import tune

    space: dict[str, Any] = {}
    for d in plan.dims:
        if d.discrete:
            grid = search in ("grid", "auto") and not d.mutated
            space[d.key] = tune.grid_search(d.values) if grid else tune.choice(d.values)
        elif search == "grid" and not d.mutated:
            raise UserError(
                f"sweep.search=grid: {d.key}={d.expression} is not discrete; use "
                "search=auto, random or optuna"
            )
        elif d.integer:
            low, high = int(round(d.low)), int(round(d.high)) + 1
            space[d.key] = tune.lograndint(low, high) if d.log else tune.randint(low, high)
        else:
            space[d.key] = tune.loguniform(d.low, d.high) if d.log else tune.uniform(d.low, d.high)
    return space
