"""docker/: the image, the Compose cluster, the `ray up` config and the KubeRay RayJob,
checked offline (no Docker engine, registry or cloud is needed).

- hadolint lints the Dockerfile; its FROM, USER and pip installs are read back;
- compose.yaml is validated against the Compose spec's JSON schema (vendored as
  tests/data/compose-spec.json, from compose-spec/compose-spec, Apache-2.0);
- ray-cluster.yaml goes through Ray's own prepare_config + validate_config. For AWS both
  are offline: prepare_config merges ray/autoscaler/aws/defaults.yaml and validate_config
  checks ray/autoscaler/ray-schema.json; what needs boto3 and the network (IAM, subnets,
  key pairs) is `ray up`'s later bootstrap step, which the test does not run. The test
  blocks socket connections while they run, to prove it;
- every sweep command these files document goes through the project's own validation
  (pipelines.space.plan_sweep), as `python -m pipelines.sweep` would before starting;
- a wheel built from exactly what the Dockerfile copies carries conf/ as rlpipe_conf, and
  installed (not editable) it finds its configs there.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.util
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
RAY_CLUSTER = DOCKER / "ray-cluster.yaml"
RAYJOB = DOCKER / "rayjob.yaml"
COMPOSE_SCHEMA = Path(__file__).resolve().parent / "data" / "compose-spec.json"

SECRET_VARS = ("POSTGRES_PASSWORD", "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_PASSWORD")
# A whole value that is a reference to the environment: ${NAME}, ${NAME:-x}, ${NAME:?msg}.
ENV_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?+][^}]*)?\}")
SWEEP = "python -m pipelines.sweep"


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip()] = version.strip()
    return pins


# ---------------------------------------------------------------- Dockerfile


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments out."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def _dockerfile() -> list[tuple[str, str]]:
    return _instructions(DOCKERFILE.read_text())


def _copies() -> list[tuple[list[str], str, list[str]]]:
    """(flags, destination, sources) of each COPY."""
    result = []
    for word, args in _dockerfile():
        if word != "COPY":
            continue
        parts = shlex.split(args)
        flags = [p for p in parts if p.startswith("--")]
        paths = [p for p in parts if not p.startswith("--")]
        result.append((flags, paths[-1], paths[:-1]))
    return result


def _pip_installs() -> list[list[str]]:
    """The arguments of every `pip install` in a RUN, one list per install."""
    installs = []
    for word, args in _dockerfile():
        if word != "RUN":
            continue
        command: list[str] = []
        for token in [*shlex.split(args), "&&"]:
            if token not in ("&&", "||", ";", "|"):
                command.append(token)
                continue
            for i in range(len(command) - 1):
                if command[i].endswith("pip") and command[i + 1] == "install":
                    installs.append(command[i + 2:])
                    break
            command = []
    return installs


def _hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is missing: it comes with the dev extras (pip install -e '.[dev]')")
    return found


def test_dockerfile_passes_hadolint(tmp_path):
    # Run where no hadolint config can be picked up, so nothing is silently ignored
    # except by an inline `# hadolint ignore=` in the Dockerfile itself.
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    proc = subprocess.run(
        [_hadolint(), "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60,
    )
    findings = json.loads(proc.stdout) if proc.stdout.strip() else []
    assert findings == [] and proc.returncode == 0, (proc.returncode, findings, proc.stderr)


def test_dockerfile_base_user_and_installs():
    instructions = _dockerfile()
    froms = [args for word, args in instructions if word == "FROM"]
    assert len(froms) == 1, froms
    ray_minor = ".".join(_pins()["ray"].split(".")[:2])
    assert re.fullmatch(rf"rayproject/ray:{re.escape(ray_minor)}\.\d+-py311-gpu", froms[0]), froms

    users = [args for word, args in instructions if word == "USER"]
    assert users, "no USER: the image would run as its base's user, unchecked"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]

    installs = _pip_installs()
    torch_pin = f"torch=={_pins()['torch']}"
    cuda = [a for a in installs if torch_pin in a and any(
        re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", x) for x in a)]
    assert cuda, f"no `pip install {torch_pin} --index-url .../whl/cuXXX` (the CUDA build)"
    for args in installs:
        assert "-e" not in args and "--editable" not in args, args
        assert "--no-cache-dir" in args, args
    # compose.yaml's MLflow server: the team-server extra of pyproject.toml, read there
    run = " ".join(args for word, args in _dockerfile() if word == "RUN")
    assert "['optional-dependencies']['team-server']" in run

    copies = _copies()
    assert copies and all(any(f.startswith("--chown=") for f in flags) for flags, _, _ in copies)
    # The project install: a pip install of the folder the code was copied to, not editable,
    # its dependencies installed by an earlier layer (--no-deps).
    conf_dest = next(dest for _, dest, sources in copies if sources == ["conf"])
    src = str(Path(conf_dest).parent)
    project = [a for a in installs if src in a or src + "/" in a]
    assert project and "--no-deps" in project[0], (src, installs)
    workdir = [args for word, args in instructions if word == "WORKDIR"][-1]
    assert not (workdir == src or workdir.startswith(src + "/")), (
        f"WORKDIR {workdir} is the source tree: python -m would import it, not the install")


def test_dockerfile_copies_every_package():
    """What pyproject.toml packages (and its readme) is what the Dockerfile copies."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tool = project["tool"]["setuptools"]
    package_dirs = tool.get("package-dir", {})
    tops = {package_dirs.get(p, p) for p in tool["packages"] if "." not in p}
    copied = {s.rstrip("/") for _, _, sources in _copies() for s in sources}
    missing = tops | {"pyproject.toml", project["project"]["readme"]}
    assert not (missing - copied), f"the Dockerfile does not copy {sorted(missing - copied)}"


