"""Every private API this project uses (pipelines/private_api.py), called against the
installed Hydra, OmegaConf, MLflow and Ray: an upgrade that moves one fails here, by name.
And the fence: no other module of pipelines/ or benchmarks/ reads another library's
private attribute or imports its private module."""

from __future__ import annotations

import ast
import functools
import inspect
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import pytest
from omegaconf import MISSING, OmegaConf

from pipelines import private_api
from pipelines.config.compose import CONF_DIR

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = sorted(name for name, f in vars(private_api).items()
                   if inspect.isfunction(f) and f.__module__ == private_api.__name__
                   and not name.startswith("_"))
CALLED: set[str] = set()
"""The functions of private_api the tests of this module called."""


@pytest.fixture(autouse=True, scope="module")
def record_calls():
    """Every private_api function, wrapped for this module's tests to note its calls."""
    originals = {name: getattr(private_api, name) for name in FUNCTIONS}

    def recorder(name, f):
        @functools.wraps(f)
        def called(*args, **kwargs):
            CALLED.add(name)
            return f(*args, **kwargs)
        return called

    for name, f in originals.items():
        setattr(private_api, name, recorder(name, f))
    yield
    for name, f in originals.items():
        setattr(private_api, name, f)


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
        assert private_api.log_last_system_sample(monitor) == 0  # nothing left unsent
    history = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    steps = [m.step for m in history]
    # The second monitor went on after the first's last step: no step twice, none lost.
    assert len(steps) >= 4 and sorted(steps) == list(range(len(steps))), steps
    assert private_api.system_steps_taken(monitor) == len(steps)
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


def test_tunes_pbt_keeps_each_members_last_time_and_its_lockstep(ray_session, tmp_path):
    # A real, small PBT run of two members on one slot: each time a slot frees, the fair
    # scheduler reads what PBT keeps of every member through private_api.
    from ray import tune

    from pipelines.tune.fair_pbt import FairPopulationBasedTraining

    seen: list[tuple[bool, float, list[float]]] = []

    class Watched(FairPopulationBasedTraining):
        def choose_trial_to_run(self, tune_controller):
            trials = tune_controller.get_trials()
            seen.append((private_api.pbt_synchronous(self), private_api.pbt_next_sync(self),
                         [private_api.pbt_last_train_time(self, t) for t in trials]))
            return super().choose_trial_to_run(tune_controller)

    def trainable(config):
        start = 0
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                start = int((Path(folder) / "i").read_text())
        for i in range(start + 1, 5):
            with tempfile.TemporaryDirectory() as folder:
                (Path(folder) / "i").write_text(str(i))
                tune.report({"score": config["lr"] * i},
                            checkpoint=tune.Checkpoint.from_directory(folder))

    scheduler = Watched(time_attr="training_iteration", perturbation_interval=2, synch=True,
                        hyperparam_mutations={"lr": tune.uniform(0.1, 1.0)})
    # One slot: each member takes both CPUs of the session's Ray. (max_concurrent_trials=1
    # would not make the second member until the first had ended: no population, and
    # nothing to exploit.)
    results = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 2}), param_space={"lr": tune.uniform(0.1, 1.0)},
        tune_config=tune.TuneConfig(metric="score", mode="max", scheduler=scheduler,
                                    num_samples=2, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0)).fit()
    assert [r.metrics["training_iteration"] for r in results] == [4, 4]
    # The lower member exploited the other (Tune logs each exploit as a line of
    # pbt_global.txt: target, donor, their iterations, the donor's config, the explored
    # one), and explored from the donor's lr.
    exploits = [json.loads(line) for path in tmp_path.glob("*/pbt_global.txt")
                for line in path.read_text().splitlines()]
    assert exploits, "no member exploited"
    assert all(target != donor and new["lr"] != old["lr"]
               for target, donor, _, _, old, new in exploits), exploits
    assert seen and all(lockstep for lockstep, _, _ in seen)
    assert all(time <= 0 for time in seen[0][2])  # nobody had reported yet
    assert max(max(times) for _, _, times in seen) >= 2  # a member's report, as PBT kept it
    assert seen[-1][1] >= 4  # the next sync moved on past the first interval


def test_tunes_repeater_keeps_a_group_per_repeated_configuration():
    from ray import tune
    from ray.tune.search import Repeater
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(space={"x": tune.uniform(0, 1)}, metric="m", mode="max", seed=0)
    repeater = Repeater(searcher, repeat=2, set_index=True)
    first, second = repeater.suggest("t1"), repeater.suggest("t2")
    assert first["x"] == second["x"]  # one configuration, twice
    group = private_api.repeater_group(repeater, "t1")
    assert group is private_api.repeater_group(repeater, "t2")
    assert private_api.repeater_group_trials(group) == ["t1", "t2"]
    assert private_api.repeater_group(repeater, "unknown") is None


