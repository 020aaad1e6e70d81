"""A sweep's answer: which configuration is better, and how sure we are.

The trials of a sweep are grouped by env and by configuration (the `config` tag: the swept
overrides without the seed). Each group's seeds give n, mean, std, median and the IQM
(interquartile mean) of the sweep metric, at each trial's last report and at its best,
with 95% percentile-bootstrap confidence intervals (stratified by env, as rliable's
StratifiedBootstrap, here through scipy.stats.bootstrap: rliable 1.2's pin arch<8 does
not import beside pandas 3). Configurations are ranked by IQM within their env only: the
scores of different envs do not compare.

Everything is read back from MLflow (the children of the sweep's parent run), so a
finished, an interrupted and a running sweep are summarized the same way, by the driver at
the end of a sweep and by `python -m pipelines.report` at any time.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

CONFIG_TAG = "config"
"""Tag of every trial's run: its configuration (Group by in the MLflow UI)."""
BASE_CONFIG = "base"
"""The configuration of a sweep that sweeps nothing but seeds."""
NOT_CONFIG = ("seed", "tracking", "cluster", "resume", "sweep", "progress")
"""Overrides that never tell one configuration from another."""
CONFIDENCE, RESAMPLES = 0.95, 10_000
CURVE_POINTS = 100


def config_label(overrides: Iterable[str]) -> str:
    """One configuration as one value: its overrides without the seed (and without where
    it ran and was logged), sorted, space-separated; `base` when nothing is left."""
    kept = sorted(o for o in overrides
                  if o.split("=", 1)[0].lstrip("+~").split(".", 1)[0] not in NOT_CONFIG)
    return " ".join(kept) or BASE_CONFIG


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


def interval(strata: Sequence[Sequence[float]], statistic=iqm) -> tuple[float, float]:
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
    """last (each trial's last report) or best (each trial's best)."""
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
    """1 is the best configuration of its env (by IQM at the last report)."""
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


def summarize(trials: Sequence[Trial], mode: str) -> list[Row]:
    """Two rows per (env, configuration), last and best, ranked within each env by IQM at
    the last report (a configuration with no finite value ranks last)."""
    rows: list[Row] = []
    for env, configs in sorted(groups(trials).items()):
        last = [_row(env, c, "last", ts, [t.last() for t in ts], mode)
                for c, ts in configs.items()]
        best = {c: _row(env, c, "best", ts, [t.best(mode) for t in ts], mode)
                for c, ts in configs.items()}
        sign = -1 if mode == "max" else 1
        last.sort(key=lambda r: (not math.isfinite(r.iqm), sign * r.iqm
                                 if math.isfinite(r.iqm) else 0, r.config))
        for rank, row in enumerate(last, 1):
            row.rank = best[row.config].rank = rank
            rows += [row, best[row.config]]
    return rows


def winners(rows: Sequence[Row]) -> dict[str, Row]:
    """env -> its best configuration's row (at the last report)."""
    return {r.env: r for r in rows if r.at == "last" and r.rank == 1 and r.n}


def _num(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}g}" if math.isfinite(x) else "-"


def _ci(low: float, high: float) -> str:
    return f"[{_num(low)}, {_num(high)}]" if math.isfinite(low) else "[-]"


def format_table(rows: Sequence[Row], metric: str) -> str:
    """The terminal view: one block per env, configurations in rank order."""
    lines = []
    by_env: dict[str, list[Row]] = {}
    for r in rows:
        by_env.setdefault(r.env, []).append(r)
    for env, env_rows in by_env.items():
        best = {r.config: r for r in env_rows if r.at == "best"}
        last = [r for r in env_rows if r.at == "last"]
        width = max(len(r.config) for r in last)
        lines.append(f"{env}: {metric} over seeds, ranked by IQM at the last report "
                     f"({CONFIDENCE:.0%} bootstrap CI)")
        lines.append(f"  {'#':>2}  {'config':{width}}  {'n':>3}  {'IQM [CI]':27}"
                     f"{'mean ± std':19}{'median':>8}   best-of-run IQM [CI]")
        for r in last:
            b = best[r.config]
            n = f"{r.n}" + ("*" if r.unfinished else "") + (f"+{r.failed}!" if r.failed else "")
            lines.append(
                f"  {r.rank:>2}  {r.config:{width}}  {n:>3}  "
                f"{_num(r.iqm) + ' ' + _ci(r.iqm_low, r.iqm_high):27}"
                f"{_num(r.mean) + ' ± ' + _num(r.std, 3):19}{_num(r.median):>8}   "
                f"{_num(b.iqm)} {_ci(b.iqm_low, b.iqm_high)}")
    if any(r.unfinished for r in rows):
        lines.append("  n*: some of its trials have not finished; their last report so far")
    if any(r.failed for r in rows):
        lines.append("  +k!: k trials with no finite value (failed)")
    return "\n".join(lines)


