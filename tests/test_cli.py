"""Hydra's own habits through the real command line: --cfg job|hydra|all, --resolve,
--package, --info, -m/--multirun, shell completion."""

from __future__ import annotations

import os

import yaml
from mlflow import MlflowClient

from tests.helpers import run_cli, run_in_process, runs_of


def test_cfg_job_hydra_and_all_print_what_hydra_prints_and_run_nothing(workdir):
    job = run_cli("pipelines.train", ["experiment=cartpole_dqn", "--cfg", "job"], workdir)
    assert job.returncode == 0, job.stderr
    cfg = yaml.safe_load(job.stdout)
    assert cfg["algo"]["name"] == "dqn" and cfg["env"]["id"] == "CartPole-v1"
    assert "hydra" not in cfg and not job.ray_started
    assert not (workdir / "mlflow.db").exists()
    hydra = yaml.safe_load(run_in_process("pipelines.train", ["--cfg", "hydra"], workdir).stdout)
    assert list(hydra) == ["hydra"] and hydra["hydra"]["runtime"]["choices"]["algo"] == (
        "q_learning")
    both = yaml.safe_load(run_in_process("pipelines.train", ["--cfg", "all"], workdir).stdout)
    assert {"hydra", "algo", "env"} <= set(both)
    package = run_in_process("pipelines.train", ["--cfg", "job", "-p", "algo", "algo.lr=0.25"],
                             workdir)
    assert package.stdout.startswith("# @package algo") and "lr: 0.25" in package.stdout
    # --resolve resolves interpolations, as Hydra's does
    args = ["experiment=cartpole_reinforce", "tracking.experiment=${algo.name}-x", "--cfg", "job",
            "-p", "tracking"]
    raw = run_in_process("pipelines.train", args, workdir)
    resolved = run_in_process("pipelines.train", [*args, "--resolve"], workdir)
    assert "experiment: ${algo.name}-x" in raw.stdout
    assert "experiment: reinforce-x" in resolved.stdout
    swept = run_in_process("pipelines.sweep", ["sweep=quickstart", "--cfg", "job"], workdir)
    assert swept.stdout.splitlines()[-1] == (
        "# swept: experiment=frozenlake_course,taxi_course algo.lr=0.3,0.7 seed=range(0,2)")


def test_info_prints_hydras_defaults_tree_and_search_path(workdir):
    info = run_in_process("pipelines.train", ["experiment=taxi_course", "--info"], workdir)
    assert info.returncode == 0, info.stderr
    for text in ("Config search path", "Defaults Tree", "experiment: taxi_course"):
        assert text in info.stdout, text
    assert not info.ray_started


def test_train_with_multirun_runs_the_sweep_over_a_config_group(workdir):
    # Hydra's -m sweeps config groups as a sweep does: one trial per option.
    result = run_cli("pipelines.train", [
        "-m", "experiment=frozenlake_course,taxi_course", "algo.episodes=400",
        "algo.report_every=100", "cluster.num_cpus=2", "sweep.name=multi"], workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    _, parents, children = runs_of(client, "sweeps")
    assert len(parents) == 1 and parents[0].info.run_name == "multi"
    assert sorted((c.data.tags["config"], c.data.params["env.id"]) for c in children) == [
        ("experiment=frozenlake_course", "FrozenLake-v1"), ("experiment=taxi_course", "Taxi-v3")]
    assert {c.data.tags["seed"] for c in children} == {"0"}


def test_tab_completion_of_groups_and_keys(workdir):
    def complete(line: str) -> list[str]:
        env = {**os.environ, "COMP_LINE": line}
        return run_cli("pipelines.train", ["-sc", "query=bash"], workdir,
                       env=env).stdout.split()

    assert "experiment=taxi_course" in complete("rlpipe-train experiment=")
    assert "algo.target_update_interval=" in complete("rlpipe-train algo=dqn algo.tar")