def test_dockerignore_keeps_local_state_out():
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in (".venv", "mlflow.db", "mlruns", "ray_results", ".git", "mlartifacts"):
        assert needed in patterns, needed
    # and keeps in what the Dockerfile copies
    for _, _, sources in _copies():
        for source in sources:
            hit = [p for p in patterns if not p.startswith("!") and fnmatch.fnmatch(source, p)]
            assert not hit, f"{source} is copied by the Dockerfile but .dockerignore drops it"


# ---------------------------------------------------------------- sweep commands


def _documented_sweeps(text: str) -> list[list[str]]:
    """The overrides of each `python -m pipelines.sweep ...` written in a file's comments
    (a line ending in a backslash continues on the next comment line)."""
    lines = [line.lstrip()[1:].strip() for line in text.splitlines()
             if line.lstrip().startswith("#")]
    found = []
    for i, line in enumerate(lines):
        if SWEEP not in line:
            continue
        command = line[line.index(SWEEP) + len(SWEEP):]
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command = command[:-1] + " " + lines[i]
        command = command.rstrip().rstrip('"')  # inside `ray exec "..."`
        found.append(shlex.split(command))
    return found


def _check_sweep(args: list[str]) -> None:
    from pipelines.config.space import plan_sweep

    plan = plan_sweep(args)  # composes and validates every trial; UserError on bad input
    assert plan.dims, args
    assert "cluster=remote" in args and "cluster.runtime_env=false" in args, args


# ---------------------------------------------------------------- compose.yaml


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: ("" if v is None else str(v)) for k, v in env.items()}


def _command(service: dict) -> str:
    command = service.get("command") or ""
    return " ".join(command) if isinstance(command, list) else command


def test_compose_matches_the_compose_spec():
    compose = _compose()
    assert "version" not in compose
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    errors = [f"{list(e.path)}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(compose)]
    assert not errors, errors


def test_compose_services_gpu_and_ports():
    services = _compose()["services"]
    assert {"postgres", "mlflow", "ray-head", "ray-worker"} <= set(services)

    worker = services["ray-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
               for d in devices), devices
    # scaled with --scale ray-worker=N: nothing that would clash between replicas
    assert "container_name" not in worker and "ports" not in worker

    for name, service in services.items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), (name, port)


def test_compose_has_no_literal_secrets():
    compose = _compose()
    text = "\n".join(line for line in COMPOSE.read_text().splitlines()
                     if not line.lstrip().startswith("#"))  # the header shows `export`s
    for name, service in compose["services"].items():
        for key, value in _env(service).items():
            if key in SECRET_VARS or re.search(r"PASSWORD|TOKEN|SECRET", key):
                assert ENV_REF.fullmatch(value), f"{name}: {key}={value!r} is not ${{...}}"
    for var in SECRET_VARS:
        # every occurrence of NAME: value / NAME=value in the file is a reference
        for match in re.finditer(rf"(?<![{{\w]){var}\s*[:=]\s*(\S+)", text):
            assert match.group(1).startswith("${"), match.group(0)
    for name, service in compose["services"].items():
        assert not re.search(r"://[^/\s:@]+:[^@\s/]+@", _command(service)), (
            f"{name}: a password inside a URI")


