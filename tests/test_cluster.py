"""Clusters, with real processes on this machine: multi-node Ray clusters started with
`ray start` (token authentication on), one node without the project, a node killed
mid-sweep, a real MLflow server; and the refusals of trials no cluster could hold."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.helpers import assert_no_step_twice, cli_env, run_cli, runs_of
from tests.ray_cluster import ROOT, LocalCluster

TAXI = ["experiment=taxi_course", "algo.episodes=4000", "algo.report_every=500"]


@pytest.fixture(scope="module")
def two_hosts():
    """A head (1 CPU) and a node (1 CPU) that Ray sees on another host (127.0.0.2), run
    from its own directory by a Python that cannot import the project."""
    with LocalCluster(head_cpus=1) as cluster:
        cluster.add_node("bare", num_cpus=1, ip="127.0.0.2", bare=True)
        yield cluster


def remote(cluster: LocalCluster) -> list[str]:
    return ["cluster=remote", f"cluster.address={cluster.address}"]


@pytest.mark.slow  # 30 s: a sweep shipped to a bare node
def test_a_sweep_runs_on_both_hosts_and_ships_the_code_to_the_bare_node(
    two_hosts, mlflow_server, workdir
):
    bare_env = {k: v for k, v in two_hosts.env.items() if k != "PYTHONPATH"}  # the node's
    bare = subprocess.run([str(two_hosts.bare_python), "-c", "import algos"],
                          capture_output=True, cwd=two_hosts.dir, env=bare_env)
    assert bare.returncode != 0, "the bare node's Python imports the project"
    result = run_cli("pipelines.sweep", [
        *TAXI, "seed=range(0,4)", *remote(two_hosts), f"tracking.uri={mlflow_server}",
        "tracking.experiment=two-hosts", "sweep.name=two-hosts",
    ], workdir, env=two_hosts.env, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "is a local path on a cluster of 2 hosts" in result.stderr
    client = MlflowClient(mlflow_server)
    _, parents, children = runs_of(client, "two-hosts")
    assert len(parents) == 1 and len(children) == 4
    assert all(c.info.status == "FINISHED" for c in children)
    ips = Counter(c.data.tags["ray.node_ip"] for c in children)
    assert "127.0.0.2" in ips and len(ips) == 2, ips
    assert all(c.data.tags["host"] and c.data.tags["ray.node_id"] for c in children)
    assert all("system/cpu_utilization_percentage" in c.data.metrics for c in children)
    tags = parents[0].data.tags
    assert (tags["cluster.nodes"], tags["cluster.hosts"], tags["cluster.cpus"]) == ("2", "2", "2")
    assert "cluster.json" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}


REFUSED = [
    (["algo=dqn", "env=cartpole", "algo.num_rollout_workers=2"],
     ["algo.num_rollout_workers=2 with cluster.cpus_per_trial=1", "needs 3 CPUs",
      "offers 2 (2 nodes: 1 + 1 CPUs)", "cluster.autoscaling=true"]),
    (["algo=dqn", "env=cartpole", "cluster.gpus_per_trial=0.5"],
     ["cluster.gpus_per_trial=0.5", "at most 0 GPUs on one node", "cluster.gpus_per_trial=0"]),
    (["experiment=taxi_course"],
     ["tracking.uri=sqlite:///", "span 2 hosts", "127.0.0.2", "tracking.uri=http://"]),
]


@pytest.mark.slow  # 40 s with the two-host cluster; test_bad_input refuses on one machine
@pytest.mark.parametrize("args,expected", REFUSED, ids=["cpus", "gpus", "sqlite"])
def test_what_a_cluster_cannot_run_is_refused_before_any_trial(
    two_hosts, mlflow_server, workdir, args, expected
):
    tracking = [] if "sqlite" in expected[0] else [f"tracking.uri={mlflow_server}",
                                                  "tracking.experiment=refused"]
    result = run_cli("pipelines.train", [*args, *remote(two_hosts), *tracking], workdir,
                     env=two_hosts.env, timeout=200)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    assert not (workdir / "mlflow.db").exists() and not (workdir / "ray_results").exists()
    assert MlflowClient(mlflow_server).get_experiment_by_name("refused") is None


KILLED_SWEEPS = {
    # Trials of about 10 s, 20 reports each, every report checkpointed and written.
    "plain": ["experiment=taxi_course", "algo.episodes=100000", "algo.report_every=5000",
              "seed=range(0,4)"],
    # A PBT population, 4 members on 2 CPUs (paused and resumed as PBT goes), exploiting
    # every report: a member's donor may be the trial that was on the dead node.
    "pbt": ["sweep=taxi_pbt", "algo.episodes=8000", "algo.report_every=1000",
            "sweep.scheduler.perturbation_interval=1000"],
}


def kill_once_checkpointed_there(cluster: LocalCluster, node: str, node_id: str,
                                 client: MlflowClient, experiment: str,
                                 proc: subprocess.Popen,
                                 timeout: float = 240) -> tuple[str | None, list[str]]:
    """SIGKILL `node` once a trial whose latest start was there has two eval/score points
    (its first report's checkpoint is then saved): that trial's id (None if the sweep
    ended first), and what the polls saw. One search per poll, for the runs tagged with
    the node: a PBT member stays on a node for one report, about a second."""
    seen: list[str] = []
    deadline, exp = time.time() + timeout, None
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
        exp = exp or client.get_experiment_by_name(experiment)
        if exp is None:
            continue
        there = client.search_runs([exp.experiment_id],
                                   f"tags.`ray.node_id` = '{node_id}'")
        for run in there:
            trial = run.data.tags.get("tune.trial_id")
            points = (len(client.get_metric_history(run.info.run_id, "eval/score"))
                      if "eval/score" in run.data.metrics else 0)
            seen.append(f"{time.strftime('%X')} {trial} on {node}: {points} point(s)")
            if points >= 2:
                cluster.kill_node(node)
                return trial, seen
    return None, seen


@pytest.mark.slow  # 80 s each: a second node, then its loss
@pytest.mark.parametrize("kind", list(KILLED_SWEEPS))
def test_a_node_killed_mid_sweep_leaves_one_finished_run_per_trial(kind, workdir,
                                                                     mlflow_server):
    with LocalCluster(head_cpus=1) as cluster:
        cluster.add_node("victim", num_cpus=1)
        victim = cluster.node_ids()["victim"]
        args = [*KILLED_SWEEPS[kind], *remote(cluster), "cluster.checkpoint_every_s=0",
                "tracking.flush_every_s=0", "sweep.name=victim",
                # each kind its own experiment: the session's MLflow server is shared
                f"tracking.uri={mlflow_server}", f"tracking.experiment=victim-{kind}"]
        env = {**cli_env(cluster.dir / "driver"), **cluster.env}
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.sweep", *args], cwd=workdir,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        client = MlflowClient(mlflow_server)
        killed, seen = kill_once_checkpointed_there(cluster, "victim", victim, client,
                                                    f"victim-{kind}", proc)
        out, _ = proc.communicate(timeout=400)
    assert killed, ("no trial was seen on the victim node with a checkpoint:\n"
                    + "\n".join(seen[-40:]) + "\n" + out[-3000:])
    assert proc.returncode == 0, out[-4000:]
    _, parents, children = runs_of(client, f"victim-{kind}")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(c.data.tags["tune.trial_id"] for c in children) == sorted(
        {c.data.tags["tune.trial_id"] for c in children}) and len(children) == 4
    for c in children:
        assert c.info.status == "FINISHED", c.data.tags
        assert_no_step_twice(client, c)
        if kind == "plain":  # (a PBT member's own count depends on its donors')
            assert len(client.get_metric_history(c.info.run_id, "eval/score")) == 20
    moved = next(c for c in children if c.data.tags["tune.trial_id"] == killed)
    assert "rlpipe.restored_from" in moved.data.tags
    assert moved.data.tags["ray.node_id"] != victim
    if kind == "pbt":  # the population exploited, each exploit recorded once
        counts = []
        for c in children:
            numbers = sorted(json.loads(v)["n"] for k, v in c.data.tags.items()
                             if k.startswith("rlpipe.exploit."))
            assert numbers == list(range(1, len(numbers) + 1)), numbers  # none twice
            assert c.data.metrics.get("pbt/exploits", 0) == len(numbers)
            counts.append(len(numbers))
        assert sum(counts) >= 1 and parents[0].data.metrics["pbt/exploits"] == sum(counts)


@pytest.mark.slow  # 20 s: a train run beside a dead recorded cluster
def test_a_local_run_starts_its_own_ray_whatever_a_dead_cluster_recorded(workdir):
    result = run_cli("pipelines.train", ["experiment=frozenlake_course", "algo.episodes=300"],
                     workdir, recorded_address="127.0.0.1:1", timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.ray_started


def test_job_env_prints_the_excludes_and_the_commit_and_refuses_arguments(capsys,
                                                                          monkeypatch):
    from pipelines import job_env
    from pipelines.cluster.connect import COMMIT_VAR, SHIP_EXCLUDES, git_commit

    monkeypatch.delenv(COMMIT_VAR, raising=False)
    assert job_env.main([]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"excludes": SHIP_EXCLUDES, "env_vars": {COMMIT_VAR: git_commit()}}
    assert ".git" in printed["excludes"] and git_commit() != "unknown"  # a checkout
    assert job_env.main(["sweep=quickstart"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured
    assert captured.err.startswith("error: sweep=quickstart: takes no arguments")


def test_the_job_ships_the_checkout_and_what_the_trials_need(monkeypatch):
    from pipelines.cluster.connect import ROOT, runtime_env
    from pipelines.config.schema import ClusterConfig

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # as run_main sets
    remote = ClusterConfig(kind="remote", address="head:6379", runtime_env=True)
    env = runtime_env(remote, "http://mlflow:5000")
    assert env["working_dir"] == str(ROOT)
    assert {".git", ".venv", "mlflow.db", "ray_results"} <= set(env["excludes"])
    assert env["env_vars"] == {
        "MLFLOW_TRACKING_URI": "http://mlflow:5000", "MLFLOW_TRACKING_PASSWORD": "s3cret",
        "RAY_AUTH_MODE": "token", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "1",
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    image = ClusterConfig(kind="remote", address="head:6379", runtime_env=False)
    assert set(runtime_env(image, "http://mlflow:5000")) == {"env_vars"}


def test_a_placement_group_fits_only_where_its_learner_fits_on_one_node():
    from pipelines.cluster.capacity import Node, fits

    def nodes(*cpus, gpus=0.0):
        return [Node(str(i), "ip", "h", float(c), gpus) for i, c in enumerate(cpus)]

    learner, worker = {"CPU": 2.0}, {"CPU": 1.0}
    assert fits([learner, worker, worker], nodes(2, 2))  # learner on one, workers on the other
    assert not fits([learner, worker, worker, worker], nodes(2, 2))  # 5 CPUs of 4
    assert not fits([{"CPU": 3.0}], nodes(2, 2))  # 4 CPUs in all, but 2 per node
    assert fits([{"CPU": 1.0, "GPU": 0.5}, worker], nodes(1, 1, gpus=1.0))
    assert not fits([{"CPU": 1.0, "GPU": 0.5}], nodes(4, gpus=0.0))


def test_a_trial_reserves_its_replay_memory_where_it_lives():
    from pipelines.cluster.capacity import GIB, Capacity, Node, refusal, trial_bundles
    from pipelines.config.compose import compose_and_check

    host = compose_and_check(["experiment=pong_dqn", "cluster.gpus_per_trial=0"])
    learner = trial_bundles(host)[0]
    assert learner["memory"] / GIB == pytest.approx(6.58, abs=0.01)  # 1M frames, host
    on_gpu = compose_and_check(["experiment=pong_dqn", "cluster.gpus_per_trial=0.25"])
    assert trial_bundles(on_gpu)[0]["memory"] < 0.01 * GIB  # only the bookkeeping
    machine = [Node("a", "ip", "h", 16, 1, memory=64 * GIB)]
    # Four trials per GPU keep 6.6 GiB of frames each there: not on a 24 GiB GPU.
    why = refusal(on_gpu, Capacity(machine, "this machine", gpu_memory=24 * GIB))
    assert why.startswith("algo.buffer_size=1000000: 4 trial(s) per GPU")
    assert "algo.replay_device=cpu" in why
    assert refusal(on_gpu, Capacity(machine, "this machine", gpu_memory=80 * GIB)) is None
    small = [Node("a", "ip", "h", 16, 0, memory=4 * GIB), Node("b", "ip2", "h", 16, 0,
                                                                   memory=5 * GIB)]
    why = refusal(host, Capacity(small, "the cluster at h:1", local=False))
    assert why.startswith("algo.buffer_size=1000000: a trial's replay memory needs 6.58 GiB")
    assert "the largest node of the cluster at h:1 has 5.00 GiB" in why


def job_details(cluster: LocalCluster, submission_id: str) -> dict:
    """What the cluster tells of a job: its runtime env (the working_dir's package), the
    node its driver ran on, and that node's session folder (where Ray unpacks packages)."""
    code = (
        "import json, sys, ray; from pathlib import Path; "
        "from ray.job_submission import JobSubmissionClient; "
        "d = JobSubmissionClient(sys.argv[1]).get_job_info(sys.argv[2]); "
        "ray.init(address=sys.argv[3], logging_level='ERROR'); "
        "node = next(n for n in ray.nodes() if n['NodeID'] == d.driver_node_id); "
        "print(json.dumps({'runtime_env': d.runtime_env, 'driver_node_id': d.driver_node_id, "
        "'session_dir': str(Path(node['RayletSocketName']).parent.parent)}))")
    out = subprocess.run([sys.executable, "-c", code,
                          f"http://127.0.0.1:{cluster.dashboard_port}", submission_id,
                          cluster.address],
                         env=cluster.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # 60 s: a head with its job server, a sweep submitted as a Ray Job
def test_a_sweep_submitted_as_a_ray_job_lands_its_trials_in_mlflow(tmp_path):
    # As a user would: a head started from the project's install (its `cluster` extra
    # brings the job server), the job server on 127.0.0.1, token authentication on, and
    # `ray job submit --working-dir . --runtime-env-json "$(python -m pipelines.job_env)"`
    # of the sweep with the cluster's defaults (cluster=remote ships the code too: inside
    # a job the job's own working dir does).
    # The driver runs in the job's working dir as Ray unpacked it, not in the checkout:
    # the default storage (ray_results, relative) is resolved there. The trials run on
    # the cluster's own node.
    from pipelines.cluster.connect import git_commit

    job_env = subprocess.run([sys.executable, "-m", "pipelines.job_env"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
    store = tmp_path / "store"
    store.mkdir()
    name = f"as-a-job-{secrets.token_hex(4)}"
    in_checkout = ROOT / "ray_results" / name  # where a driver run in the checkout writes
    try:
        with LocalCluster(head_cpus=2, dashboard=True, wait=120) as cluster:
            for attempt in range(6):
                submission_id = f"{name}-{attempt}"
                submit = subprocess.run(
                    [sys.executable, "-m", "ray.scripts.scripts", "job", "submit",
                     f"--address=http://127.0.0.1:{cluster.dashboard_port}",
                     f"--submission-id={submission_id}", "--working-dir=.",
                     f"--runtime-env-json={job_env}", "--",
                     "python", "-m", "pipelines.sweep", "sweep=quickstart", "cluster=remote",
                     "cluster.address=auto", f"tracking.uri=sqlite:///{store}/mlflow.db",
                     f"sweep.name={name}", "tracking.system_metrics_every_s=0"],
                    cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=500)
                out = submit.stdout + submit.stderr
                # A head just started may not have its job agent yet (the job server waits
                # 10 s for it, then asks to try again later): nothing was submitted then.
                if "No available agent" not in out:
                    break
                time.sleep(10)
            assert submit.returncode == 0, out[-4000:]
            assert "succeeded" in out, out[-4000:]
            # The driver did not run in the checkout: nothing of it in its ray_results.
            assert not in_checkout.exists(), f"the driver ran in the checkout: {in_checkout}"
            node_ids = set(cluster.node_ids().values())
            job = job_details(cluster, submission_id)
            assert job["driver_node_id"] in node_ids, (job, node_ids)
            # The job's working dir: its package (gcs://_ray_pkg_<hash>.zip) as Ray unpacked
            # it on the driver's node, <session>/runtime_resources/working_dir_files/<pkg>.
            package = job["runtime_env"].get("working_dir", "")
            assert package.startswith("gcs://_ray_pkg_"), job
            job_dir = (Path(job["session_dir"]) / "runtime_resources" / "working_dir_files"
                       / package.removeprefix("gcs://").removesuffix(".zip"))
            assert (job_dir / "pipelines").is_dir(), job_dir
            # What the driver wrote beside the Tune run (its TrialContext) is there.
            written = job_dir / "ray_results" / name / "rlpipe.json"
            assert written.is_file(), sorted(str(p.relative_to(job_dir))
                                             for p in job_dir.glob("ray_results/**/*.json"))
            assert json.loads(written.read_text())["name"] == name
    finally:
        shutil.rmtree(in_checkout, ignore_errors=True)  # this run's name only
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    _, parents, children = runs_of(client, "quickstart")
    assert len(parents) == 1 and len(children) == 8
    assert all(c.info.status == "FINISHED" for c in children)
    # The job's working dir has no .git: its runs record the commit job_env passed.
    assert {r.data.tags["git_commit"] for r in parents + children} == {git_commit()}
    # Every trial ran on a node of the job's cluster (not on a Ray of the driver's own).
    ran_on = Counter(c.data.tags.get("ray.node_id") for c in children)
    assert set(ran_on) <= node_ids, (ran_on, node_ids)
    for child in children:
        assert_no_step_twice(client, child)
