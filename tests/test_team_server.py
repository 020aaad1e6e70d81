"""The team's tracking server, for real: PostgreSQL, MLflow's basic-auth app with its users
and permissions, artifacts served through the server (tests/helpers.py TeamServer, what
docker/compose.yaml runs). Logins and permissions are refused before anything starts; what
works on sqlite works here."""

from __future__ import annotations

import json
import os
import shlex

import pytest
import yaml
from mlflow import MlflowClient

from pipelines.tracking import team_server as server_module
from tests.helpers import (
    ROOT,
    SMALL,
    TEAM_EXPERIMENT,
    assert_no_step_twice,
    run_cli,
    run_in_process,
    runs_of,
)

TEAM = [*SMALL, f"tracking.experiment={TEAM_EXPERIMENT}"]


def admin_client(server, monkeypatch) -> MlflowClient:
    """A client of the team server, logged in as its admin."""
    for key, value in server.env("admin").items():
        monkeypatch.setenv(key, value)
    return MlflowClient(server.uri)


def compose_server() -> tuple[list[str], dict]:
    """The mlflow service of docker/compose.yaml: the arguments it gives
    pipelines.tracking.team_server, and its environment."""
    service = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())["services"]["mlflow"]
    command = service["command"]
    words = shlex.split(command) if isinstance(command, str) else [str(w) for w in command]
    start = words.index("pipelines.tracking.team_server")
    assert words[start - 2:start] == ["python", "-m"], words
    return words[start + 1:], service["environment"]


def test_the_compose_file_and_the_tests_run_the_same_server(team_server):
    args, environment = compose_server()
    # The same module and flags; only where it listens, stores and how many workers differ.
    flags = {a for a in args if a.startswith("--")}
    assert {a for a in team_server.args if a.startswith("--")} - {"--workers"} <= flags
    ours, theirs = (server_module.from_args(a) for a in (team_server.args, args))
    assert (ours.database_user, theirs.database_user) == ("mlflow", "mlflow")
    command = theirs.command()
    assert command[command.index("--app-name") + 1] == "basic-auth"
    assert {"--serve-artifacts", "--artifacts-destination"} <= set(command)
    assert theirs.database_uri("mlflow") == "postgresql+psycopg://mlflow@postgres:5432/mlflow"
    assert "database_uri = postgresql+psycopg://mlflow@postgres:5432/mlflow_auth" in (
        theirs.auth_ini())
    assert theirs.auth_ini().replace("postgres:5432", "") == ours.auth_ini().replace(
        f"127.0.0.1:{team_server.pg.port}", "")
    # The secrets come from the environment, in compose as in the tests; none in the args.
    for name in ("PGPASSWORD", "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD",
                 server_module.SECRET_KEY_VAR):
        assert name in environment, name
    assert not any("password" in a.lower() or "secret" in a.lower() for a in args)


def experiments_and_runs(client: MlflowClient) -> tuple[list[str], int]:
    names = sorted(e.name for e in client.search_experiments())
    ids = [e.experiment_id for e in client.search_experiments()]
    return names, len(client.search_runs(ids, max_results=10000))


@pytest.mark.parametrize("who,expected", [
    ("wrong", ["the server refused the login of user 'editor'", "MLFLOW_TRACKING_PASSWORD"]),
    ("none", ["the server asks for a login", "MLFLOW_TRACKING_USERNAME"]),
    ("reader", ["tracking.experiment=team: user 'reader' may only read it",
                "(permission READ)", "EDIT"]),
], ids=["wrong-password", "no-login", "reader"])
def test_a_refused_login_or_a_reader_exits_2_before_anything_starts(
        team_server, workdir, monkeypatch, who, expected):
    client = admin_client(team_server, monkeypatch)
    before = experiments_and_runs(client)
    env = {"wrong": {**team_server.env("editor"), "MLFLOW_TRACKING_PASSWORD": "not-it-at-all"},
           "none": {"MLFLOW_TRACKING_USERNAME": "", "MLFLOW_TRACKING_PASSWORD": ""},
           "reader": team_server.env("reader")}[who]
    result = run_cli("pipelines.sweep", [*TEAM, "seed=0,1",
                                         f"tracking.uri={team_server.uri}"], workdir, env=env)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in expected + [team_server.uri]:
        assert text in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert not result.ray_started
    assert experiments_and_runs(client) == before
    assert not (workdir / "ray_results").exists()
    for password in team_server.passwords.values():
        assert password not in result.stdout + result.stderr


