"""The device session's script (benchmarks/gpu_session.sh), rehearsed on this CPU machine
with tiny counts: every step runs and leaves its files, as one device call would."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from tests.helpers import ROOT, cli_env

SCRIPTS = ("benchmarks/gpu_session.sh", "benchmarks/gpu_bundle.sh")
STEPS = ("imports", "pytest -m gpu", "train", "run", "evaluate", "atari_result", "throughput")
"""The steps of benchmarks/gpu_session.sh that log an exit line, in order."""


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_device_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(ROOT / script)]).returncode == 0


def test_a_failed_step_fails_the_session_after_every_step_ran(tmp_path):
    # A Python that fails at once: every step runs, logs its exit, and the script ends
    # with 1, naming each step that failed, so that the device call's rc says so.
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "OUT": str(out), "PY": "/bin/false"}
    proc = subprocess.run(["bash", "benchmarks/gpu_session.sh"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    session = (out / "session.log").read_text()
    assert proc.returncode == 1, session
    assert [m[1] for m in re.finditer(r"\] ([\w -]+): exit 1\b", session)] == [
        "imports", "pytest -m gpu", "train", "run", "throughput"], session
    assert session.rstrip().endswith(
        "] done; failed: imports pytest -m gpu train run throughput"), session


@pytest.mark.slow  # about 4 minutes: 3,000 Space Invaders steps, their evaluation, Pong
def test_the_gpu_session_runs_every_step_on_a_cpu(tmp_path):
    out = tmp_path / "out"
    checked_in = ROOT / "benchmarks" / "results" / "pong_dqn_throughput.json"
    before = checked_in.stat().st_mtime_ns
    env = {**cli_env(Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))), "OUT": str(out),
           "PY": sys.executable, "SI_STEPS": "3000", "SI_STARTS": "1000", "WORKERS": "1",
           "ENVS": "2", "GPUS_PER_TRIAL": "0", "TP_STEPS": "1000", "TP_STARTS": "1000"}
    env.pop("PYTHONPATH")  # as on the device: the script makes the checkout importable
    proc = subprocess.run(["bash", "benchmarks/gpu_session.sh"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    session = (out / "session.log").read_text()
    assert proc.returncode == 0 and "done" in session, session + proc.stderr[-2000:]
    # Each step logs its end: "[hh:mm:ss] <step>: exit <status> <what it printed last>".
    # The script goes on past a failed step: every one of them exited 0, in order.
    ends = [(m["step"], int(m["status"]), m["last"]) for m in re.finditer(
        r"^\[\d\d:\d\d:\d\d\] (?P<step>[\w -]+): exit (?P<status>\d+) ?(?P<last>.*)$",
        session, re.MULTILINE)]
    assert [(step, status) for step, status, _ in ends] == [
        (step, 0) for step in STEPS], session + proc.stderr[-2000:]
    last = {step: text for step, _, text in ends}
    assert re.fullmatch(r"\(torch \S+ cuda (True|False) ray \S+ mlflow \S+ gymnasium \S+\)",
                        last["imports"]), last["imports"]
    # pytest's summary: the GPU tests ran (skipped without CUDA), none failed or errored.
    summary = re.fullmatch(r"\((.+) in [\d.]+s( \([\d:]+\))?\)", last["pytest -m gpu"])
    outcomes = {word for _, word in re.findall(r"(\d+) (\w+)", summary[1] if summary else "")}
    assert outcomes & {"passed", "skipped"} and outcomes <= {
        "passed", "skipped", "deselected", "warning", "warnings"}, last["pytest -m gpu"]
    assert int(re.fullmatch(r"\((\d+) status lines\)", last["train"])[1]) >= 1, last["train"]
    assert re.fullmatch(r"\([0-9a-f]{32}\)", last["run"]), last["run"]  # the trained run
    evaluation = json.loads(last["evaluate"])  # pipelines.evaluate's one JSON line
    assert evaluation["model"].startswith("models:/"), evaluation
    assert session.rstrip().splitlines()[-1].endswith("] done"), session[-500:]
    # Every file of the call comes back: 8 at most, none in a subfolder.
    files = sorted(p.name for p in out.iterdir())
    assert files == ["pong_dqn_throughput.json", "pytest_gpu.log", "session.log",
                     "space_invaders_dqn.json", "space_invaders_dqn.png",
                     "space_invaders_dqn_best_model.tar.gz", "space_invaders_train.log",
                     "throughput.log"], files
    result = json.loads((out / "space_invaders_dqn.json").read_text())["runs"][-1]["data"]
    assert result["env_steps"] >= 3000 and result["status"] == "FINISHED"
    assert result["best_model_evaluation"]["model"].startswith("models:/")
    assert "experiment=space_invaders_dqn" in result["train_command"]
    with tarfile.open(out / "space_invaders_dqn_best_model.tar.gz") as tar:
        assert any(n.endswith("MLmodel") for n in tar.getnames())
    modes = json.loads((out / "pong_dqn_throughput.json").read_text())["runs"][-1]["data"]
    assert set(modes["modes"]) == {"cpu", "learner"}
    # The results went to the call's folder, not into the checkout's.
    assert checked_in.stat().st_mtime_ns == before