def test_compose_mlflow_server():
    services = _compose()["services"]
    mlflow = services["mlflow"]
    # The team server's module (its flags, and that the tests run the same server:
    # tests/test_team_server.py), its secrets from the environment.
    assert _command(mlflow).startswith("python -m pipelines.tracking.team_server ")
    env = _env(mlflow)
    assert "POSTGRES_PASSWORD" in env["PGPASSWORD"]
    assert "MLFLOW_TRACKING_USERNAME" in env["MLFLOW_AUTH_ADMIN_USERNAME"]
    assert "MLFLOW_TRACKING_PASSWORD" in env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert "/health" in " ".join(mlflow["healthcheck"]["test"])
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert any(str(v).startswith(("mlflow-artifacts:", "mlflow-artifacts/"))
               or ":" in str(v) and str(v).split(":")[0] in _compose()["volumes"]
               for v in mlflow["volumes"])


def test_compose_ray_nodes_token_and_shared_results():
    compose = _compose()
    services = compose["services"]
    head, worker = services["ray-head"], services["ray-worker"]
    head_command = _command(head)
    assert "--head" in head_command
    assert ("--include-dashboard=false" in head_command
            or "--dashboard-host=127.0.0.1" in head_command), head_command
    assert "--address=ray-head:6379" in _command(worker)
    mounts = {}
    for name, node in (("ray-head", head), ("ray-worker", worker)):
        env = _env(node)
        assert env["RAY_AUTH_MODE"] == "token", name
        assert ENV_REF.fullmatch(env["RAY_AUTH_TOKEN"]), name
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
        assert node.get("shm_size"), name
        mounts[name] = {v.split(":")[0]: v.split(":")[1] for v in node["volumes"]}
    assert mounts["ray-head"]["ray-results"] == mounts["ray-worker"]["ray-results"]
    assert "ray-results" in compose["volumes"]


def test_compose_documented_sweep_is_valid():
    sweeps = _documented_sweeps(COMPOSE.read_text())
    assert sweeps, "compose.yaml documents no sweep command"
    results = _compose()["services"]["ray-head"]["volumes"]
    results_path = next(v.split(":")[1] for v in results if v.startswith("ray-results:"))
    for args in sweeps:
        _check_sweep(args)
        assert "cluster.address=ray-head:6379" in args
        assert f"cluster.storage_path={results_path}" in args
        assert "tracking.uri=http://mlflow:5000" in args


# ---------------------------------------------------------------- ray-cluster.yaml


def test_ray_cluster_config_passes_rays_validator(monkeypatch):
    from ray.autoscaler._private.util import prepare_config, validate_config

    def no_network(*args, **kwargs):
        raise AssertionError("the validation tried to reach the network")

    raw = yaml.safe_load(RAY_CLUSTER.read_text())
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    monkeypatch.undo()

    assert raw["provider"]["type"] == "aws"
    image = raw["docker"]["image"]
    assert image and ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
    head = config["head_node_type"]
    workers = {n: t for n, t in config["available_node_types"].items() if n != head}
    gpu = {n: t for n, t in workers.items()
           if re.match(r"(g|p)\d", t["node_config"].get("InstanceType", ""))
           or t["resources"].get("GPU", 0) > 0}
    assert gpu, "no GPU worker type"
    assert any(t["max_workers"] > t["min_workers"] for t in gpu.values()), "not autoscaling"
    assert "--gpus all" in config["docker"].get("worker_run_options", []) + config[
        "docker"].get("run_options", [])

    start = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in start
    assert ("--dashboard-host=127.0.0.1" in start or "--include-dashboard=false" in start)
    # the token reaches every node through file_mounts, into ~/.ray/auth_token
    setup = " ".join(config["setup_commands"])
    assert "~/.ray/auth_token" in setup
    assert any(remote in setup for remote in config["file_mounts"])


def test_ray_cluster_documented_sweep_is_valid():
    sweeps = _documented_sweeps(RAY_CLUSTER.read_text())
    assert sweeps, "ray-cluster.yaml documents no sweep command"
    for args in sweeps:
        _check_sweep(args)
        assert "cluster.address=auto" in args


# ---------------------------------------------------------------- rayjob.yaml


def _containers(pod_template: dict) -> list[dict]:
    return pod_template["template"]["spec"]["containers"]


