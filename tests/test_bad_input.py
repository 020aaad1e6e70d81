"""Bad input: exit 2, one line naming the key and what is allowed, no traceback, no Ray
started, no MLflow run made. Every case runs in-process through the entry point's main();
a few through the real command line too."""

from __future__ import annotations

import pytest

from tests.helpers import free_port, run_cli

TRAIN, SWEEP, EVALUATE = "pipelines.train", "pipelines.sweep", "pipelines.evaluate"
REPORT = "pipelines.report"

CASES = [
    # (entry point, args, text the one line must contain)
    (TRAIN, ["algo=foo"], ["algo=foo", "unknown option", "q_learning"]),
    (TRAIN, ["env=nope"], ["env=nope", "frozenlake", "taxi"]),
    (TRAIN, ["experiment=nope"], ["experiment=nope", "taxi_course"]),
    (TRAIN, ["algo.foo=1"], ["algo.foo", "unknown key"]),
    (TRAIN, ["+algo.zzz=3"], ["algo.zzz", "unknown key", "lr"]),
    (TRAIN, ["foo=1"], ["foo", "unknown key"]),
    (TRAIN, ["algo.lr=abc"], ["algo.lr=abc", "Float"]),
    (TRAIN, ["seed=abc"], ["seed=abc", "Integer"]),
    (TRAIN, ["algo.lr=-1"], ["algo.lr", "must be > 0"]),
    (TRAIN, ["algo.gamma=1.5"], ["algo.gamma", "(0.0, 1.0]"]),
    (TRAIN, ["algo.epsilon_start=2"], ["algo.epsilon_start", "[0.0, 1.0]"]),
    (TRAIN, ["algo.episodes=0"], ["algo.episodes", ">= 1"]),
    (TRAIN, ["experiment=pong_dqn", "algo.rollout_steps=-1"], ["algo.rollout_steps", ">= 0"]),
    (TRAIN, ["algo.eval_seeds=[1,2]"], ["algo.eval_seeds", "eval_episodes=100"]),
    (TRAIN, ["env.id=NoSuchEnv-v0"], ["env.id=NoSuchEnv-v0", "doesn't exist"]),
    (TRAIN, ["env=taxi", "env.id=CartPole-v1"], ["algo=q_learning", "CartPole-v1", "discrete"]),
    (TRAIN, ["algo=monte_carlo", "env=cartpole"], ["algo=monte_carlo", "CartPole-v1",
                                                   "discrete"]),
    (TRAIN, ["algo=monte_carlo", "algo.lr=1.5"], ["algo.lr", "(0.0, 1.0]"]),
    (TRAIN, ["algo=monte_carlo", "algo.lr=0"], ["algo.lr", "(0.0, 1.0]"]),
    (TRAIN, ["algo=monte_carlo", "algo.first_visit=maybe"], ["algo.first_visit=maybe",
                                                            "not a valid bool"]),
    (TRAIN, ["algo=reinforce", "env=cartpole", "algo.lr_end=-0.1"], ["algo.lr_end", ">= 0"]),
    (TRAIN, ["+env.kwargs.wind=3"], ["env.kwargs", "gym.make"]),
    (TRAIN, ["env=frozenlake", "env.kwargs.map_name=9x9"], ["env.kwargs=", "KeyError: '9x9'"]),
    (TRAIN, ["cluster=remote", "cluster.address=127.0.0.1:1"],
     ["cluster.address=127.0.0.1:1", "nothing answers there"]),
    (TRAIN, ["cluster=remote", "cluster.address=nohost"], ["cluster.address=nohost",
                                                           "not host:port"]),
    (TRAIN, ["cluster=remote", "cluster.address=ray://127.0.0.1:1"],
     ["cluster.address=ray://127.0.0.1:1", "nothing answers there"]),
    (TRAIN, ["algo.lr=0.1,0.2"], ["algo.lr=0.1,0.2", "pipelines.sweep"]),
    (TRAIN, ["replay=nosuch/t1"], ["replay=nosuch/t1", "no sweep nosuch"]),
    (TRAIN, ["replay=nosuch/t1", "algo.lr=0.1"], ["algo.lr=0.1", "only cluster.* and "
                                                   "progress.*"]),
    (TRAIN, ["tracking.uri=bogus"], ["tracking.uri=bogus", "sqlite:///"]),
    (TRAIN, ["cluster=remote"], ["cluster.address", "required with cluster=remote"]),
    (TRAIN, ["cluster.cpus_per_trial=-1"], ["cluster.cpus_per_trial", ">= 0"]),
    (TRAIN, ["--bogus"], ["--bogus", "unknown flag"]),
    (TRAIN, ["cluster.address=127.0.0.1:6379"], ["cluster.address", "only with cluster=remote"]),
    (TRAIN, ["env=cartpole", "algo=dqn", "env.episodic_life=true"],
     ["env.episodic_life", "only with kind=atari"]),
    (TRAIN, ["cluster=remote", "cluster.address=h:1", "cluster.num_cpus=4"],
     ["cluster.num_cpus=4", "only with cluster=local"]),
    (TRAIN, ["cluster.gpus_per_trial=1.5"], ["cluster.gpus_per_trial=1.5", "whole number"]),
    # Trials no cluster could ever hold: refused before Ray starts, never left PENDING.
    (TRAIN, ["algo=dqn", "env=cartpole", "algo.num_rollout_workers=64"],
     ["algo.num_rollout_workers=64 with cluster.cpus_per_trial=1", "needs 65 CPUs",
      "cluster.num_cpus=65"]),
    (TRAIN, ["experiment=pong_dqn", "cluster.num_cpus=2"],
     ["algo.num_rollout_workers=2", "needs 3 CPUs", "cluster.num_cpus=2 has 2",
      "cluster.num_cpus=3 to oversubscribe"]),
    (TRAIN, ["algo=dqn", "env=cartpole", "cluster.num_gpus=0", "cluster.gpus_per_trial=1"],
     ["cluster.gpus_per_trial=1", "needs 1 GPU", "has 0 GPUs", "cluster.gpus_per_trial=0"]),
    # Resources that cannot work: known before Ray starts.
    (TRAIN, ["algo=dqn", "env=cartpole", "algo.buffer_size=100000000000"],
     ["algo.buffer_size=100000000000", "replay memory needs 4,190.95 GiB", "lower"]),
    (TRAIN, ["algo=dqn", "env=cartpole", "algo.max_worker_restarts=-1"],
     ["algo.max_worker_restarts", ">= 0"]),
    (TRAIN, ["cluster.storage_path=/proc/nope"], ["cluster.storage_path=/proc/nope",
                                                   "cannot write there"]),
    (TRAIN, ["cluster.storage_path=ftp://host/x"], ["cluster.storage_path=ftp://host/x",
                                                     "s3://"]),
    (EVALUATE, [], ["evaluate.model", "required"]),
    (EVALUATE, ["evaluate.model=foo"], ["evaluate.model=foo", "not a model URI", "models:/"]),
    (EVALUATE, ["evaluate.model=models:/x", "evaluate.run_id=y"], ["evaluate.run_id", "not both"]),
    (EVALUATE, ["evaluate.run_id=abc"], ["tracking.uri=sqlite:///", "no MLflow store"]),
    (EVALUATE, ["evaluate.run_id=abc", "evaluate.episodes=0"], ["evaluate.episodes", "> 0"]),
    (EVALUATE, ["-m", "evaluate.run_id=abc"], ["-m/--multirun", "pipelines.sweep"]),
    (REPORT, [], ["report.sweep", "required"]),
    (REPORT, ["report.sweep=x"], ["tracking.uri=sqlite:///", "no MLflow store"]),
    (TRAIN, ["--cfg", "jobs"], ["--cfg", "invalid choice: 'jobs'", "'job', 'hydra', 'all'"]),
    (TRAIN, ["--resolve"], ["--resolve", "with --cfg"]),
    (TRAIN, ["progress.tune_verbose=5"], ["progress.tune_verbose", "0, 1, 2, 3"]),
    (SWEEP, ["experiment=frozenlake_course", "experiment=frozenlake_course,taxi_course"],
     ["experiment: given a value (experiment=frozenlake_course) and a sweep", "give one"]),
    (SWEEP, ["progress.every_s=1,2"], ["progress", "cannot be swept"]),
    (SWEEP, ["sweep=nope"], ["sweep=nope", "quickstart"]),
    (SWEEP, ["algo.lr=interval(0.1"], ["algo.lr=interval(0.1", "not a valid override"]),
    (SWEEP, ["algo.lr=interval(-1,1)"], ["algo.lr", "must be > 0"]),
    (SWEEP, ["algo=q_learning,foo"], ["algo=foo", "unknown option"]),
    (SWEEP, ["algo.gamma=0.5,1.5"], ["algo.gamma", "(0.0, 1.0]", "algo.gamma=1.5"]),
    (SWEEP, ["sweep.search=grid", "algo.lr=interval(0.1,0.5)"], ["sweep.search=grid", "algo.lr"]),
    (SWEEP, ["sweep.search=bayes"], ["sweep.search", "optuna"]),
    (SWEEP, ["sweep.scheduler.name=hyperbandit"], ["sweep.scheduler.name", "asha", "pbt"]),
    # Schedulers and searches over seeds (pipelines/tune/schedulers.py).
    (SWEEP, ["sweep=taxi_pbt", "sweep.scheduler.quantile_fraction=0.7"],
     ["sweep.scheduler.quantile_fraction=0.7", "(0.0, 0.5]"]),
    (SWEEP, ["sweep=taxi_pbt", "sweep.scheduler.perturbation_interval=0"],
     ["sweep.scheduler.perturbation_interval", "must be > 0 with name=pbt"]),
    (SWEEP, ["sweep.scheduler.name=pbt", "sweep.scheduler.perturbation_interval=10"],
     ["sweep.scheduler.mutations", "needs at least one mutable key"]),
    (SWEEP, ["sweep=taxi_pbt", "+sweep.scheduler.mutations={algo.episodes: 'interval(1,9)'}"],
     ["sweep.scheduler.mutations.algo.episodes", "cannot change during a q_learning run",
      "algo.lr"]),
    (SWEEP, ["sweep=taxi_pbt", "+sweep.scheduler.mutations={env.id: 'choice(a,b)'}"],
     ["sweep.scheduler.mutations.env.id", "cannot change"]),
    (SWEEP, ["sweep=taxi_pbt", "algo.lr=0.1,0.5"],
     ["sweep.params.algo.lr", "also a mutation"]),
    (SWEEP, ["sweep=taxi_pbt", "sweep.search=optuna"],
     ["sweep.search=optuna", "takes no searcher"]),
    (SWEEP, ["sweep=taxi_pbt", "sweep.scheduler.name=pb2",
             "+sweep.scheduler.mutations={algo.gamma: 'choice(0.9,0.95)'}"],
     ["sweep.scheduler.mutations.algo.gamma", "pb2 explores intervals only"]),
    (SWEEP, ["sweep=taxi_pbt", "sweep.metric=train/nope"],
     ["sweep.metric=train/nope", "does not report it", "eval/score"]),
    (SWEEP, ["experiment=cartpole_dqn", "algo.lr=0.001,0.0001", "sweep.scheduler.name=median",
             "sweep.scheduler.time_attr=train/episodes"],
     ["sweep.scheduler.time_attr=train/episodes", "dqn does not report it"]),
    (SWEEP, ["sweep=taxi_optuna", "sweep.seeds_per_config=0"],
     ["sweep.seeds_per_config", ">= 1"]),
    (SWEEP, ["sweep=taxi_optuna", "sweep.seeds_per_config=3", "seed=range(0,3)"],
     ["sweep.seeds_per_config=3", "seed is swept too"]),
    (SWEEP, ["sweep=quickstart", "sweep.seeds_per_config=3"],
     ["sweep.seeds_per_config", "search=random, optuna or bohb"]),
    (SWEEP, ["sweep=taxi_optuna", "sweep.search=bohb"],
     ["sweep.scheduler.name", "search=bohb and scheduler.name=bohb go together"]),
    (SWEEP, ["sweep.mode=maximize"], ["sweep.mode", "max, min"]),
    (SWEEP, ["tracking.uri=http://127.0.0.1:1,2"], ["tracking", "cannot be swept"]),
    (SWEEP, ["resume=no-such-sweep"], ["resume=no-such-sweep", "no sweep of that name"]),
    (SWEEP, ["algo.lr=interval(1,0)"], ["algo.lr", "low < high"]),
    (SWEEP, ["sweep.params.algo.lr=interval(1,0)"], ["sweep.params", "cannot be swept"]),
    (SWEEP, ["algo=dqn", "env=cartpole", "algo.num_rollout_workers=0,64"],
     ["needs 65 CPUs", "(in the trial algo.num_rollout_workers=64)"]),
]


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if anything calls ray.init: bad input must not start Ray."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", refuse)