def test_a_refusal_is_not_an_outage_and_an_unreachable_server_is(team_server, monkeypatch):
    from mlflow.exceptions import MlflowException

    from pipelines.tracking.run_logger import is_outage
    from tests.helpers import free_port

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    errors = {}
    for name, uri, env in [
        ("refused", team_server.uri, {**team_server.env("editor"),
                                      "MLFLOW_TRACKING_PASSWORD": "not-it-at-all"}),
        ("denied", team_server.uri, team_server.env("reader")),
        ("unreachable", f"http://127.0.0.1:{free_port()}", team_server.env("editor")),
    ]:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        with pytest.raises(MlflowException) as caught:
            MlflowClient(uri).create_run(team_server.experiment_id)
        errors[name] = caught.value
    assert errors["refused"].error_code == "UNAUTHENTICATED"
    assert errors["denied"].error_code == "PERMISSION_DENIED"
    # A refusal fails a trial's flush at once; only an unreachable server is waited for.
    assert {k: is_outage(e) for k, e in errors.items()} == {
        "refused": False, "denied": False, "unreachable": True}
    # An overloaded server's database answers 400 too (as benchmarks/tracking_load.py saw
    # from a sqlite-backed server at 64 writers): waited for, unlike a bad value.
    from mlflow.exceptions import RestException

    overloaded = RestException({"error_code": "BAD_REQUEST", "message": (
        "QueuePool limit of size 5 overflow 10 reached, connection timed out, timeout "
        "30.00 (Background on this error at: https://sqlalche.me/e/21/3o7r)")})
    bad_value = RestException({"error_code": "INVALID_PARAMETER_VALUE",
                               "message": "Invalid value 'x' for parameter 'max_results'"})
    assert (is_outage(overloaded), is_outage(bad_value)) == (True, False)


RACE_BUDGETS = [300, 600, 1000, 2000]
"""Taxi episodes of four runs whose held-out scores differ (the more, the better)."""


@pytest.fixture(scope="module")
def taxi_runs(team_server):
    """Four Taxi agents of different budgets, trained here and logged to the team server
    as a trial logs them (as its admin): [(run id, best model id, held-out test/score)]."""
    from tests.helpers import logged_run

    out = []
    with pytest.MonkeyPatch.context() as patch:
        for key, value in team_server.env("admin").items():
            patch.setenv(key, value)
        for episodes in RACE_BUDGETS:
            _, _, run_id, ids = logged_run(
                ["experiment=taxi_course", f"algo.episodes={episodes}",
                 f"algo.report_every={episodes}", "seed=0"], team_server.uri, "race")
            score = MlflowClient(team_server.uri).get_run(run_id).data.metrics["test/score"]
            out.append((run_id, ids["best"], score))
    return out


def race(team_server, taxi_runs, name: str, register) -> None:
    """Register the four runs as `name` at once, each in a thread with its own client,
    the worst one made stale on purpose: it looks for the best version before the others
    are there, and sets the alias only after the best one's registration has ended."""
    import threading

    from mlflow import MlflowClient as Client

    order = sorted(taxi_runs, key=lambda r: r[2])
    looked, best_done, errors = threading.Event(), threading.Event(), []

    class Stale(Client):
        def set_registered_model_alias(self, *args, **kwargs):
            if not looked.is_set():
                looked.set()
                best_done.wait(120)
            return super().set_registered_model_alias(*args, **kwargs)

    def one(client, run):
        try:
            register(client, team_server.uri, name, run[1], run[0])
        except Exception as e:  # each registration must succeed
            errors.append(e)
        finally:
            if run is order[-1]:
                best_done.set()

    worst = threading.Thread(target=one, args=(Stale(team_server.uri), order[0]))
    worst.start()
    assert looked.wait(120), "the worst registration never set its alias"
    others = [threading.Thread(target=one, args=(Client(team_server.uri), run))
              for run in order[1:]]
    for thread in others:
        thread.start()
    for thread in [*others, worst]:
        thread.join(300)
    assert not errors, errors


