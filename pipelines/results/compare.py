"""Is A better than B, and how many seeds would tell: the statistics RL papers compare
agents with, on plain numbers (no MLflow here).

- The probability of improvement P(X > Y) (Agarwal et al. 2021, "Deep RL at the Edge of
  the Statistical Precipice"; rliable's metrics.probability_of_improvement on one task):
  the chance that a run of X scores above a run of Y, ties counted half, which is the
  Mann-Whitney U statistic over n * m. Its 95% interval resamples X's runs and Y's runs
  each on their own (rliable's StratifiedIndependentBootstrap), as does the IQM
  difference's.
- Performance profiles (the same paper): the fraction of runs whose score exceeds tau,
  against tau, with 95% bootstrap bands.
- The seeds a difference needs (Colas et al. 2018, "How Many Random Seeds?"): the fewest
  seeds per configuration at which a one-sided Welch's t-test at alpha 0.05 has power 0.8,
  from the difference and the two configurations' standard deviations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from pipelines.results.stats import CONFIDENCE, RESAMPLES, Row, Trial, groups, iqm, winners

ALPHA, POWER, MAX_SEEDS = 0.05, 0.8, 100
"""Colas et al.'s test: one-sided, alpha 0.05, power 0.8; past 100 seeds, not detectable."""
BETTER, WORSE, NO_DIFFERENCE = "better", "worse", "no difference shown at 95%"


def probability_of_improvement(x: Sequence[float] | np.ndarray,
                               y: Sequence[float] | np.ndarray) -> float:
    """P(X > Y): over every pair of a run of X and a run of Y, 1 where X's scores higher,
    1/2 where they tie, averaged."""
    return float(_poi(np.asarray(x, dtype=float), np.asarray(y, dtype=float)))


