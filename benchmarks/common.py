"""What every benchmark shares: timing, the machine's description, table and JSON output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """Where a measurement was taken."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(RESULTS.parent.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of one call."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def alternate(candidates: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list[float]]:
    """Run the candidates in turn, `repeats` rounds, so drift in the machine's speed hits
    them alike; returns each one's wall seconds per round."""
    seconds: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            seconds[name].append(timed(fn)[0])
    return seconds


def median(values: list[float]) -> float:
    """The median."""
    return statistics.median(values)


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (what the README quotes)."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def run_sweep(overrides: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """python -m pipelines.sweep <overrides> in an empty folder with its own sqlite store:
    Tune's fit seconds (the parent run's perf/sweep_wall_s), the whole command's seconds,
    the start-up (fit start to the first trial's run), the driver's peak RSS, and what the
    store holds per trial (runs, metric points, params, tags)."""
    import resource
    import sqlite3

    from mlflow import MlflowClient

    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as work:
        args = [sys.executable, "-m", "pipelines.sweep", *overrides, "sweep.name=bench"]
        env = {**os.environ, "PYTHONPATH": str(root), **(env or {})}
        rss_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        wall, proc = timed(lambda: subprocess.run(args, cwd=work, env=env,
                                                  capture_output=True, text=True))
        if proc.returncode != 0:
            raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-3000:])
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        client = MlflowClient(f"sqlite:///{work}/mlflow.db")
        exp = client.get_experiment_by_name("sweeps")
        runs = client.search_runs([exp.experiment_id], max_results=10000)
        parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags][0]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        first = min(r.info.start_time for r in children)
        with sqlite3.connect(f"{work}/mlflow.db") as db:
            counts = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                      for t in ("metrics", "params", "tags")}
        trial_perf: dict[str, float] = {}
        for child in children:
            for key, value in child.data.metrics.items():
                if key.startswith("perf/trial_"):
                    trial_perf[key] = trial_perf.get(key, 0.0) + value
        return {
            "fit_s": parent.data.metrics["perf/sweep_wall_s"],
            "phases": {k: v for k, v in parent.data.metrics.items() if k.startswith("perf/")},
            "trial_sums": trial_perf,
            "command_s": wall,
            "startup_s": (first - parent.info.start_time) / 1000,
            "trials": len(children),
            # ru_maxrss is the largest child's peak (KiB); a later, smaller one leaves it.
            "driver_peak_rss_mb": rss / 1024 if rss > rss_before else None,
            "nodes": len({r.data.tags.get("ray.node_id") for r in children}),
            "store_mb": Path(f"{work}/mlflow.db").stat().st_size / 2**20,
            **{f"{t}_per_trial": n / max(1, len(children)) for t, n in counts.items()},
        }


def write(name: str, data: dict[str, Any]) -> Path:
    """Save a benchmark's figures as results/<name>.json."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2, default=str))
    return path
