"""Two sweeps compared (python -m pipelines.report report.sweep=A report.against=B), or two
configurations of one sweep (report.config=X report.against_config=Y): their runs read
from MLflow, matched on env and evaluation protocol, compared with the statistics of
pipelines/results/compare.py, and written to a run of its own, compare-<A>-<B>, in A's
experiment. Nothing is written to either sweep's runs.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipelines.config.compose import UserError
from pipelines.results.compare import Comparison, compare
from pipelines.results.display import plot_profiles
from pipelines.results.stats import Trial
from pipelines.results.summary import COMPARISONS, child_runs, fetch_trials

PROTOCOL_KEYS = ("algo.max_steps", "algo.eval_episodes", "algo.eval_seeds", "algo.eval_seed",
                 "algo.eval_epsilon")
"""What scores a run besides its env's own params (env.*): the step cap, the evaluation
episodes and their seeds, the exploration while evaluating."""
KIND = "compare"
"""The comparison run's rlpipe.kind tag."""


@dataclass
class Side:
    """One side of a comparison: a sweep's configurations (or one of them), by env."""

    key: str
    """The setting that named it: report.sweep or report.against."""
    sweep: str
    parent: object
    trials: list[Trial]
    protocols: dict[tuple[str, str], dict[str, str]]
    """(env, config) -> the params that score its runs."""

    def scores(self, env: str, config: str, sign: float) -> list[float]:
        """The finite last-report values of `config` on `env`, signed: higher is better."""
        return [sign * t.last() for t in self.trials
                if t.env == env and t.config == config and math.isfinite(t.last())]

    def configs(self, env: str) -> list[str]:
        return sorted({t.config for t in self.trials if t.env == env})

    def label(self, config: str, other: Side) -> str:
        """The configuration as the table names it: prefixed by its sweep when the two
        sides are different sweeps."""
        return config if self.sweep == other.sweep else f"{self.sweep}: {config}"


def _protocol(params: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in params.items() if k.startswith("env.") or k in PROTOCOL_KEYS}


def read_side(client, key: str, parent, metric: str, config: str | None,
              config_key: str) -> Side:
    """The runs of the sweep under `parent`, only configuration `config` if named."""
    sweep = parent.data.tags.get("sweep", parent.info.run_name)
    runs = child_runs(client, parent.info.experiment_id, parent.info.run_id)
    trials = fetch_trials(client, parent.info.experiment_id, parent.info.run_id, metric, runs)
    if config is not None:
        there = sorted({t.config for t in trials})
        trials = [t for t in trials if t.config == config]
        if not trials:
            raise UserError(f"{config_key}={config}: no configuration of that name in sweep "
                            f"{sweep}; there: {', '.join(there) or 'none'}")
    by_id = {r.info.run_id: r for r in runs}
    protocols: dict[tuple[str, str], dict[str, str]] = {}
    for t in trials:
        protocols.setdefault((t.env, t.config), _protocol(by_id[t.run_id].data.params))
    return Side(key, sweep, parent, trials, protocols)


def _check(a: Side, b: Side) -> list[str]:
    """The envs both sides have; bad input when none, when their evaluation differs, or
    when a configuration has fewer than two scored seeds."""
    envs = sorted({t.env for t in a.trials} & {t.env for t in b.trials})
    if not envs:
        def names(side: Side) -> str:
            return ", ".join(sorted({t.env for t in side.trials})) or "none"
        raise UserError(f"{b.key}={b.sweep}: no env in common with {a.key}={a.sweep} "
                        f"({a.sweep}: {names(a)}; {b.sweep}: {names(b)})")
    for env in envs:
        for x in a.configs(env):
            for y in b.configs(env):
                pa, pb = a.protocols[(env, x)], b.protocols[(env, y)]
                differ = sorted(k for k in set(pa) | set(pb) if pa.get(k) != pb.get(k))
                if differ:
                    k = differ[0]
                    raise UserError(
                        f"{b.key}={b.sweep}: its runs on {env} are scored unlike "
                        f"{a.sweep}'s: {k}={pa.get(k, '(unset)')} in {a.sweep}, "
                        f"{pb.get(k, '(unset)')} in {b.sweep}; compare runs evaluated alike")
        for side in (a, b):
            for config in side.configs(env):
                n = len(side.scores(env, config, 1.0))
                if n < 2:
                    raise UserError(f"{side.key}={side.sweep}: configuration {config} on "
                                    f"{env} has {n} scored seed(s); comparing needs 2 or "
                                    f"more a configuration")
    return envs


def compare_sides(a: Side, b: Side, mode: str, named_difference: float | None
                  ) -> list[Comparison]:
    """Each configuration of A against each of B on every env they share (checked: see
    _check); higher is better, whatever the metric's mode."""
    sign = 1.0 if mode == "max" else -1.0
    out = []
    for env in _check(a, b):
        for x in a.configs(env):
            for y in b.configs(env):
                if (a.sweep, x) != (b.sweep, y):
                    out.append(compare(env, a.label(x, b), a.scores(env, x, sign),
                                       b.label(y, a), b.scores(env, y, sign),
                                       named_difference))
    return out


def run_name(a: Side, b: Side) -> str:
    """compare-<A>-<B>."""
    return f"{KIND}-{a.sweep}-{b.sweep}"


def log_comparison(uri: str, a: Side, b: Side, comparisons: Sequence[Comparison],
                   metric: str, tags: dict[str, str]) -> str:
    """A new run in A's experiment holding the table and the profiles: its id."""
    from pipelines.private_api import TABLE_ARTIFACTS_TAG
    from pipelines.tracking.run_logger import RunLogger, table_json

    experiment_id = a.parent.info.experiment_id  # type: ignore[attr-defined]
    name = run_name(a, b)
    logger = RunLogger.create(uri, experiment_id, name, run_name=name, params={},
                              tags={"rlpipe.kind": KIND, "compare.sweep": a.sweep,
                                    "compare.against": b.sweep, **tags,
                                    TABLE_ARTIFACTS_TAG: f'[{{"path": "{COMPARISONS}", '
                                                         f'"type": "table"}}]'})
    samples = {env: {side.label(config, other): side.scores(env, config, 1.0)
                     for side, other in ((a, b), (b, a)) for config in side.configs(env)}
               for env in sorted({c.env for c in comparisons})}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / COMPARISONS).write_text(table_json([c.as_record() for c in comparisons]))
        logger.log_artifact(folder / COMPARISONS)
        if plot_profiles(samples, metric, folder / "profiles.png"):
            logger.log_artifact(folder / "profiles.png")
    logger.finish("FINISHED")
    return logger.run_id
