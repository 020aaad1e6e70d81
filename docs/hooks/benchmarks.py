"""MkDocs hook: the benchmark tables and learning curves, made from benchmarks/results/*.json.

A page says where they go with a marker:

    <!-- benchmark: cartpole_dqn -->           every run of results/cartpole_dqn.json: its
                                               command, commit, machine, date and tables
    <!-- benchmark: cluster_scale table=2 -->  only the second table of each run
    <!-- curves: cartpole_dqn -->              learning_curves.json's curves of experiment
                                               cartpole_dqn (a PNG drawn at build time) and
                                               the final evaluation of each seed

The figures live once, in the JSON files (their schema: benchmarks/common.py). A marker
whose file is missing or malformed, or names what the file does not hold, stops the build.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

MARKER = re.compile(r"<!--\s*(benchmark|curves):\s*([\w-]+)((?:\s+\w+=[\w,]+)*)\s*-->")
CURVES_DIR = "assets/curves"
LEARNING_CURVES = "learning_curves"


def results_dir(config: Any) -> Path:
    """benchmarks/results beside mkdocs.yml."""
    return Path(config["config_file_path"]).resolve().parent / "benchmarks" / "results"


def _fail(path: Path, what: str) -> None:
    raise PluginError(f"benchmark results {path}: {what}")


def _check_cell(path: Path, where: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float, type(None))):
        _fail(path, f"{where}: a cell must be a number, a string or null, not {value!r}")


def _check_table(path: Path, where: str, table: Any) -> None:
    if not isinstance(table, dict):
        _fail(path, f"{where} is not an object")
    columns, rows = table.get("columns"), table.get("rows")
    if not isinstance(columns, list) or not columns:
        _fail(path, f"{where} has no columns")
    if not isinstance(rows, list) or not rows:
        _fail(path, f"{where} has no rows")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(columns):
            _fail(path, f"{where}, row {i + 1}: {len(columns)} cells expected, got {row!r}")
        for value in row:
            _check_cell(path, f"{where}, row {i + 1}", value)
    if not isinstance(table.get("notes", []), list):
        _fail(path, f"{where}: notes must be a list of strings")


def load(config: Any, name: str) -> dict[str, Any]:
    """results/<name>.json, checked against the schema."""
    path = results_dir(config) / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        _fail(path, "missing (run python -m benchmarks." + name + ")")
    except (OSError, ValueError) as e:
        _fail(path, f"not readable JSON: {e}")
    if not isinstance(data, dict) or data.get("benchmark") != name:
        _fail(path, f'not an object with "benchmark": "{name}"')
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        _fail(path, 'no "runs"')
    for i, run in enumerate(runs):
        where = f"run {i + 1}"
        if not isinstance(run, dict):
            _fail(path, f"{where} is not an object")
        for key in ("command", "commit", "machine"):
            if not isinstance(run.get(key), str) or not run[key]:
                _fail(path, f'{where} has no "{key}"')
        if "date" not in run or not isinstance(run["date"], (str, type(None))):
            _fail(path, f'{where}: "date" must be a string or null')
        tables = run.get("tables")
        if not isinstance(tables, list) or not tables:
            _fail(path, f"{where} has no tables")
        for k, table in enumerate(tables):
            _check_table(path, f"{where}, table {k + 1}", table)
    return data


def fmt(value: Any) -> str:
    """A cell as shown: numbers with thousands separators, null as '-', a string as it is
    (its leading spaces indent it), '|' escaped."""
    if value is None:
        return "-"
    if isinstance(value, (int, float)):
        return f"{value:,}"
    text = value.replace("|", "\\|")
    stripped = text.lstrip(" ")
    return "&nbsp;" * (len(text) - len(stripped)) + stripped


def markdown_table(table: dict[str, Any]) -> str:
    """A table of the JSON as Markdown, with its title above and its notes below."""
    lines = []
    if table.get("title"):
        lines += [f"**{table['title']}**", ""]
    lines.append("| " + " | ".join(fmt(c) for c in table["columns"]) + " |")
    lines.append("|" + "|".join("---" for _ in table["columns"]) + "|")
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table["rows"]]
    for note in table.get("notes", []):
        lines += ["", note]
    return "\n".join(lines)


def provenance(run: dict[str, Any]) -> str:
    """Where and how a run was measured, in one line."""
    date = f" · **date** {run['date']}" if run.get("date") else ""
    return (f"**Command** `{run['command']}` · **commit** `{run['commit']}` · "
            f"**machine** {run['machine']}{date}")


def render_benchmark(config: Any, name: str, options: dict[str, str]) -> str:
    """Every run of results/<name>.json (only the tables `table=` names, 1-based)."""
    data = load(config, name)
    wanted = None
    if "table" in options:
        wanted = {int(k) for k in options["table"].split(",") if k}
    out = []
    for run in data["runs"]:
        picked = [t for k, t in enumerate(run["tables"], 1) if wanted is None or k in wanted]
        if not picked:
            _fail(results_dir(config) / f"{name}.json",
                  f"a page asks for table {options['table']}, which a run does not have")
        out.append(provenance(run))
        out += [markdown_table(t) for t in picked]
        out += list(run.get("notes", []))
    return "\n\n".join(out)


def curve_runs(config: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the run of learning_curves.json that holds each experiment: its newest, the
    experiments' curves {name: {"pass_mark": ..., "seeds": {seed: {...}}}})."""
    data = load(config, LEARNING_CURVES)
    path = results_dir(config) / f"{LEARNING_CURVES}.json"
    runs: dict[str, Any] = {}
    curves: dict[str, dict[str, Any]] = {}
    for run in data["runs"]:
        experiments = run.get("data", {}).get("experiments")
        if not isinstance(experiments, dict) or not experiments:
            _fail(path, f"the run of {run['command']!r} has no data.experiments")
        for name, curve in experiments.items():
            seeds = curve.get("seeds") if isinstance(curve, dict) else None
            if not isinstance(seeds, dict) or not seeds:
                _fail(path, f"experiment {name} has no seeds")
            for seed, result in seeds.items():
                reports = result.get("reports") if isinstance(result, dict) else None
                if (not isinstance(reports, list) or not reports
                        or not all(isinstance(r, list) and len(r) == 3 for r in reports)
                        or "final_score" not in result):
                    _fail(path, f"experiment {name}, seed {seed}: reports of [step, "
                          "eval/score, eval/mean_return] and a final_score expected")
            runs[name], curves[name] = run, curve
    return runs, curves