@pytest.mark.slow  # 60-100 s: four Taxi agents trained, then registered at once
def test_four_registrations_at_once_each_add_a_version_and_best_ends_on_the_best(
        team_server, taxi_runs, monkeypatch):
    from pipelines.results.registry import register_champion

    client = admin_client(team_server, monkeypatch)
    scores = sorted(score for _, _, score in taxi_runs)
    assert len(set(scores)) == 4, scores  # known and different held-out scores
    import mlflow

    before = mlflow.get_registry_uri()
    race(team_server, taxi_runs, "race-taxi", register_champion)
    # The threads set and restored the process-wide URIs in turn, not over each other.
    assert mlflow.get_registry_uri() == before != team_server.uri
    versions = client.search_model_versions("name = 'race-taxi'")
    assert len(versions) == 4
    tagged = {float(v.tags["test/score"]): v for v in versions}
    assert sorted(tagged) == pytest.approx(scores)  # each version tagged with its run's
    best = client.get_model_version_by_alias("race-taxi", "best")
    assert best.version == tagged[max(tagged)].version
    assert best.run_id == max(taxi_runs, key=lambda r: r[2])[0]


# ----- what works on sqlite works on the team server (the slow suite) -------------------

QUICKSTART = ["sweep=quickstart", f"tracking.experiment={TEAM_EXPERIMENT}", "sweep.name=team"]


def server_tables(team_server) -> str:
    """Every row of every table of both of the server's databases, as psql prints them."""
    out = []
    for database in ("mlflow", "mlflow_auth"):
        tables = team_server.pg.psql(database, "SELECT tablename FROM pg_tables WHERE "
                                               "schemaname = 'public'").split()
        out += [team_server.pg.psql(database, f'SELECT * FROM "{table}"') for table in tables]
    return "\n".join(out)