def in_process(module: str, args: list[str], workdir, monkeypatch, capsys):
    """The entry point's main(args) in this process, in `workdir`: (exit code, stderr)."""
    import importlib

    monkeypatch.chdir(workdir)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)
    code = importlib.import_module(module).main(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "module,args,expected", CASES, ids=[f"{m.split('.')[1]}:{' '.join(a)}" for m, a, _ in CASES]
)
def test_bad_input_exits_2_with_one_clear_line(workdir, module, args, expected, monkeypatch,
                                               capsys, no_ray):
    code, err = in_process(module, args, workdir, monkeypatch, capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for text in expected:
        assert text in lines[0], lines[0]
    assert not (workdir / "mlflow.db").exists(), "an MLflow store was written"
    assert not (workdir / "ray_results").exists()


THROUGH_THE_COMMAND_LINE = [
    # A few of the refusals through the real process: no traceback, nothing else printed
    # (Ray's, ale-py's or gymnasium's own output included), no Ray session, within seconds.
    (TRAIN, ["algo=foo"], ["algo=foo", "unknown option", "q_learning"]),
    (TRAIN, ["experiment=pong_dqn", "cluster.num_cpus=2"], ["needs 3 CPUs"]),
    (TRAIN, ["env=frozenlake", "env.kwargs.map_name=9x9"],
     ["env.kwargs=", "gym.make('FrozenLake-v1') refused: KeyError: '9x9'"]),
    (TRAIN, ["cluster=remote", f"cluster.address=127.0.0.1:{free_port()}"],
     ["cluster.address=127.0.0.1:", "nothing answers there", "ray start --head"]),
    (SWEEP, ["algo.gamma=0.5,1.5"], ["algo.gamma", "(0.0, 1.0]", "algo.gamma=1.5"]),
    (EVALUATE, ["evaluate.model=foo"], ["evaluate.model=foo", "not a model URI"]),
]


@pytest.mark.parametrize("module,args,expected", THROUGH_THE_COMMAND_LINE,
                         ids=[f"{m.split('.')[1]}:{' '.join(a)}"
                              for m, a, _ in THROUGH_THE_COMMAND_LINE])
def test_bad_input_through_the_command_line_starts_nothing(workdir, module, args, expected):
    import time

    started = time.monotonic()
    result = run_cli(module, args, workdir, timeout=120)
    assert time.monotonic() - started < 30  # refused at once, not after Ray's retries
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert not result.ray_started, "Ray was started"
    assert not (workdir / "mlflow.db").exists(), "an MLflow store was written"
    assert not (workdir / "ray_results").exists()


def test_unreachable_tracking_server_exits_2_before_anything_starts(workdir):
    uri = f"http://127.0.0.1:{free_port()}"
    result = run_cli(TRAIN, [f"tracking.uri={uri}"], workdir, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: tracking.uri={uri}: no MLflow server answers")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not result.ray_started
    assert not (workdir / "ray_results").exists()
