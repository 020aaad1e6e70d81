"""Tune's searchers and schedulers, built from sweep.search and sweep.scheduler.

Every scheduler is Tune's own class: ASHA, HyperBand, HyperBand for BOHB, the median
stopping rule, Population Based Training and PB2 (these two with a fairer choice of the
member that runs next: pipelines.tune.fair_pbt). What is ours: the time they count in
(the algorithm's budget by default: env steps, or episodes for Q-learning and REINFORCE),
the ranges PBT and PB2 explore in (the sweep grammar's, kept: a perturbed value is clipped
back into its range), and the seeds a searcher's configuration runs with
(sweep.seeds_per_config: the searcher is told the IQM over them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pipelines.config.compose import UserError
from pipelines.config.schema import SweepConfig
from pipelines.config.space import Dimension, SweepPlan

ADAPTIVE = ("pbt", "pb2")
"""Schedulers that change a trial's hyperparameters while it runs."""
PAUSING = (*ADAPTIVE, "hyperband", "bohb", "replay")
"""Schedulers that pause trials and restart them from their newest checkpoint (or, PBT,
another member's): their trials checkpoint at every report."""
FEEDBACK_FILE = "searcher_feedback.jsonl"
"""Beside the Tune run: one line per configuration, what the searcher was told."""


def time_attr(sweep: SweepConfig, algorithms: Iterable[Any]) -> str:
    """The result key the scheduler counts time in: auto is reports (training_iteration)
    for the schedulers that stop trials, whose max_t and grace_period count reports, and
    the algorithms' budget counter for pbt and pb2 (one for all of them, or bad input)."""
    chosen = sweep.scheduler.time_attr
    algorithms = list(algorithms)
    if chosen == "auto" and sweep.scheduler.name not in ADAPTIVE:
        return "training_iteration"
    if chosen == "auto":
        counters = sorted({a.budget[1] for a in algorithms})
        if len(counters) > 1:
            raise UserError(f"sweep.scheduler.time_attr=auto: the sweep's algorithms count "
                            f"their budgets in {' and '.join(counters)}; name one, or "
                            "training_iteration")
        return counters[0]
    for a in algorithms:
        if chosen != "training_iteration" and chosen not in a.reported:
            raise UserError(f"sweep.scheduler.time_attr={chosen}: {a.name} does not report "
                            f"it; allowed: training_iteration, {', '.join(_counters(a))}")
    return chosen


def _counters(algorithm) -> list[str]:
    from algos.core.metrics import ENV_STEPS, EPISODES

    return [c for c in (ENV_STEPS, EPISODES) if c in algorithm.reported]


def check_metric(sweep: SweepConfig, algorithms: Iterable[Any]) -> None:
    """The metric that ranks trials (and that schedulers and searchers read) is one every
    algorithm of the sweep reports."""
    for a in algorithms:
        if sweep.metric not in a.reported:
            raise UserError(f"sweep.metric={sweep.metric}: {a.name} does not report it; "
                            f"allowed: {', '.join(a.reported)}")


class ClipToRange:
    """PBT's and PB2's custom explore step: a perturbed value (the donor's times 1.2 or
    0.8) is put back into its range, and an int-typed key's rounded; a choice's values
    stay as they are."""

    def __init__(self, dims: Sequence[Dimension]) -> None:
        self.bounds = {d.key: (d.low, d.high, d.integer) for d in dims if not d.discrete}

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        """The config with every ranged key inside its range."""
        for key, (low, high, integer) in self.bounds.items():
            if key in config:
                value = min(max(float(config[key]), low), high)
                config[key] = int(round(value)) if integer else value
        return config


