"""The docs site builds strictly, with the benchmark tables and curves made from the JSON."""

import html
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ALGORITHM_CURVES = {
    "q-learning": ["frozenlake_course", "taxi_course"],
    "dqn": ["cartpole_dqn"],
    "reinforce": ["cartpole_reinforce"],
}


def build(site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )


def test_the_site_builds_strictly_with_tables_and_curves_from_the_json(tmp_path):
    site = tmp_path / "site"
    proc = build(site)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # A figure of a results file, as the hook shows it (numbers with thousands
    # separators), is on the built page and not in the page's source: it came through
    # the hook, with the run's command and commit.
    source = (ROOT / "docs" / "benchmarks.md").read_text()
    page = (site / "benchmarks" / "index.html").read_text()
    run = json.loads((RESULTS / "cartpole_dqn.json").read_text())["runs"][0]
    shown = [f"{v:,}" for row in run["tables"][0]["rows"] for v in row
             if isinstance(v, int | float) and not isinstance(v, bool)]
    shown = [s for s in shown if len(s) >= 3 and s not in source]
    assert shown, run["tables"][0]
    assert shown[0] in page
    assert html.escape(run["command"], quote=False) in page and run["commit"] in page

    for algorithm, experiments in ALGORITHM_CURVES.items():
        page = (site / "algorithms" / algorithm / "index.html").read_text()
        for experiment in experiments:
            assert f'src="../../assets/curves/{experiment}.png"' in page, experiment
            image = site / "assets" / "curves" / f"{experiment}.png"
            assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", image


def test_a_malformed_results_file_fails_the_build(tmp_path):
    # The hook reads benchmarks/results beside mkdocs.yml: a copy of the config whose
    # results folder holds a broken file must not build.
    copy = tmp_path / "repo"
    (copy / "benchmarks" / "results").mkdir(parents=True)
    for path in RESULTS.glob("*.json"):
        (copy / "benchmarks" / "results" / path.name).write_text(path.read_text())
    (copy / "benchmarks" / "results" / "replay_memory.json").write_text('{"runs": [')
    (copy / "mkdocs.yml").write_text((ROOT / "mkdocs.yml").read_text().replace(
        "docs_dir: docs", f"docs_dir: {ROOT / 'docs'}").replace(
        "docs/hooks/benchmarks.py", str(ROOT / "docs" / "hooks" / "benchmarks.py")))
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(copy / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "replay_memory.json" in proc.stdout + proc.stderr