def test_optunas_study_comes_back_from_the_searcher_state_tune_saves(tmp_path):
    # Saved as Tune saves a run's searcher: two trials told, one asked and not told.
    from optuna.trial import TrialState
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch(space={"x": tune.uniform(0, 1)}, metric="m", mode="max", seed=0)
    told = []
    for trial_id, value in (("t1", 3.5), ("t2", -1.25)):
        x = searcher.suggest(trial_id)["x"]
        searcher.on_trial_complete(trial_id, {"m": value})
        told.append((x, value))
    searcher.suggest("t3")
    searcher.save_to_dir(str(tmp_path), session_str="2026-12-07_01-00-00")
    study = private_api.optuna_study(str(tmp_path))
    assert [(t.params["x"], t.value) for t in study.trials[:2]] == told
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.RUNNING]


def test_the_scheduler_a_tuner_pickled_beside_its_run(tmp_path):
    from ray import tune

    from pipelines.tune.fair_pbt import FairPB2

    scheduler = FairPB2(time_attr="training_iteration", perturbation_interval=2,
                        hyperparam_bounds={"lr": [0.01, 1.0]})
    tune.Tuner(lambda config: None, param_space={"lr": tune.uniform(0.01, 1.0)},
               tune_config=tune.TuneConfig(metric="score", mode="max", scheduler=scheduler),
               run_config=tune.RunConfig(storage_path=str(tmp_path), name="run"))
    found = private_api.tuner_scheduler(str(tmp_path / "run"))
    assert type(found) is FairPB2 and found is not scheduler  # unpickled from the file
    assert private_api.pbt_synchronous(found) is False


ALLOWED = {("os", "_exit")}
"""Names with a leading underscore that are public API (os._exit)."""


@functools.cache
def own_private_names() -> frozenset[str]:
    """Underscored names the project itself defines (functions, classes, attributes it
    assigns, module constants): reading those is not reading another library's."""
    names = set()
    for path in [*ROOT.glob("algos/**/*.py"), *ROOT.glob("pipelines/**/*.py"),
                 *ROOT.glob("benchmarks/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name.startswith("_"):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "setdefault" \
                    and node.args and isinstance(node.args[0], ast.Constant):
                names.add(str(node.args[0].value))
    return frozenset(n for n in names if n.startswith("_"))


def private_reads(path: Path, own: set[str]) -> list[str]:
    """Where a module reads another library's private attribute or imports its private
    module: 'line: what'."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                and not node.attr.startswith("__") and node.attr not in own:
            owner = node.value.id if isinstance(node.value, ast.Name) else "?"
            if (owner, node.attr) not in ALLOWED:
                out.append(f"{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module and any(
                part.startswith("_") and not part.startswith("__")
                for part in node.module.split(".")):
            out.append(f"{node.lineno}: from {node.module}")
        elif isinstance(node, ast.ImportFrom) and any(
                a.name.startswith("_") and a.name not in own for a in node.names):
            out.append(f"{node.lineno}: import of {[a.name for a in node.names]}")
        elif isinstance(node, ast.Import) and any(
                part.startswith("_") for a in node.names for part in a.name.split(".")):
            out.append(f"{node.lineno}: import {[a.name for a in node.names]}")
    return out


def test_the_fence_finds_a_private_read():
    # The checker itself: the old fair_pbt's and seed_repeater's reads are caught.
    code = ("def f(self, t, group):\n    return self._synch, self._trial_state[t], "
            "group._trials\nfrom ray._private.utils import x\n")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(code)
    found = private_reads(Path(f.name), own_private_names())
    assert sorted(line.split(": ")[1] for line in found) == [
        "._synch", "._trial_state", "._trials", "from ray._private.utils"], found


@pytest.mark.parametrize("path", sorted(
    p.relative_to(ROOT) for p in [*ROOT.glob("pipelines/**/*.py"), *ROOT.glob("benchmarks/*.py")]
    if p.name != "private_api.py"), ids=str)
def test_no_other_module_reads_a_private_attribute(path):
    assert private_reads(ROOT / path, own_private_names()) == []


@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_private_api_function_is_called_by_a_test_here(name, request):
    # Last in the module: the recorder saw every test above. Calling, not naming, counts.
    module = sys.modules[__name__]
    defined = {n for n in vars(module) if n.startswith("test_")
               and n != "test_every_private_api_function_is_called_by_a_test_here"}
    selected = {item.originalname for item in request.session.items
                if getattr(item, "module", None) is module}
    if not defined <= selected:
        pytest.skip("only when every test of this module runs")
    assert name in CALLED, f"private_api.{name} is called by no test of this module"