def best_lines(rows: Sequence[Row], ui_run=None) -> list[str]:
    """One line per env: its best configuration, IQM [CI] over n seeds, the run to open."""
    out = []
    for env, r in winners(rows).items():
        where = ui_run(r.top_run_id) if ui_run else r.top_run_id
        out.append(f"Best on {env}: {r.config}: IQM {_num(r.iqm)} {_ci(r.iqm_low, r.iqm_high)}"
                   f" over {r.n} seed(s); its best run (seed {r.top_seed}): {where}")
    return out


# ----- plots -------------------------------------------------------------------------

def _grid_curves(trials: Sequence[Trial]) -> tuple[np.ndarray, np.ndarray] | None:
    """The trials' curves on one grid of steps (linear between reports), over the steps
    every trial reached."""
    curves = [[(s, v) for s, v in t.curve if math.isfinite(v)] for t in trials]
    curves = [c for c in curves if c]
    if not curves:
        return None
    lo, hi = max(c[0][0] for c in curves), min(c[-1][0] for c in curves)
    steps = np.linspace(lo, hi, CURVE_POINTS) if hi > lo else np.array([float(hi)])
    values = np.array([np.interp(steps, [s for s, _ in c], [v for _, v in c]) for c in curves])
    return steps, values


def plot_curves(trials: Sequence[Trial], metric: str, path: Path) -> None:
    """Learning curves: per configuration the mean over seeds with a 95% bootstrap band,
    against env steps; one panel per env."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    envs = groups(trials)
    fig, axes = plt.subplots(1, len(envs), figsize=(6 * len(envs), 4), squeeze=False)
    for ax, (env, configs) in zip(axes[0], sorted(envs.items()), strict=True):
        for config, ts in sorted(configs.items()):
            grid = _grid_curves(ts)
            if grid is None:
                continue
            steps, values = grid
            mean = values.mean(axis=0)
            line, = ax.plot(steps, mean, label=f"{config} (n={len(values)})")
            if len(values) > 1:
                ci = stats.bootstrap((values,), np.mean, axis=0, vectorized=True,
                                     method="percentile", n_resamples=2000,
                                     confidence_level=CONFIDENCE,
                                     rng=np.random.default_rng(0)).confidence_interval
                ax.fill_between(steps, ci.low, ci.high, alpha=0.2, color=line.get_color())
        ax.set(title=env, xlabel="env steps", ylabel=metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_iqm(rows: Sequence[Row], metric: str, path: Path) -> bool:
    """rliable's interval-estimate plot: each configuration's IQM with its 95% CI, side by
    side, one panel per env that has 3 or more configurations. False when none has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_env: dict[str, list[Row]] = {}
    for r in rows:
        if r.at == "last" and r.n:
            by_env.setdefault(r.env, []).append(r)
    by_env = {e: rs for e, rs in by_env.items() if len(rs) >= 3}
    if not by_env:
        return False
    height = max(len(rs) for rs in by_env.values())
    fig, axes = plt.subplots(1, len(by_env), figsize=(6 * len(by_env), 1 + 0.5 * height),
                             squeeze=False)
    for ax, (env, rs) in zip(axes[0], sorted(by_env.items()), strict=True):
        rs = sorted(rs, key=lambda r: r.rank, reverse=True)
        for y, r in enumerate(rs):
            if math.isfinite(r.iqm_low):
                ax.barh(y, r.iqm_high - r.iqm_low, left=r.iqm_low, height=0.6, alpha=0.6)
            ax.vlines(r.iqm, y - 0.3, y + 0.3, color="black")
        ax.set_yticks(range(len(rs)), [r.config for r in rs], fontsize="small")
        ax.set(title=f"{env}: IQM of {metric} ({CONFIDENCE:.0%} CI)", xlabel=metric)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# ----- from and to MLflow ---------------------------------------------------------------