@pytest.fixture(scope="module")
def editor_sweep(team_server, tmp_path_factory):
    """The default job (sweep=quickstart) run by `editor` into the team experiment."""
    workdir = tmp_path_factory.mktemp("editor-sweep")
    result = run_cli("pipelines.sweep", [*QUICKSTART, f"tracking.uri={team_server.uri}"],
                     workdir, env=team_server.env("editor"), timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return workdir, result


@pytest.mark.slow  # 60-90 s: the default job on the team server
def test_the_default_job_summarizes_and_registers_on_the_team_server(
        team_server, editor_sweep, monkeypatch):
    from algos.core.agents import TableAgent
    from algos.core.envs import make_env
    from algos.core.evaluation import play_episodes
    from algos.core.metrics import score
    from algos.core.optimum import optimal_q_table
    from pipelines.config.compose import compose_and_check
    from pipelines.tracking.models import load_logged_agent

    workdir, result = editor_sweep
    client = admin_client(team_server, monkeypatch)
    _, parents, children = runs_of(client, TEAM_EXPERIMENT, name="team")
    assert len(parents) == 1 and len(children) == 8
    assert all(r.info.status == "FINISHED" for r in parents + children)
    assert {"summary.json", "curves.png"} <= {
        a.path for a in client.list_artifacts(parents[0].info.run_id)}
    for env in ("frozenlake", "taxi"):
        best = client.get_model_version_by_alias(f"{TEAM_EXPERIMENT}-{env}", "best")
        assert f"Registered {TEAM_EXPERIMENT}-{env} version {best.version}" in result.stdout
        assert best.run_id == parents[0].data.tags[f"best.{env}.run_id"]
    # Artifacts go through the server: the experiment's location is the proxy's.
    assert client.get_experiment(team_server.experiment_id).artifact_location.startswith(
        "mlflow-artifacts:")
    # The registered Taxi agent's held-out figure: played again on the seeds it reports
    # (none of its evaluation seeds), the same; bounded by the optimal policy on them, no
    # better (no luck helps on seeds no selection saw) and at least 95% of it. Scored on
    # its evaluation seeds, a Taxi agent can beat the optimum by luck (4.927 against 4.853
    # was seen).
    version = client.get_model_version_by_alias(f"{TEAM_EXPERIMENT}-taxi", "best")
    registered = float(version.tags["test/score"])
    assert f"(test/score {registered:.4g} on held-out seeds)" in result.stdout
    agent, manifest = load_logged_agent(f"models:/{TEAM_EXPERIMENT}-taxi@best",
                                        team_server.uri)
    seeds = manifest["evaluation"]["test_seeds"]
    assert not set(seeds) & set(manifest["evaluation"]["seeds"])
    cfg = compose_and_check(["experiment=taxi_course"]).cfg
    mean, std, _ = play_episodes(cfg.env, seeds, agent.act, cfg.algo.max_steps)
    assert score(mean, std) == pytest.approx(registered)
    optimum = TableAgent(optimal_q_table(make_env(cfg.env), cfg.algo.gamma))
    best = score(*play_episodes(cfg.env, seeds, optimum.act, cfg.algo.max_steps)[:2])
    assert 0.95 * best <= registered <= best + 1e-9, (registered, best)


@pytest.mark.slow  # 20 s, after the default job
def test_a_registered_model_plays_and_packs_through_the_artifact_proxy(
        team_server, editor_sweep, workdir):
    model = f"models:/{TEAM_EXPERIMENT}-taxi@best"
    # The login in the URI: it moves to the environment of the command alone.
    uri = team_server.uri.replace("http://", f"http://editor:{team_server.passwords['editor']}@")
    played = run_in_process("pipelines.evaluate", [
        f"evaluate.model={model}", f"tracking.uri={uri}"], workdir)
    packed = run_in_process("pipelines.package", [
        f"package.model={model}", "package.dir=hub", f"tracking.uri={uri}"], workdir)
    assert played.returncode == 0, played.stderr[-3000:]
    assert json.loads(played.last_line)["model"] == model
    assert packed.returncode == 0, packed.stderr[-3000:]
    assert (workdir / "hub" / "results.json").is_file()
    assert (workdir / "hub" / "data" / "agent" / "q_table.npy").is_file()


@pytest.mark.slow  # after the default job
def test_no_password_is_written_anywhere(team_server, editor_sweep, monkeypatch):
    from pathlib import Path

    workdir, result = editor_sweep
    client = admin_client(team_server, monkeypatch)
    runs = client.search_runs([team_server.experiment_id], max_results=1000)
    texts = [result.stdout, result.stderr, server_tables(team_server)]
    for run in runs:
        texts.append(json.dumps([run.data.params, run.data.tags]))
        config = client.download_artifacts(run.info.run_id, "config.yaml", str(workdir))
        texts.append(Path(config).read_text())
    texts += [p.read_text(errors="replace") for p in (workdir / "ray_results").rglob("*")
              if p.is_file() and p.suffix in (".json", ".txt", ".csv", ".log", ".yaml", "")]
    # A login given in the URI is masked where the config is shown.
    login = team_server.uri.replace("http://", f"http://editor:{team_server.passwords['editor']}@")
    shown = run_in_process("pipelines.sweep", [f"tracking.uri={login}", "--cfg", "job"], workdir)
    assert "editor:***@" in shown.stdout
    texts += [shown.stdout, shown.stderr]
    for user, password in team_server.passwords.items():
        for text in texts:
            assert password not in text, user
    # The user store keeps a salted hash of each password.
    hashes = dict(line.split("|") for line in team_server.pg.psql(
        "mlflow_auth", "SELECT username, password_hash FROM users").split())
    assert set(hashes) == set(team_server.passwords)
    assert all(h.startswith(("scrypt:", "pbkdf2:")) for h in hashes.values()), hashes


@pytest.mark.slow  # after the default job: a sweep whose registration is refused
def test_a_user_who_may_not_register_gets_a_line_and_finished_runs(
        team_server, editor_sweep, workdir, monkeypatch):
    # intern may edit the experiment, but the registered models are editor's (intern:
    # the default READ on them).
    result = run_cli("pipelines.sweep", [*TEAM, "seed=0,1", "sweep.name=intern",
                                         f"tracking.uri={team_server.uri}"], workdir,
                     env=team_server.env("intern"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("Not registered"))
    assert (f"user 'intern' may not register versions of {TEAM_EXPERIMENT}-frozenlake on "
            f"{team_server.uri} (permission denied)") in line
    assert "Traceback" not in result.stdout
    client = admin_client(team_server, monkeypatch)
    _, parents, children = runs_of(client, TEAM_EXPERIMENT, name="intern")
    assert all(r.info.status == "FINISHED" for r in parents + children)


@pytest.mark.slow  # 90-150 s: a PBT population killed once a member exploited, resumed
def test_a_killed_pbt_sweep_resumes_with_its_lineage_on_the_team_server(
        team_server, workdir, monkeypatch):
    # The driver, its Ray and its trials SIGKILLed at once after a member's first exploit;
    # resume= ends with one FINISHED run per member, no point of any series twice or out
    # of order, the exploits of before the kill kept and none recorded twice, their
    # lineage and the hp/* series. (A sweep interrupted by Ctrl+C: test_pipeline.)
    import signal
    import time
    from pathlib import Path

    from tests.helpers import assert_models_once

    client = admin_client(team_server, monkeypatch)
    name = "team-pbt"
    proc = start_cli("pipelines.sweep", [
        "sweep=taxi_pbt", "cluster.num_cpus=2", f"tracking.experiment={TEAM_EXPERIMENT}",
        f"sweep.name={name}", f"tracking.uri={team_server.uri}"],
        workdir, team_server.env("editor"))

    def exploits() -> dict[str, set[str]]:
        _, _, children = runs_of(client, TEAM_EXPERIMENT, name=name)
        return {c.info.run_id: {k for k in c.data.tags if k.startswith("rlpipe.exploit.")}
                for c in children}

    deadline = time.time() + 300
    while not any(exploits().values()) and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=120)
    before = exploits()
    assert any(before.values()), "no member exploited before the kill"
    result = run_cli("pipelines.sweep", [f"resume={name}"], workdir,
                     env=team_server.env("editor"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _, parents, children = runs_of(client, TEAM_EXPERIMENT, name=name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4
    after, recorded = exploits(), 0
    for child in children:
        assert child.info.status == "FINISHED"
        assert_no_step_twice(client, child)
        assert_models_once(client, child)
        for key in child.data.metrics:
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert key.startswith("system/") or steps == sorted(steps), (key, steps)
        assert {"hp/algo.lr", "hp/algo.epsilon_decay"} <= set(child.data.metrics)
        mine = after[child.info.run_id]
        assert before.get(child.info.run_id, set()) <= mine
        numbers = sorted(json.loads(child.data.tags[k])["n"] for k in mine)
        assert numbers == list(range(1, len(mine) + 1))
        assert int(child.data.tags.get("rlpipe.exploits", 0)) == len(mine)
        recorded += len(mine)
    lineage = client.download_artifacts(parents[0].info.run_id, "lineage.json", str(workdir))
    assert len(json.loads(Path(lineage).read_text())["data"]) == recorded


@pytest.mark.slow  # 90-150 s: PostgreSQL stopped for 20 s mid-sweep
def test_the_database_stopped_mid_sweep_loses_nothing(workdir, monkeypatch):
    import time

    from tests.helpers import TeamServer

    server = TeamServer()  # its own: the session's keeps its database up
    try:
        server.start()
        client = admin_client(server, monkeypatch)
        name = "pg-outage"
        proc = start_cli("pipelines.sweep", [
            "experiment=taxi_course", "seed=range(0,2)", "algo.episodes=20000",
            "algo.report_every=1000", "cluster.num_cpus=2", "tracking.flush_every_s=1",
            f"tracking.experiment={TEAM_EXPERIMENT}", f"sweep.name={name}",
            f"tracking.uri={server.uri}"], workdir, server.env("editor"))
        deadline = time.time() + 300
        while time.time() < deadline:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            _, _, children = runs_of(client, TEAM_EXPERIMENT, name=name)
            if children and all(len(client.get_metric_history(c.info.run_id, "eval/score"))
                                >= 2 for c in children):
                break
            time.sleep(0.5)
        server.pg.stop()
        time.sleep(20)
        server.pg.start()
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-4000:]
        check_whole_sweep(client, name, trials=2, reports=20)
    finally:
        server.stop()


def start_cli(module: str, args: list[str], workdir, env: dict[str, str]):
    """python -m <module> <args> started in the background, in its own process group."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from tests.helpers import cli_env

    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=workdir,
                            env={**cli_env(ray_tmp), **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def check_whole_sweep(client: MlflowClient, name: str, trials: int, reports: int) -> None:
    """One FINISHED run per trial, each with every report and episode it made, no step
    of any series twice, its models once."""
    from tests.helpers import assert_models_once

    _, parents, children = runs_of(client, TEAM_EXPERIMENT, name=name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == trials
    assert sorted(c.data.params["seed"] for c in children) == [str(s) for s in range(trials)]
    for child in children:
        assert child.info.status == "FINISHED"
        assert_no_step_twice(client, child)
        assert_models_once(client, child)
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "eval/score")]
        assert len(steps) == reports and len(set(steps)) == reports, steps
        episodes = client.get_metric_history(child.info.run_id, "train/episodes")
        assert [m.value for m in episodes] == [1000.0 * (i + 1) for i in range(reports)]
        returns = client.get_metric_history(child.info.run_id, "train/episode_return")
        assert len(returns) == reports * 200  # every report's episodes, thinned to 200


@pytest.mark.slow  # 3-5 min: four sweeps at once, each registering the same model
def test_four_sweeps_started_together_each_register_and_best_ends_on_the_best(
        team_server, workdir, monkeypatch):
    client = admin_client(team_server, monkeypatch)
    procs = []
    for episodes in RACE_BUDGETS:
        folder = workdir / f"sweep-{episodes}"
        folder.mkdir()
        procs.append(start_cli("pipelines.sweep", [
            "experiment=taxi_course", f"algo.episodes={episodes}",
            f"algo.report_every={episodes // 2}", "cluster.num_cpus=1",
            "tracking.experiment=team-race", f"sweep.name=race-{episodes}",
            "tracking.system_metrics_every_s=0", f"tracking.uri={team_server.uri}"],
            folder, team_server.env("admin")))
    for proc in procs:
        out, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, out[-3000:]
    versions = client.search_model_versions("name = 'team-race-taxi'")
    assert len(versions) == 4
    runs = {r.info.run_id: r for r in client.search_runs(
        [client.get_experiment_by_name("team-race").experiment_id])}
    for version in versions:  # each tagged with its run's own held-out score
        assert float(version.tags["test/score"]) == pytest.approx(
            runs[version.run_id].data.metrics["test/score"])
    best = max(versions, key=lambda v: (float(v.tags["test/score"]), -int(v.version)))
    assert client.get_model_version_by_alias("team-race-taxi", "best").version == best.version
