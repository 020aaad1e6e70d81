"""What every benchmark shares: timing, the machine's description, table and JSON output.

A benchmark's figures live once, in results/<name>.json, which the docs' tables are made
from (docs/hooks/benchmarks.py):

    {"benchmark": "<name>",
     "runs": [{"command": "python -m benchmarks.<module> ...", "commit": "<id>" or "unknown",
               "machine": "2-core machine, CPU" or "one NVIDIA H200, 16 CPU cores",
               "date": "YYYY-MM-DD" or null,
               "tables": [{"title": ..., "columns": [...], "rows": [[...]], "notes": [...]}],
               "notes": [...], "platform": {...}, "data": {...the raw figures...}}]}

A cell is a number (shown with thousands separators), a string or null ("-"); a row's
leading spaces indent it. One run per (command, machine): a new run replaces that one and
keeps the others, such as the same benchmark's run on another machine.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.tracking.series import PERF_PREFIX, SWEEP_WALL_S, TRIAL_PREFIX

RESULTS = Path(os.environ.get("RLPIPE_BENCHMARK_RESULTS")
               or Path(__file__).resolve().parent / "results")
"""Where write() keeps the results: benchmarks/results, or $RLPIPE_BENCHMARK_RESULTS (a
device session writes into the folder that comes back)."""
ROOT = Path(__file__).resolve().parent.parent
_TABLES: list[dict[str, Any]] = []
"""The tables table() made since the last write(): the figures write() saves."""


def commit() -> str:
    """The checkout's commit, "-dirty" when tracked files outside results/ changed."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True,
                              text=True, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                      ":(exclude)benchmarks/results")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if changed else head


def gpus() -> list[str]:
    """The names of this machine's NVIDIA GPUs (NVML; none without a driver)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no NVML library or no driver: a machine without NVIDIA GPUs
        return []
    try:
        names = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
                 for i in range(pynvml.nvmlDeviceGetCount())]
        return [n.decode() if isinstance(n, bytes) else n for n in names]
    finally:
        pynvml.nvmlShutdown()


def machine() -> dict[str, Any]:
    """Where a measurement was taken: "description" says it in words ("2-core machine,
    CPU", "one NVIDIA H200, 16 CPU cores"), the rest in detail."""
    cpus, names = os.cpu_count(), gpus()
    if not names:
        description = f"{cpus}-core machine, CPU"
    elif len(set(names)) == 1:
        count = "one" if len(names) == 1 else f"{len(names)} x"
        description = f"{count} {names[0]}, {cpus} CPU cores"
    else:
        description = f"{', '.join(names)}, {cpus} CPU cores"
    return {
        "description": description,
        "cpus": cpus,
        "gpus": names,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d"),
    }


def command() -> str:
    """The command that runs this benchmark, from sys.argv: python -m benchmarks.<module>
    and its arguments."""
    first = Path(sys.argv[0])
    module = sys.argv[0]
    if first.suffix == ".py":
        try:
            module = ".".join(first.resolve().relative_to(ROOT).with_suffix("").parts)
        except ValueError:
            pass
    return shlex.join(["python", "-m", module, *sys.argv[1:]])


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


def cell(v: Any) -> Any:
    """A table cell as saved: a float rounded as table() prints it (3 significant digits
    under 100, else a whole number), an integer as an int, anything else as it is."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        v = float(v)
        if not math.isfinite(v):
            return str(v)
        return float(f"{v:.3g}") if abs(v) < 100 else round(v)
    return str(v)


def table(headers: list[str], rows: list[list[Any]], title: str | None = None) -> str:
    """A Markdown table, printed by the benchmark; its figures are kept for write()."""
    _TABLES.append({"title": title, "columns": list(headers),
                    "rows": [[cell(v) for v in row] for row in rows]})

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
                if key.startswith(TRIAL_PREFIX):
                    trial_perf[key] = trial_perf.get(key, 0.0) + value
        return {
            "fit_s": parent.data.metrics[SWEEP_WALL_S],
            "phases": {k: v for k, v in parent.data.metrics.items() if k.startswith(PERF_PREFIX)},
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


def write(name: str, data: dict[str, Any], notes: list[str] | None = None) -> Path:
    """Save this run of a benchmark in results/<name>.json (the schema above): the
    command, commit, machine and date, the tables table() made since the last write, and
    `data`, the raw figures. It replaces the file's run of the same command on the same
    machine and keeps its other runs."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    where = machine()
    run = {"command": command(), "commit": where.pop("commit"),
           "machine": where.pop("description"), "date": where.pop("date"),
           "tables": list(_TABLES), "notes": notes or [], "platform": where, "data": data}
    _TABLES.clear()
    runs = json.loads(path.read_text()).get("runs", []) if path.exists() else []
    same = [i for i, r in enumerate(runs)
            if (r.get("command"), r.get("machine")) == (run["command"], run["machine"])]
    if same:
        runs[same[0]] = run
    else:
        runs.append(run)
    path.write_text(json.dumps({"benchmark": name, "runs": runs}, indent=2, default=str)
                    + "\n")
    return path
