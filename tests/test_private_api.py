"""Every private API this project uses (pipelines/private_api.py), called against the
installed Hydra, OmegaConf, MLflow and Ray: an upgrade that moves one fails here, by name."""

from __future__ import annotations

import json
import math
import time

import pytest
from omegaconf import MISSING, OmegaConf

from pipelines import private_api
from pipelines.config import CONF_DIR


def test_hydras_argument_parser_reads_hydras_flags():
    args = private_api.hydra_args_parser().parse_args(
        ["--cfg", "job", "-p", "algo", "--resolve", "-m", "algo=dqn", "seed=1"])
    assert (args.cfg, args.package, args.resolve, args.multirun) == ("job", "algo", True, True)
    assert args.overrides == ["algo=dqn", "seed=1"]
    for flag in ("help", "hydra_help", "info", "shell_completion", "config_path",
                 "config_name", "config_dir", "experimental_rerun"):
        assert hasattr(args, flag), flag


def test_hydras_app_shows_the_composed_config(capsys):
    app = private_api.hydra_app(str(CONF_DIR), task_name="rlpipe")
    app.show_cfg(config_name="config", overrides=["algo=dqn"], cfg_type="job",
                 package="algo", resolve=False)
    assert capsys.readouterr().out.startswith("# @package algo")
    app.show_info("defaults", config_name="config", overrides=[])
    assert "algo/q_learning" in capsys.readouterr().out
    assert callable(app.shell_completion)


def test_omegaconfs_nodes_say_missing_and_none_without_resolving():
    cfg = OmegaConf.create({"a": MISSING, "b": None, "c": {"d": 1}, "e": "${c.d}"})
    assert private_api.is_missing(private_api.child_node(cfg, "a"))
    assert private_api.is_none(private_api.child_node(cfg, "b"))
    child = private_api.child_node(cfg, "c")
    assert not private_api.is_missing(child) and not private_api.is_none(child)
    assert child.d == 1


def test_mlflows_system_metrics_monitor_logs_and_resumes_its_steps(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("x"))
    run_id = run.info.run_id
    for resume in (False, True):
        monitor = private_api.system_metrics_monitor(run_id, 0.2, resume, uri)
        monitor.start()
        time.sleep(0.7)
        monitor.finish()
        private_api.log_last_system_sample(monitor)
    history = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    steps = [m.step for m in history]
    # The second monitor went on after the first's last step: no step twice.
    assert len(steps) >= 4 and sorted(steps) == list(range(len(steps))), steps
    assert all(math.isfinite(m.value) for m in history)


def test_mlflows_process_uris_are_set_for_a_block_and_put_back(tmp_path, monkeypatch):
    import mlflow

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    uri = f"sqlite:///{tmp_path / 'store.db'}"
    with private_api.mlflow_store(uri):
        assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == (uri, uri)
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before
    import os

    assert "MLFLOW_REGISTRY_URI" not in os.environ


def test_the_table_artifacts_tag_is_mlflows():
    from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS

    assert private_api.TABLE_ARTIFACTS_TAG == MLFLOW_LOGGED_ARTIFACTS


def test_rays_resources_of_a_local_head_before_it_starts():
    cpus, gpus, memory = private_api.local_resources(2, 0)
    assert (cpus, gpus) == (2.0, 0.0) and memory > 2**28


def test_the_clusters_key_value_store_keeps_notes_by_prefix(ray_session):
    key = "progress/test/trial_a"
    private_api.kv_put(key, json.dumps({"done": 0.25}).encode())
    private_api.kv_put(key, json.dumps({"done": 0.5}).encode())  # overwritten
    assert json.loads(private_api.kv_get(key)) == {"done": 0.5}
    private_api.kv_delete("progress/test/")
    assert private_api.kv_get(key) is None


def test_tunes_pbt_replay_reads_a_members_lineage(tmp_path):
    # Lines as Tune's PBT writes pbt_policy_<trial>.txt (old tag, new tag, old and new
    # iteration, old and new config), one chain as Tune follows it from the end (each
    # earlier line's old tag is the next line's new tag): config a from iteration 3, b
    # from 5, starting from the first line's old config.
    first = {"seed": "3", "algo.lr": 0.16, "algo.epsilon_decay": 0.014}
    a = {"seed": "3", "algo.lr": 0.02, "algo.epsilon_decay": 0.013}
    b = {"seed": "3", "algo.lr": 0.19, "algo.epsilon_decay": 0.011}
    lines = [["2_t", "1_s", 3, 3, first, a], ["0_m", "2_t", 5, 5, a, b]]
    policy = tmp_path / "pbt_policy_x_00000.txt"
    policy.write_text("".join(json.dumps(line) + "\n" for line in lines))
    initial, changes = private_api.pbt_schedule(str(policy))
    assert initial == first
    assert changes == [(3, a), (5, b)]


@pytest.mark.parametrize("name", [n for n in dir(private_api) if callable(
    getattr(private_api, n)) and not n.startswith("_") and getattr(
    private_api, n).__module__ == private_api.__name__])
def test_every_private_api_function_has_a_test_here(name):
    import inspect
    import sys

    source = inspect.getsource(sys.modules[__name__])
    assert f"private_api.{name}(" in source, f"{name} is not exercised by a test"
