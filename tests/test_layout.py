"""The shape of pipelines/ and benchmarks/, checked: the layers import only downward, no
file or function grows past its limit, and every logged series is named in one place."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60
SOURCES = sorted([*ROOT.glob("pipelines/**/*.py"), *ROOT.glob("benchmarks/*.py")])
LAYERS = {
    "pipelines.private_api": 0, "pipelines.config": 1, "pipelines.cluster": 2,
    "pipelines.tracking": 2, "pipelines.results": 3, "pipelines.tune": 4,
}
"""Each room's floor: a module imports from its own room or from rooms on lower floors
(cluster and tracking, side by side, not from each other). The entry points (the modules
at the top of pipelines/) and benchmarks/ stand on all of them."""
SERIES_PREFIXES = ("train/", "eval/", "test/", "loss/", "perf/", "hp/", "pbt/", "best/",
                   "system/", "rlpipe/")
SERIES_HOMES = {ROOT / "algos/core/metrics.py", ROOT / "pipelines/tracking/series.py"}
"""Where the logged series are named: the algorithms' and the pipelines'."""


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def room(module: str) -> str | None:
    """The room (sub-package, or private_api) a pipelines module lives in; None for the
    entry points and anything outside pipelines."""
    parts = module.split(".")
    name = ".".join(parts[:2])
    return name if name in LAYERS else None


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of a pipelines module in `path`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] if node.module != "pipelines" else [
                f"pipelines.{a.name}" for a in node.names]
            out += [(node.lineno, n) for n in names if n.startswith("pipelines")]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("pipelines")]
    return out


def upward_imports(path: Path) -> list[str]:
    """The imports of `path` that reach a room above its own, or beside it."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    own = room(module)
    if own is None:
        return []
    out = []
    for line, target in imports(path):
        other = room(target)
        if other is None and target.startswith("pipelines"):
            out.append(f"{line}: {target} (an entry point)")
        elif other is not None and other != own and LAYERS[other] >= LAYERS[own]:
            out.append(f"{line}: {target}")
    return out


@pytest.mark.parametrize("path", SOURCES, ids=rel)
def test_a_module_imports_only_from_its_room_and_the_floors_below(path):
    assert upward_imports(path) == []


def test_the_layer_check_finds_an_upward_import(tmp_path):
    folder = tmp_path / "pipelines" / "config"
    folder.mkdir(parents=True)
    path = folder / "x.py"
    path.write_text("from pipelines.tune.trial import run_trial\nfrom pipelines import train\n"
                    "from pipelines.config.schema import ClusterConfig\n")
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        assert upward_imports(path) == ["1: pipelines.tune.trial",
                                        "2: pipelines.train (an entry point)"]
    finally:
        ROOT = saved


@pytest.mark.parametrize("path", SOURCES, ids=rel)
def test_no_file_is_longer_than_the_limit(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_FILE_LINES, f"{rel(path)}: {lines} lines"


def long_functions(path: Path) -> list[str]:
    """The functions of `path` longer than MAX_FUNCTION_LINES: 'name: lines'."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                out.append(f"{node.name}: {lines}")
    return out


@pytest.mark.parametrize("path", SOURCES, ids=rel)
def test_no_function_is_longer_than_the_limit(path):
    assert long_functions(path) == []


def series_literals(path: Path) -> list[str]:
    """String literals of `path`, docstrings aside, that spell a logged series."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    return [f"{node.lineno}: {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings and node.value.startswith(SERIES_PREFIXES)]


@pytest.mark.parametrize("path", [p for p in SOURCES if p not in SERIES_HOMES], ids=rel)
def test_every_logged_series_is_named_in_its_home(path):
    assert series_literals(path) == []


def test_the_series_check_finds_a_literal(tmp_path):
    path = tmp_path / "x.py"
    path.write_text('"""Logs perf/x."""\nKEY = "perf/trial_setup_s"\n'
                    'def f(k):\n    """eval/score"""\n    return {f"pbt/{k}": 1}\n')
    assert series_literals(path) == ["2: 'perf/trial_setup_s'", "5: 'pbt/'"]


TEST_TOOLS = {"tests.helpers", "tests.ray_cluster", "tests.fault_env"}
"""What a test module may import from tests/: the shared helpers, the multi-node cluster
harness, and the faulty envs (the fixtures come from conftest.py without an import)."""


@pytest.mark.parametrize("path", sorted(ROOT.glob("tests/*.py")), ids=rel)
def test_no_test_module_imports_another(path):
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                 [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        found += [n for n in names if n.startswith("tests.") and n not in TEST_TOOLS]
    assert found == []
