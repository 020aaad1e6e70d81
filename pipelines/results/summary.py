"""A sweep's summary in MLflow: its trials read back from the children of its parent run,
and the summary (table, CSV, plots, the best configuration of each env) logged on the
parent.

Everything is read back from MLflow, so a finished, an interrupted and a running sweep are
summarized the same way, by the driver at the end of a sweep and by `python -m
pipelines.report` at any time.
"""

from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipelines.config.space import CONFIG_TAG, config_label
from pipelines.private_api import TABLE_ARTIFACTS_TAG
from pipelines.results.compare import Comparison, against_the_best, env_samples, verdict_lines
from pipelines.results.display import (
    best_lines,
    format_table,
    plot_curves,
    plot_iqm,
    plot_profiles,
)
from pipelines.results.population import LINEAGE_FILE, record_population
from pipelines.results.stats import Row, Trial, held_out_metric, held_out_mode, summarize, winners
from pipelines.tracking import series
from pipelines.tracking.run_logger import table_json

COMPARISONS = "comparisons.json"
"""The parent run's table of each env's configurations against its best."""


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


def child_runs(client, experiment_id: str, parent_run_id: str) -> list:
    """The runs of a sweep's trials: its parent run's children."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
            max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _episodes(client, run) -> dict[int, float]:
    """Training episodes at each reported step, for a run of an algorithm whose budget
    counts episodes (the learning curves' x there); empty otherwise."""
    from algos.core.metrics import EPISODES
    from algos.registry import ALGORITHMS

    algorithm = ALGORITHMS.get(run.data.tags.get("algo", ""))
    if algorithm is None or algorithm.budget[1] != EPISODES:
        return {}
    return {p.step: p.value for p in client.get_metric_history(run.info.run_id, EPISODES)}


def fetch_trials(client, experiment_id: str, parent_run_id: str, metric: str,
                 runs: list | None = None) -> list[Trial]:
    """The sweep's trials, read from its parent run's children (`runs`: already read)."""
    runs = list(runs if runs is not None else child_runs(client, experiment_id,
                                                        parent_run_id))
    trials = []
    runs.sort(key=lambda r: (_seed_order(r.data.tags.get("seed")), r.info.start_time))
    for run in runs:
        history = client.get_metric_history(run.info.run_id, metric)
        curve = sorted(((m.step, m.value) for m in history), key=lambda p: p[0])
        trials.append(Trial(
            run_id=run.info.run_id, env=run.data.tags.get("env", "?"), config=_config_of(run),
            seed=run.data.tags.get("seed", "?"), status=run.info.status, curve=curve,
            episodes=_episodes(client, run),
            test=run.data.metrics.get(held_out_metric(metric), math.nan)))
    return trials


def _csv(rows: Sequence[Row]) -> str:
    out = io.StringIO()
    records = [r.as_record() for r in rows]
    writer = csv.DictWriter(out, fieldnames=list(records[0]) if records else ["env"])
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


def record(logger, rows: Sequence[Row], trials: Sequence[Trial], metric: str,
           extra_tables: Sequence[str] = (), comparisons: Sequence[Comparison] = ()
           ) -> list[str]:
    """Log the summary on the parent run: summary.json (a table), summary.csv, the plots,
    the comparisons of each env's configurations against its best (comparisons.json, a
    table, and profiles.png), and per env its best configuration as tags and metrics;
    `extra_tables`: other table artifacts of the parent (the UI's table list). Returns
    the artifact names."""
    names = ["summary.json", "summary.csv"]
    tables = ["summary.json", *extra_tables]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "summary.json").write_text(table_json([r.as_record() for r in rows]))
        (folder / "summary.csv").write_text(_csv(rows))
        if any(t.curve for t in trials):
            plot_curves(trials, metric, folder / "curves.png")
            names.append("curves.png")
        if plot_iqm(rows, metric, folder / "iqm.png"):
            names.append("iqm.png")
        if comparisons:
            (folder / COMPARISONS).write_text(table_json([c.as_record() for c in comparisons]))
            names.append(COMPARISONS)
            tables.append(COMPARISONS)
        if plot_profiles(env_samples(trials, "max"), metric, folder / "profiles.png"):
            names.append("profiles.png")
        for name in names:
            logger.log_artifact(folder / name)
    tags = {TABLE_ARTIFACTS_TAG: json.dumps([{"path": t, "type": "table"} for t in tables])}
    metrics: dict[str, float] = {}
    tested = {(r.env, r.config): r for r in rows if r.at == "test"}
    for env, r in winners(rows).items():
        tags.update({f"best.{env}.config": r.config, f"best.{env}.run_id": r.top_run_id,
                     f"best.{env}.n": str(r.n)})
        test = tested.get((env, r.config))
        for key, value in (("iqm", r.iqm), ("iqm_low", r.iqm_low), ("iqm_high", r.iqm_high),
                           ("mean", r.mean), ("test_iqm", test.iqm if test else math.nan)):
            if math.isfinite(value):
                metrics[series.best(env, key)] = value
    logger.set_tags(tags)
    if metrics:
        logger.log_metrics(metrics, step=logger.next_step(series.BEST_PREFIX))
    return names


def summarize_sweep(logger, experiment_id: str, metric: str, mode: str,
                    ui_run=None, named_difference: float | None = None
                    ) -> tuple[list[Row], str]:
    """Read the sweep under the parent run `logger` from MLflow, log its summary there, and
    return the rows and the text to print (`named_difference`: also the seeds it would
    need, in the comparisons)."""
    runs = child_runs(logger.client, experiment_id, logger.run_id)
    trials = fetch_trials(logger.client, experiment_id, logger.run_id, metric, runs)
    rows = summarize(trials, mode, held_out_mode(metric, mode))
    if not rows:
        return rows, f"No trial of this sweep has reported {metric} yet."
    population = record_population(logger, runs, metric)  # a PBT sweep's lineage
    comparisons = against_the_best(trials, rows, mode, named_difference)
    record(logger, rows, trials, metric, [LINEAGE_FILE] if population else [], comparisons)
    lines = best_lines(rows, ui_run, metric) + verdict_lines(comparisons)
    return rows, format_table(rows, metric) + "\n" + "\n".join(lines)


def read_summary(path: str | Path) -> list[Mapping]:
    """The rows of a summary.json, as dicts."""
    table = json.loads(Path(path).read_text())
    return [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
