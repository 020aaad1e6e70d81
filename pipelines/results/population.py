"""A PBT population on its sweep's parent run: the lineage table (one row per exploit) and
the population plot (the metric and each hyperparameter per member, exploits marked)."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from algos.core.metrics import ENV_STEPS
from pipelines.tracking.lineage import exploits_of
from pipelines.tracking.run_logger import table_json
from pipelines.tracking.series import EXPLOITS, HP_PREFIX, PBT_PREFIX

LINEAGE_FILE = "lineage.json"
POPULATION_PLOT = "population.png"


def lineage_rows(runs) -> list[dict[str, Any]]:
    """One row per exploit of the sweep's members, in the order of their steps."""
    trial_of = {r.info.run_id: r.data.tags.get("tune.trial_id") for r in runs}
    rows = []
    for run in runs:
        for record in exploits_of(run):
            row = {"trial_id": trial_of[run.info.run_id], "run_id": run.info.run_id,
                   "step": record["step"], "donor_trial_id": record.get("donor_trial_id"),
                   "donor_run_id": record.get("donor_run_id"),
                   "donor_step": record.get("donor_step")}
            for key, value in (record.get("old") or {}).items():
                row[f"old.{key}"] = value
            for key, value in (record.get("new") or {}).items():
                row[f"new.{key}"] = value
            rows.append(row)
    return sorted(rows, key=lambda r: (r["step"], str(r["trial_id"])))


def record_population(logger, runs, metric: str) -> list[str]:
    """Log the lineage table and the population plot on the parent run `logger` when
    its members exploited or carry hp/ series; the artifact names logged."""
    client = logger.client
    hp_keys = sorted({k for r in runs for k in r.data.metrics if k.startswith(HP_PREFIX)})
    if not hp_keys:
        return []
    rows = lineage_rows(runs)
    series = {}
    for run in runs:
        trial = run.data.tags.get("tune.trial_id", run.info.run_id[:8])
        series[trial] = {key: sorted((m.step, m.value) for m in
                                     client.get_metric_history(run.info.run_id, key))
                         for key in [metric, *hp_keys]}
        end = run.data.metrics.get(ENV_STEPS)
        for key in hp_keys:  # each value holds until the member's last step
            points = series[trial][key]
            if points and end is not None and end > points[-1][0]:
                points.append((int(end), points[-1][1]))
    names = [LINEAGE_FILE, POPULATION_PLOT]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / LINEAGE_FILE).write_text(table_json(rows))
        plot_population(series, rows, metric, hp_keys, folder / POPULATION_PLOT)
        for name in names:
            logger.log_artifact(folder / name)
    logger.log_metrics({EXPLOITS: float(len(rows))},
                       step=logger.next_step(PBT_PREFIX))
    return names


def plot_population(series: Mapping[str, Mapping[str, Sequence[tuple[int, float]]]],
                    rows: Sequence[Mapping[str, Any]], metric: str, hp_keys: Sequence[str],
                    path: Path) -> None:
    """One panel for the metric and one per hyperparameter, each member a line against
    env steps; each exploit a marker on the member's line where it took effect."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [metric, *hp_keys]
    fig, axes = plt.subplots(len(keys), 1, figsize=(8, 2.6 * len(keys)), sharex=True,
                             squeeze=False)
    colors = {t: plt.get_cmap("tab10")(i % 10) for i, t in enumerate(sorted(series))}
    for ax, key in zip(axes[:, 0], keys, strict=True):
        for trial, by_key in sorted(series.items()):
            points = by_key.get(key) or []
            if not points:
                continue
            steps, values = zip(*points, strict=True)
            step_plot = ax.plot if key == metric else ax.step
            kwargs = {} if key == metric else {"where": "post"}
            step_plot(steps, values, color=colors[trial], label=trial, **kwargs)
        for row in rows:
            points = series.get(str(row["trial_id"]), {}).get(key) or []
            if points:
                at = max((p for p in points if p[0] <= row["step"]), default=points[0])
                ax.plot([row["step"]], [at[1]], marker="v", color="black", markersize=6)
        ax.set_ylabel(key)
        if key.startswith(HP_PREFIX) and "lr" in key:
            ax.set_yscale("log")
    axes[0, 0].set_title(f"Population: {metric} and each hyperparameter; v = exploit")
    axes[0, 0].legend(fontsize="small", ncol=4)
    axes[-1, 0].set_xlabel("env steps (each member's own)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
