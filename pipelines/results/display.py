"""A sweep's summary for people: the terminal table, the best line per env, and the plots
(learning curves with bootstrap bands, rliable's interval-estimate plot)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from algos.core.metrics import EVAL_SCORE
from pipelines.results.stats import CONFIDENCE, Row, Trial, groups, held_out_metric, winners

CURVE_POINTS = 100


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
        test = {r.config: r for r in env_rows if r.at == "test"}
        last = [r for r in env_rows if r.at == "last"]
        width = max(len(r.config) for r in last)
        lines.append(f"{env}: {metric} over seeds, ranked by IQM at the last report "
                     f"({CONFIDENCE:.0%} bootstrap CI)")
        lines.append(f"  {'#':>2}  {'config':{width}}  {'n':>3}  {'IQM [CI]':27}"
                     f"{'mean ± std':19}{'median':>8}   {'best-of-run IQM [CI]':27}"
                     + (f"held-out {held_out_metric(metric)} IQM [CI]" if test else "")
                     .rstrip())
        for r in last:
            b, t = best[r.config], test.get(r.config)
            n = f"{r.n}" + ("*" if r.unfinished else "") + (f"+{r.failed}!" if r.failed else "")
            lines.append((
                f"  {r.rank:>2}  {r.config:{width}}  {n:>3}  "
                f"{_num(r.iqm) + ' ' + _ci(r.iqm_low, r.iqm_high):27}"
                f"{_num(r.mean) + ' ± ' + _num(r.std, 3):19}{_num(r.median):>8}   "
                f"{_num(b.iqm) + ' ' + _ci(b.iqm_low, b.iqm_high):27}"
                + (f"{_num(t.iqm)} {_ci(t.iqm_low, t.iqm_high)}" if t else "")).rstrip())
    if any(r.unfinished for r in rows):
        lines.append("  n*: some of its trials have not finished; their last report so far")
    if any(r.failed for r in rows):
        lines.append("  +k!: k trials with no finite value (failed)")
    return "\n".join(lines)


def best_lines(rows: Sequence[Row], ui_run=None, metric: str = EVAL_SCORE) -> list[str]:
    """One line per env: its best configuration, IQM [CI] over n seeds, its held-out
    figure's IQM [CI] (held_out_metric of `metric`: what its selection did not see), the
    run to open."""
    out = []
    tested = {(r.env, r.config): r for r in rows if r.at == "test"}
    for env, r in winners(rows).items():
        where = ui_run(r.top_run_id) if ui_run else r.top_run_id
        test = tested.get((env, r.config))
        held_out = (f"; on held-out seeds, {held_out_metric(metric)} IQM {_num(test.iqm)} "
                    f"{_ci(test.iqm_low, test.iqm_high)}" if test else "")
        out.append(f"Best on {env}: {r.config}: IQM {_num(r.iqm)} {_ci(r.iqm_low, r.iqm_high)}"
                   f" over {r.n} seed(s){held_out}; its best run (seed {r.top_seed}): {where}")
    return out


def _by_episode(trials: Sequence[Trial]) -> bool:
    """Whether every trial counts its budget in episodes and reported them at each point
    of its curve (then its curve is drawn against episodes)."""
    return all(t.episodes and all(s in t.episodes for s, _ in t.curve) for t in trials)


def _grid_curves(trials: Sequence[Trial], by_episode: bool = False
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """The trials' curves on one grid of steps, or of episodes (linear between reports),
    over the part every trial reached."""
    curves = [[(t.episodes[s] if by_episode else s, v) for s, v in t.curve
               if math.isfinite(v)] for t in trials]
    curves = [c for c in curves if c]
    if not curves:
        return None
    lo, hi = max(c[0][0] for c in curves), min(c[-1][0] for c in curves)
    steps = np.linspace(lo, hi, CURVE_POINTS) if hi > lo else np.array([float(hi)])
    values = np.array([np.interp(steps, [s for s, _ in c], [v for _, v in c]) for c in curves])
    return steps, values


def plot_curves(trials: Sequence[Trial], metric: str, path: Path) -> None:
    """Learning curves: per configuration the mean over seeds with a 95% bootstrap band,
    one panel per env, against episodes where every run there counts its budget in them
    (tabular, REINFORCE), else against env steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    envs = groups(trials)
    fig, axes = plt.subplots(1, len(envs), figsize=(6 * len(envs), 4), squeeze=False)
    for ax, (env, configs) in zip(axes[0], sorted(envs.items()), strict=True):
        by_episode = _by_episode([t for ts in configs.values() for t in ts])
        for config, ts in sorted(configs.items()):
            grid = _grid_curves(ts, by_episode)
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
        ax.set(title=env, xlabel="episodes" if by_episode else "env steps", ylabel=metric)
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


def plot_profiles(samples: dict[str, dict[str, list[float]]], metric: str, path: Path
                  ) -> bool:
    """Performance profiles (Agarwal et al. 2021): per configuration the fraction of its
    runs scoring above tau, against tau, with 95% bootstrap bands; one panel per env with
    two or more configurations. False when none has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines.results.compare import profile, taus_for

    shown = {env: configs for env, configs in samples.items()
             if sum(bool(s) for s in configs.values()) >= 2}
    if not shown:
        return False
    fig, axes = plt.subplots(1, len(shown), figsize=(6 * len(shown), 4), squeeze=False)
    for ax, (env, configs) in zip(axes[0], shown.items(), strict=True):
        taus = taus_for([s for s in configs.values() if s])
        for config, scores in configs.items():
            if not scores:
                continue
            fraction, low, high = profile(scores, taus)
            line, = ax.plot(taus, fraction, label=f"{config} (n={len(scores)})")
            ax.fill_between(taus, low, high, alpha=0.2, color=line.get_color())
        ax.set(title=f"{env}: performance profiles ({CONFIDENCE:.0%} bands)",
               xlabel=f"{metric} threshold tau", ylabel="fraction of runs above tau",
               ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