def draw(name: str, curve: dict[str, Any]) -> bytes:
    """The PNG of one experiment: eval/mean_return and eval/score against env steps, each
    seed faint and the mean over seeds (report by report) bold, the pass mark dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import EngFormatter

    seeds = curve["seeds"]
    n = min(len(s["reports"]) for s in seeds.values())
    reports = np.array([s["reports"][:n] for s in seeds.values()], dtype=float)
    mark = curve.get("pass_mark", {})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), constrained_layout=True)
    for ax, column, label in ((axes[0], 2, "eval/mean_return"), (axes[1], 1, "eval/score")):
        for one in reports:
            ax.plot(one[:, 0], one[:, column], color="tab:blue", alpha=0.25, linewidth=1)
        ax.plot(reports[:, :, 0].mean(0), reports[:, :, column].mean(0), color="tab:blue",
                linewidth=2, label=f"mean of {len(reports)} seeds")
        if mark.get("metric") == label:
            ax.axhline(mark["at_least"], color="tab:red", linestyle="--", linewidth=1,
                       label=f"pass mark {mark['at_least']:g}")
        ax.set_xlabel("env steps")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
    fig.suptitle(name)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def render_curves(config: Any, name: str, page_uri: str) -> str:
    """The image of experiment `name`'s curves and each seed's final evaluation."""
    runs, curves = curve_runs(config)
    if name not in curves:
        _fail(results_dir(config) / f"{LEARNING_CURVES}.json",
              f"a page asks for the curves of {name}, which no run holds "
              f"(it holds: {', '.join(sorted(curves))})")
    curve, run = curves[name], runs[name]
    image = posixpath.relpath(f"{CURVES_DIR}/{name}.png", posixpath.dirname(page_uri) or ".")
    rows = [[seed, r["reports"][-1][2], r["final_score"],
             max(p[1] for p in r["reports"]), len(r["reports"])]
            for seed, r in curve["seeds"].items()]
    table = {"columns": ["seed", "final eval/mean_return", "final eval/score",
                         "best eval/score", "reports"],
             "rows": [[c if not isinstance(c, float) else round(c, 2) for c in row]
                      for row in rows]}
    return "\n\n".join([
        f"![{name}: eval/mean_return and eval/score against env steps, per seed and their "
        f"mean]({image})",
        markdown_table(table),
        provenance(run),
    ])


def on_files(files: Files, config: Any) -> Files:
    """Draw every experiment's curves into the site (a missing or malformed
    learning_curves.json stops the build)."""
    _, curves = curve_runs(config)
    for name, curve in curves.items():
        files.append(File.generated(config, f"{CURVES_DIR}/{name}.png",
                                    content=draw(name, curve)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    """Replace the page's markers with the tables and curves they name."""
    def replace(match: re.Match) -> str:
        kind, name = match.group(1), match.group(2)
        options = dict(o.split("=", 1) for o in match.group(3).split())
        if kind == "benchmark":
            return render_benchmark(config, name, options)
        return render_curves(config, name, page.file.src_uri)

    return MARKER.sub(replace, markdown)
