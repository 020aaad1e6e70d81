"""The statistics of a sweep: which configuration is better, and how sure we are.

The trials of a sweep are grouped by env and by configuration (the `config` tag: the swept
overrides without the seed). Each group's seeds give n, mean, std, median and the IQM
(interquartile mean) of the sweep metric, at each trial's last report and at its best,
with 95% percentile-bootstrap confidence intervals (stratified by env, as rliable's
StratifiedBootstrap, here through scipy.stats.bootstrap: rliable 1.2's pin arch<8 does
not import beside pandas 3). Configurations are ranked by IQM within their env only: the
scores of different envs do not compare. Plain data in, plain data out: no MLflow here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

CONFIDENCE, RESAMPLES = 0.95, 10_000


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50%, a quarter of the values cut from
    each end (rliable's aggregate_iqm, scipy.stats.trim_mean(x, 0.25); numpy alone, so the
    sweep's status line does not load scipy)."""
    x = np.sort(np.asarray(x, dtype=float), axis=axis)
    n = x.shape[axis]
    cut = int(0.25 * n)
    return np.take(x, range(cut, n - cut), axis=axis).mean(axis=axis)


def _pooled(statistic):
    """A statistic of stratified samples: over all of them pooled (rliable's estimators
    take a runs x tasks matrix and pool it the same way)."""
    def pooled(*strata: np.ndarray, axis: int = -1):
        return statistic(np.concatenate(strata, axis=axis), axis=axis)

    return pooled


def interval(strata: Sequence[Sequence[float] | np.ndarray], statistic=iqm) -> tuple[float, float]:
    """95% percentile-bootstrap interval of `statistic`, resampling each stratum (env) on
    its own. NaN for fewer than 2 values: one seed says nothing about the spread."""
    from scipy import stats

    samples = tuple(np.asarray(s, dtype=float) for s in strata if len(s))
    if sum(len(s) for s in samples) < 2:
        return math.nan, math.nan
    result = stats.bootstrap(samples, _pooled(statistic), n_resamples=RESAMPLES,
                             confidence_level=CONFIDENCE, method="percentile",
                             vectorized=True, axis=-1, rng=np.random.default_rng(0))
    ci = result.confidence_interval
    return float(ci.low), float(ci.high)


@dataclass
class Trial:
    """One trial's run, as the summary needs it."""

    run_id: str
    env: str
    config: str
    seed: str
    status: str
    curve: list[tuple[int, float]] = field(default_factory=list)
    """The sweep metric's points (step, value), in step order."""
    episodes: dict[int, float] = field(default_factory=dict)
    """Training episodes at each step of `curve`, for a run whose budget counts episodes
    (tabular, REINFORCE); empty for one that counts env steps."""
    test: float = math.nan
    """Its best agent's figure on the held-out seeds (held_out_metric; NaN: none yet)."""

    def finite(self) -> list[float]:
        """The curve's finite values."""
        return [v for _, v in self.curve if math.isfinite(v)]

    def last(self) -> float:
        """The last report's value (NaN if none, or if it was not finite)."""
        return self.curve[-1][1] if self.curve else math.nan

    def best(self, mode: str) -> float:
        """The best value of the run's reports."""
        values = self.finite()
        if not values:
            return math.nan
        return max(values) if mode == "max" else min(values)