def build_scheduler(sweep: SweepConfig, plan: SweepPlan, space: dict[str, Any],
                    time_key: str):
    """Tune's scheduler for sweep.scheduler, or None."""
    s = sweep.scheduler
    if s.name == "none":
        return None
    from ray.tune import schedulers

    if s.name == "asha":
        return schedulers.ASHAScheduler(time_attr=time_key, max_t=s.max_t,
                                        grace_period=s.grace_period,
                                        reduction_factor=s.reduction_factor)
    if s.name == "hyperband":
        return schedulers.HyperBandScheduler(time_attr=time_key, max_t=s.max_t,
                                             reduction_factor=s.reduction_factor)
    if s.name == "bohb":
        return schedulers.HyperBandForBOHB(time_attr=time_key, max_t=s.max_t,
                                           reduction_factor=s.reduction_factor)
    if s.name == "median":
        return schedulers.MedianStoppingRule(time_attr=time_key, grace_period=s.grace_period,
                                             min_samples_required=s.min_samples_required)
    mutations = plan.mutations
    common: dict[str, Any] = dict(time_attr=time_key, perturbation_interval=s.perturbation_interval,
                  quantile_fraction=s.quantile_fraction,
                  custom_explore_fn=ClipToRange(mutations), log_config=True,
                  require_attrs=True, synch=s.synch)
    from pipelines.tune.fair_pbt import FairPB2, FairPopulationBasedTraining

    if s.name == "pbt":
        return FairPopulationBasedTraining(
            hyperparam_mutations={d.key: list(d.values) if d.discrete else space[d.key]
                                  for d in mutations},
            resample_probability=s.resample_probability, burn_in_period=s.burn_in_period,
            perturbation_factors=tuple(s.perturbation_factors),  # type: ignore[arg-type]
            **common)
    return FairPB2(hyperparam_bounds={d.key: [d.low, d.high] for d in mutations}, **common)


def check_scheduler(sweep: SweepConfig, plan: SweepPlan) -> None:
    """What Tune's classes would refuse once running, refused now as bad input."""
    s = sweep.scheduler
    if s.name in ADAPTIVE and sweep.search not in ("auto", "grid", "random"):
        raise UserError(f"sweep.search={sweep.search}: scheduler.name={s.name} takes no "
                        "searcher (its population explores); use search=auto or random")
    if s.name == "pb2":
        for d in plan.mutations:
            if d.discrete:
                raise UserError(f"sweep.scheduler.mutations.{d.key}={d.expression}: pb2 "
                                "explores intervals only (interval(lo, hi)); use pbt for a "
                                "choice")
    if s.name == "pb2" or sweep.search == "bohb":
        try:
            if s.name == "pb2":
                import GPy  # noqa: F401
                import sklearn  # noqa: F401
            else:
                import ConfigSpace  # noqa: F401
                import hpbandster  # noqa: F401
        except ImportError as e:
            raise UserError(f"sweep.scheduler.name={s.name}: needs {e.name}; install "
                            "the extra: pip install -e '.[schedulers]'") from None


def build_searcher(sweep: SweepConfig, search: str, seed: int, folder: str | None):
    """Tune's search algorithm for sweep.search (Optuna and BOHB imported here, before
    anything starts), repeated over seeds_per_config seeds where a searcher learns."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    repeat = sweep.seeds_per_config
    if search not in ("optuna", "bohb"):
        # random with seeds: every sampled configuration held constant over a seed grid.
        return BasicVariantGenerator(random_state=seed, constant_grid_search=repeat > 1)
    if search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher: Any = OptunaSearch(metric=sweep.metric, mode=sweep.mode, seed=seed)
    else:
        from ray.tune.search.bohb import TuneBOHB

        searcher = TuneBOHB(metric=sweep.metric, mode=sweep.mode, seed=seed)
    if repeat == 1:
        return searcher
    from pipelines.tune.seed_repeater import SeedRepeater

    feedback = str(Path(folder) / FEEDBACK_FILE) if folder else None
    return SeedRepeater(searcher, repeat, feedback)


def seed_space(sweep: SweepConfig, seed: int) -> dict[str, Any]:
    """The param space's seed axis of a random search with seeds_per_config (others: the
    Repeater's index gives the seed)."""
    from ray import tune

    if sweep.seeds_per_config > 1 and sweep.search == "random":
        return {"seed": tune.grid_search(list(range(seed, seed + sweep.seeds_per_config)))}
    return {}


def read_feedback(folder: str | Path) -> list[dict[str, Any]]:
    """What SeedRepeater wrote: one record per configuration told to the searcher."""
    path = Path(folder) / FEEDBACK_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