def test_rayjob_manifest():
    job = yaml.safe_load(RAYJOB.read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int)
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == _pins()["ray"]

    head = cluster["headGroupSpec"]
    for container in _containers(head):
        assert "nvidia.com/gpu" not in (container.get("resources", {}).get("limits") or {})
    gpu_groups = [
        g for g in cluster["workerGroupSpecs"]
        if any(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) > 0
               for c in _containers(g))
    ]
    assert gpu_groups, "no worker group with nvidia.com/gpu limits"
    for group in gpu_groups:
        for c in _containers(group):
            assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"][
                "nvidia.com/gpu"]

    for group in [head, *cluster["workerGroupSpecs"]]:
        for container in _containers(group):
            env = {e["name"]: e for e in container.get("env", [])}
            assert env["RAY_AUTH_MODE"]["value"] == "token", container["name"]
            for name, var in env.items():
                if name in SECRET_VARS or name == "MLFLOW_TRACKING_USERNAME" or re.search(
                        r"PASSWORD|TOKEN|SECRET", name) and name != "RAY_AUTH_MODE":
                    assert "value" not in var, f"{container['name']}: literal {name}"
                    assert var["valueFrom"]["secretKeyRef"]["name"], name
            for needed in ("RAY_AUTH_TOKEN", "MLFLOW_TRACKING_USERNAME",
                           "MLFLOW_TRACKING_PASSWORD"):
                assert "secretKeyRef" in env[needed]["valueFrom"], (container["name"], needed)


def test_rayjob_entrypoint_is_a_valid_sweep():
    job = yaml.safe_load(RAYJOB.read_text())
    tokens = shlex.split(job["spec"]["entrypoint"])
    assert tokens[:3] == ["python", "-m", "pipelines.sweep"], tokens
    args = tokens[3:]
    _check_sweep(args)
    assert "cluster.address=auto" in args
    uri = next(a.split("=", 1)[1] for a in args if a.startswith("tracking.uri="))
    assert uri.startswith(("http://", "https://")), uri


# ---------------------------------------------------------------- the install


def _dockerignored(folder: str, names: list[str]) -> list[str]:
    """What .dockerignore keeps out of a copied folder: caches, compiled files, and the
    results JSON of benchmarks/results (pipelines/results is code)."""
    results = Path(folder).relative_to(ROOT).as_posix() == "benchmarks/results"
    return [n for n in names if n == "__pycache__" or n.endswith(".pyc")
            or (results and n.endswith(".json"))]


def test_wheel_of_the_copied_source_carries_the_configs(tmp_path):
    """Build a wheel from exactly what the Dockerfile copies, check it holds every config
    as rlpipe_conf/..., install it (not editable) and find the configs from outside a
    checkout, as the image does."""
    src = tmp_path / "src"
    src.mkdir()
    for _, _, sources in _copies():
        for source in sources:
            path = ROOT / source
            if path.is_dir():
                shutil.copytree(path, src / source, ignore=_dockerignored)
            else:
                shutil.copy2(path, src / source)
    dist = tmp_path / "dist"
    isolation = [] if importlib.util.find_spec("setuptools") is None else [
        "--no-build-isolation"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", *isolation,
         "-w", str(dist), str(src)],
        check=True, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    (wheel,) = dist.glob("rlpipe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(p.relative_to(ROOT / "conf").as_posix()
                     for p in (ROOT / "conf").rglob("*.yaml"))
    assert configs
    missing = [c for c in configs if f"rlpipe_conf/{c}" not in names]
    assert not missing, missing
    assert "pipelines/sweep.py" in names and "algos/dqn.py" in names

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target",
         str(target), str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    probe = (
        "import pipelines.config.compose as c, pipelines; "
        "print(c.CONF_DIR); print(pipelines.__file__); "
        "print(sorted(c.group_options('experiment')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(target)}, timeout=120, check=True,
    ).stdout.splitlines()
    conf_dir, module, experiments = out[0], out[1], out[2]
    assert conf_dir == str(target / "rlpipe_conf"), conf_dir
    assert module.startswith(str(target)), module
    assert experiments == str(sorted(p.stem for p in (ROOT / "conf/experiment").glob("*.yaml")))


def test_runs_outside_a_checkout_take_the_commit_the_image_recorded(monkeypatch, tmp_path):
    from pipelines.cluster import connect

    text = (DOCKER / "Dockerfile").read_text()
    assert f"ENV {connect.COMMIT_VAR}=${{GIT_COMMIT}}" in text
    # No .git of its own (as in the image), though a repository holds the folder.
    for git in (["init", "-q"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit",
                                 "-q", "--allow-empty", "-m", "not the project's"]):
        subprocess.run(["git", "-C", str(tmp_path), *git], check=True)
    (tmp_path / "project").mkdir()
    monkeypatch.setattr(connect, "ROOT", tmp_path / "project")
    monkeypatch.setenv(connect.COMMIT_VAR, "abc123")
    assert connect.git_commit() == "abc123"
    monkeypatch.delenv(connect.COMMIT_VAR)
    assert connect.git_commit() == "unknown"