def _poi(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(X > Y) along `axis`, vectorized over the leading axes (a bootstrap's resamples)."""
    x, y = np.moveaxis(x, axis, -1), np.moveaxis(y, axis, -1)
    a, b = x[..., :, None], y[..., None, :]
    return ((a > b) + 0.5 * (a == b)).mean(axis=(-2, -1))


def _iqm_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return iqm(x, axis=axis) - iqm(y, axis=axis)


def independent_interval(x: np.ndarray, y: np.ndarray, statistic
                         ) -> tuple[float, float]:
    """95% percentile-bootstrap interval of statistic(x, y), resampling X's runs and Y's
    runs each on their own."""
    from scipy import stats

    result = stats.bootstrap((np.asarray(x, dtype=float), np.asarray(y, dtype=float)),
                             statistic, n_resamples=RESAMPLES, confidence_level=CONFIDENCE,
                             method="percentile", vectorized=True, axis=-1, paired=False,
                             rng=np.random.default_rng(0))
    ci = result.confidence_interval
    return float(ci.low), float(ci.high)


def profile(scores: Sequence[float] | np.ndarray, taus: Sequence[float] | np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The performance profile of one configuration's runs at each tau: the fraction of
    runs scoring above it, and the 95% bootstrap band (low, high) of that fraction."""
    x = np.asarray(scores, dtype=float)
    t = np.asarray(taus, dtype=float)
    fraction = (x[:, None] > t[None, :]).mean(axis=0)
    rng = np.random.default_rng(0)
    resampled = x[rng.integers(0, len(x), size=(RESAMPLES, len(x)))]
    fractions = (resampled[:, :, None] > t[None, None, :]).mean(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(fractions, [tail, 100 - tail], axis=0)
    return fraction, low, high


def taus_for(samples: Sequence[Sequence[float]], points: int = 101) -> np.ndarray:
    """A grid of thresholds from just under the lowest score to the highest."""
    values = np.concatenate([np.asarray(s, dtype=float) for s in samples])
    low, high = float(values.min()), float(values.max())
    pad = 0.02 * (high - low) if high > low else 1.0
    return np.linspace(low - pad, high, points)


def welch_power(difference: float, std_x: float, std_y: float, n: int,
                alpha: float = ALPHA) -> float:
    """The power of a one-sided Welch's t-test with n seeds per configuration, at the
    given true difference of means and standard deviations (noncentral t)."""
    from scipy import stats

    vx, vy = std_x ** 2 / n, std_y ** 2 / n
    se = math.sqrt(vx + vy)
    if se == 0:
        return 1.0 if difference else 0.0
    df = (vx + vy) ** 2 / (vx ** 2 / (n - 1) + vy ** 2 / (n - 1))
    critical = stats.t.ppf(1 - alpha, df)
    return float(stats.nct.sf(critical, df, abs(difference) / se))


def seeds_needed(difference: float, std_x: float, std_y: float, power: float = POWER,
                 alpha: float = ALPHA, limit: int = MAX_SEEDS) -> int | None:
    """The fewest seeds per configuration (2 or more) at which a one-sided Welch's t-test
    detects `difference` with `power`; None when `limit` seeds do not."""
    if not difference or not math.isfinite(difference):
        return None
    for n in range(2, limit + 1):
        if welch_power(difference, std_x, std_y, n, alpha) >= power:
            return n
    return None


@dataclass
class Comparison:
    """One configuration against another on one env: P(X > Y) and the IQM difference
    with their 95% intervals, the verdict, and the seeds the observed difference needs."""

    env: str
    config: str
    against: str
    n: int
    n_against: int
    probability: float
    probability_low: float
    probability_high: float
    iqm_difference: float
    iqm_difference_low: float
    iqm_difference_high: float
    verdict: str
    seeds_needed: int | None
    """For the observed difference of means and spreads; None: not detectable below
    MAX_SEEDS seeds (or no difference at all)."""
    named_difference: float | None = None
    """A difference the user names (report.seeds_for), if any."""
    seeds_for_named: int | None = None
    """The seeds that difference needs at the observed spreads (None: not below
    MAX_SEEDS)."""

    def as_record(self) -> dict:
        """JSON-safe: NaN becomes null."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


def verdict(low: float, high: float) -> str:
    """From P(X > Y)'s interval: better when all of it is above 1/2, worse when all of it
    is below, else no difference shown."""
    if low > 0.5:
        return BETTER
    if high < 0.5:
        return WORSE
    return NO_DIFFERENCE


def compare(env: str, config: str, scores: Sequence[float], against: str,
            scores_against: Sequence[float], named_difference: float | None = None
            ) -> Comparison:
    """`config`'s runs X against `against`'s runs Y on `env`; higher scores are better.
    Each side needs two or more runs: one seed says nothing about the spread.
    `named_difference`: also the seeds that difference would need."""
    x, y = np.asarray(scores, dtype=float), np.asarray(scores_against, dtype=float)
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"{env}: {config if len(x) < 2 else against} has "
                         f"{min(len(x), len(y))} run; a comparison needs 2 or more a side")
    p_low, p_high = independent_interval(x, y, _poi)
    d_low, d_high = independent_interval(x, y, _iqm_difference)
    return Comparison(
        env=env, config=config, against=against, n=len(x), n_against=len(y),
        probability=probability_of_improvement(x, y), probability_low=p_low,
        probability_high=p_high, iqm_difference=float(iqm(x) - iqm(y)),
        iqm_difference_low=d_low, iqm_difference_high=d_high,
        verdict=verdict(p_low, p_high),
        seeds_needed=seeds_needed(float(x.mean() - y.mean()), float(x.std(ddof=1)),
                                  float(y.std(ddof=1))),
        named_difference=named_difference,
        seeds_for_named=None if named_difference is None else seeds_needed(
            named_difference, float(x.std(ddof=1)), float(y.std(ddof=1))))


def env_samples(trials: Sequence[Trial], mode: str) -> dict[str, dict[str, list[float]]]:
    """env -> configuration -> its trials' finite last-report values, signed so that
    higher is better (negated for a sweep whose metric is better low)."""
    sign = 1.0 if mode == "max" else -1.0
    return {env: {config: [sign * t.last() for t in ts if math.isfinite(t.last())]
                  for config, ts in sorted(configs.items())}
            for env, configs in sorted(groups(trials).items())}


def against_the_best(trials: Sequence[Trial], rows: Sequence[Row], mode: str,
                     named_difference: float | None = None) -> list[Comparison]:
    """Each env with two or more configurations: each configuration against the env's
    best (rank 1 at the last report), where both have two or more finite values."""
    out = []
    best = winners(rows)
    for env, configs in env_samples(trials, mode).items():
        if env not in best or len(configs) < 2:
            continue
        top = best[env].config
        for config, scores in configs.items():
            if config != top and len(scores) >= 2 and len(configs[top]) >= 2:
                out.append(compare(env, config, scores, top, configs[top],
                                   named_difference))
    return out


def seeds_text(seeds: int | None) -> str:
    """What a seed count says, in words."""
    return (f"{seeds} seeds a configuration tell" if seeds
            else f"not detectable below {MAX_SEEDS} seeds")


def _named(c: Comparison) -> str:
    if c.named_difference is None:
        return ""
    return f"; a difference of {c.named_difference:g}: {seeds_text(c.seeds_for_named)}"


def verdict_lines(comparisons: Sequence[Comparison]) -> list[str]:
    """One line per env: each configuration's verdict against the env's best, P(X >
    best) with its interval, and the seeds per configuration the gap needs."""
    by_env: dict[str, list[Comparison]] = {}
    for c in comparisons:
        by_env.setdefault(c.env, []).append(c)
    return [f"Against the best on {env} ({cs[0].against}): " + "; ".join(
        f"{c.config} {c.verdict}, P(X > best) {c.probability:.2f} "
        f"[{c.probability_low:.2f}, {c.probability_high:.2f}], "
        f"{seeds_text(c.seeds_needed)}{_named(c)}"
        for c in cs) for env, cs in by_env.items()]


def pair_lines(comparisons: Sequence[Comparison]) -> list[str]:
    """One line per compared pair: X against Y on env, the verdict, P(X > Y) and the IQM
    difference with their intervals, and the seeds the gap needs."""
    return [f"{c.env}: {c.config} against {c.against}: {c.verdict}; P(X > Y) "
            f"{c.probability:.2f} [{c.probability_low:.2f}, {c.probability_high:.2f}], IQM "
            f"difference {c.iqm_difference:.4g} [{c.iqm_difference_low:.4g}, "
            f"{c.iqm_difference_high:.4g}] (n {c.n} and {c.n_against}); "
            f"{seeds_text(c.seeds_needed)}{_named(c)}" for c in comparisons]