@dataclass
class Row:
    """The statistics of one configuration on one env, at its trials' last or best
    report."""

    env: str
    config: str
    at: str
    """last (each trial's last report), best (each trial's best), or test (each trial's
    best agent on the held-out seeds: held_out_metric of the sweep metric)."""
    n: int
    """Trials with a finite value."""
    unfinished: int
    """Of those, trials not finished yet (still running, or stopped and resumable)."""
    failed: int
    """Trials with no finite value (failed or diverged)."""
    mean: float
    std: float
    median: float
    iqm: float
    iqm_low: float
    iqm_high: float
    mean_low: float
    mean_high: float
    rank: int = 0
    """1 is the best configuration of its env (by IQM at the last report, then mean)."""
    top_run_id: str = ""
    """The run of the configuration's best trial: the one to open."""
    top_seed: str = ""

    def as_record(self) -> dict:
        """JSON-safe: NaN becomes null."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


def _row(env: str, config: str, at: str, trials: list[Trial], values: list[float],
         mode: str) -> Row:
    pairs = [(v, t) for v, t in zip(values, trials, strict=True) if math.isfinite(v)]
    x = np.array([v for v, _ in pairs], dtype=float)
    n = len(x)
    nan = math.nan
    if n:
        top = (max if mode == "max" else min)(pairs, key=lambda p: p[0])[1]
        iqm_ci, mean_ci = interval([x]), interval([x], np.mean)
        stats_ = (float(x.mean()), float(x.std(ddof=1)) if n > 1 else 0.0,
                  float(np.median(x)), float(iqm(x)))
    else:
        top, iqm_ci, mean_ci, stats_ = None, (nan, nan), (nan, nan), (nan,) * 4
    return Row(
        env=env, config=config, at=at, n=n,
        unfinished=sum(t.status != "FINISHED" for _, t in pairs),
        failed=len(trials) - n,
        mean=stats_[0], std=stats_[1], median=stats_[2], iqm=stats_[3],
        iqm_low=iqm_ci[0], iqm_high=iqm_ci[1], mean_low=mean_ci[0], mean_high=mean_ci[1],
        top_run_id=top.run_id if top else "", top_seed=top.seed if top else "",
    )


def groups(trials: Iterable[Trial]) -> dict[str, dict[str, list[Trial]]]:
    """env -> config -> its trials."""
    out: dict[str, dict[str, list[Trial]]] = {}
    for t in trials:
        out.setdefault(t.env, {}).setdefault(t.config, []).append(t)
    return out


def held_out_metric(metric: str) -> str:
    """The held-out test's figure beside a sweep metric: the same figure (eval/<x> ->
    test/<x>) for an evaluation metric, else test/score."""
    from algos.core.metrics import EVAL_PREFIX, TEST_PREFIX, TEST_SCORE

    if metric.startswith(EVAL_PREFIX):
        return TEST_PREFIX + metric[len(EVAL_PREFIX):]
    return TEST_SCORE


def held_out_mode(metric: str, mode: str) -> str:
    """The direction the held-out figure beside `metric` is better in: the sweep's for an
    evaluation metric (its own figure), else max (test/score)."""
    from algos.core.metrics import EVAL_PREFIX

    return mode if metric.startswith(EVAL_PREFIX) else "max"


def summarize(trials: Sequence[Trial], mode: str, test_mode: str | None = None) -> list[Row]:
    """Rows per (env, configuration): last and best, and test where its trials were
    tested; ranked within each env by IQM at the last report, equal IQMs by mean (a score
    capped at CartPole's 500 ties often; a configuration with no finite value ranks
    last). The test row is what the ranking did not see; its best run
    is picked by `test_mode` (held_out_mode; None: `mode`)."""
    rows: list[Row] = []
    for env, configs in sorted(groups(trials).items()):
        last = [_row(env, c, "last", ts, [t.last() for t in ts], mode)
                for c, ts in configs.items()]
        best = {c: _row(env, c, "best", ts, [t.best(mode) for t in ts], mode)
                for c, ts in configs.items()}
        test = {c: _row(env, c, "test", ts, [t.test for t in ts], test_mode or mode)
                for c, ts in configs.items()}
        sign = -1 if mode == "max" else 1
        last.sort(key=lambda r: (not math.isfinite(r.iqm), sign * r.iqm
                                 if math.isfinite(r.iqm) else 0,
                                 sign * r.mean if math.isfinite(r.mean) else 0, r.config))
        for rank, row in enumerate(last, 1):
            row.rank = best[row.config].rank = test[row.config].rank = rank
            rows += [row, best[row.config]]
            if test[row.config].n:
                rows.append(test[row.config])
    return rows


def winners(rows: Sequence[Row]) -> dict[str, Row]:
    """env -> its best configuration's row (at the last report)."""
    return {r.env: r for r in rows if r.at == "last" and r.rank == 1 and r.n}