def _config_of(run) -> str:
    """A run's configuration: its tag, or (runs logged before the tag) its name's
    overrides."""
    tag = run.data.tags.get(CONFIG_TAG)
    if tag:
        return tag
    return config_label(run.info.run_name.split(",") if "=" in run.info.run_name else [])


def _seed_order(seed: str | None) -> tuple[int, str]:
    """Seeds in numeric order (a tie in value goes to the lower seed)."""
    return (int(seed), "") if seed and seed.isdigit() else (1 << 62, str(seed))


def fetch_trials(client, experiment_id: str, parent_run_id: str, metric: str) -> list[Trial]:
    """The sweep's trials, read from its parent run's children."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
            max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    trials = []
    runs.sort(key=lambda r: (_seed_order(r.data.tags.get("seed")), r.info.start_time))
    for run in runs:
        history = client.get_metric_history(run.info.run_id, metric)
        curve = sorted(((m.step, m.value) for m in history), key=lambda p: p[0])
        trials.append(Trial(
            run_id=run.info.run_id, env=run.data.tags.get("env", "?"), config=_config_of(run),
            seed=run.data.tags.get("seed", "?"), status=run.info.status, curve=curve))
    return trials


def _csv(rows: Sequence[Row]) -> str:
    out = io.StringIO()
    records = [r.as_record() for r in rows]
    writer = csv.DictWriter(out, fieldnames=list(records[0]) if records else ["env"])
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


def _table_json(rows: Sequence[Row]) -> str:
    """The format of mlflow.log_table (pandas' split orient), which the UI renders. Written
    here because log_table appends to an existing table, and a summary is rewritten."""
    records = [r.as_record() for r in rows]
    columns = list(records[0]) if records else []
    return json.dumps({"columns": columns, "data": [[r[c] for c in columns] for r in records]})


def record(logger, rows: Sequence[Row], trials: Sequence[Trial], metric: str) -> list[str]:
    """Log the summary on the parent run: summary.json (a table), summary.csv, the plots,
    and per env its best configuration as tags and metrics. Returns the artifact names."""
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    names = ["summary.json", "summary.csv"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "summary.json").write_text(_table_json(rows))
        (folder / "summary.csv").write_text(_csv(rows))
        if any(t.curve for t in trials):
            plot_curves(trials, metric, folder / "curves.png")
            names.append("curves.png")
        if plot_iqm(rows, metric, folder / "iqm.png"):
            names.append("iqm.png")
        for name in names:
            logger.log_artifact(folder / name)
    tags = {MLFLOW_LOGGED_ARTIFACTS: json.dumps([{"path": "summary.json", "type": "table"}])}
    metrics: dict[str, float] = {}
    for env, r in winners(rows).items():
        tags.update({f"best.{env}.config": r.config, f"best.{env}.run_id": r.top_run_id,
                     f"best.{env}.n": r.n})
        for key, value in (("iqm", r.iqm), ("iqm_low", r.iqm_low), ("iqm_high", r.iqm_high),
                           ("mean", r.mean)):
            if math.isfinite(value):
                metrics[f"best/{env}/{key}"] = value
    logger.set_tags(tags)
    if metrics:
        logger.log_metrics(metrics)
    return names


def summarize_sweep(logger, experiment_id: str, metric: str, mode: str,
                    ui_run=None) -> tuple[list[Row], str]:
    """Read the sweep under the parent run `logger` from MLflow, log its summary there, and
    return the rows and the text to print."""
    trials = fetch_trials(logger.client, experiment_id, logger.run_id, metric)
    rows = summarize(trials, mode)
    if not rows:
        return rows, f"No trial of this sweep has reported {metric} yet."
    record(logger, rows, trials, metric)
    text = format_table(rows, metric) + "\n" + "\n".join(best_lines(rows, ui_run))
    return rows, text


def read_summary(path: str | Path) -> list[Mapping]:
    """The rows of a summary.json, as dicts."""
    table = json.loads(Path(path).read_text())
    return [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
