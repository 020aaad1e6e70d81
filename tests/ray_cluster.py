"""A multi-node Ray cluster on this machine, started as a user starts one: `ray start
--head`, then `ray start --address=... --block` per node, with token authentication on.

Each extra node runs in its own process group (so that killing it kills that node alone)
and may run from another directory with a Python that has the project's dependencies but
not the project itself (`bare=True`): what a cluster node without the code looks like.
Used by the cluster tests and by benchmarks/cluster_scale.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME_RESOURCE = "test_node_"
"""A custom resource that names each node (test_node_<name>), so its id can be found."""


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bare_python(folder: Path) -> Path:
    """A Python that imports this interpreter's packages but not the project: a venv whose
    one .pth line names our site-packages as a plain path, so that the editable install's
    own .pth hook there never runs."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = Path(sysconfig.get_paths(vars={"base": str(folder), "platbase": str(folder)})
                ["purelib"])
    site.mkdir(parents=True, exist_ok=True)
    ours = sysconfig.get_paths()["purelib"]
    (site / "deps.pth").write_text(ours + "\n")
    return folder / "bin" / "python"


class LocalCluster:
    """A head node and any number of worker nodes, all on this machine, each started with
    `ray start`, sharing one token (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN)."""

    def __init__(self, head_cpus: int = 1, wait: float = 60, dashboard: bool = False) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: socket paths
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        self.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
                        RAY_TMPDIR=str(self.dir / "tmp"), RAY_DEDUP_LOGS="1",
                        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        # A job's entrypoint runs `python` from the head's PATH: this interpreter's.
        self.env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + self.env["PATH"]
        self.nodes: dict[str, subprocess.Popen] = {}
        self.bare_python: Path | None = None
        """The project-less Python of the bare nodes, once one was added."""
        self.dashboard_port = free_port() if dashboard else None
        """With dashboard: the port of the head's dashboard and job server, on 127.0.0.1."""
        head = (["--include-dashboard=true", "--dashboard-host=127.0.0.1",
                 f"--dashboard-port={self.dashboard_port}"] if dashboard else
                ["--include-dashboard=false"])
        self._start("head", ["--head", f"--port={self.port}", f"--num-cpus={head_cpus}", *head],
                    sys.executable, self.env, ROOT, wait)

    def _start(self, name: str, args: list[str], python: str, env: dict[str, str], cwd: Path,
               wait: float) -> None:
        (self.dir / name).mkdir(parents=True, exist_ok=True)
        path = self.dir / name / "node.log"
        log = open(path, "w")
        # Each node its own agent ports: Ray's fixed defaults (52365 for the dashboard
        # agent, whose job agent `ray job submit` needs) are taken by the first node on
        # this machine, and a second cluster's head would run without its job agent.
        ports = [f"--{flag}={free_port()}" for flag in (
            "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
            "runtime-env-agent-port", "metrics-export-port")]
        self.nodes[name] = subprocess.Popen(
            [python, "-m", "ray.scripts.scripts", "start", *args, *ports, "--num-gpus=0",
             "--block",
             "--disable-usage-stats", f'--resources={{"{NAME_RESOURCE}{name}": 1}}'],
            env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.time() + wait
        # `ray start --block` says so once its node has registered with the head.
        while "will now block forever" not in path.read_text():
            if self.nodes[name].poll() is not None or time.time() > deadline:
                text = path.read_text()
                self.stop()
                raise RuntimeError(f"Ray node {name} did not start: {text}")
            time.sleep(0.2)

    def add_node(self, name: str, num_cpus: int = 1, ip: str | None = None,
                 bare: bool = False, wait: float = 60) -> None:
        """Start a worker node in its own process group, at `ip` (another loopback address
        such as 127.0.0.2 makes it another host as far as Ray can tell); bare: from its own
        directory with a Python that cannot import the project."""
        python, env = sys.executable, dict(self.env)
        if bare:
            self.bare_python = self.bare_python or bare_python(self.dir / "bare")
            python = str(self.bare_python)
            env.pop("PYTHONPATH", None)
        args = [f"--address={self.address}", f"--num-cpus={num_cpus}"]
        if ip:
            args.append(f"--node-ip-address={ip}")
        self._start(name, args, python, env, self.dir / name, wait)

    def node_ids(self) -> dict[str, str]:
        """name -> Ray node id of the alive nodes, as the cluster's GCS sees them."""
        code = (
            "import json, ray; ray.init(address=" + repr(self.address) + ", logging_level="
            "'ERROR'); print(json.dumps({k[len(" + repr(NAME_RESOURCE) + "):]: n['NodeID'] "
            "for n in ray.nodes() if n['Alive'] for k in n['Resources'] if k.startswith("
            + repr(NAME_RESOURCE) + ")}))"
        )
        out = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True,
                             text=True, timeout=120, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    def kill_node(self, name: str) -> None:
        """SIGKILL a node's whole process group (its raylet, workers and trials)."""
        proc = self.nodes.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self) -> None:
        """Stop every node, the head last, and remove the cluster's files (only this
        cluster's processes: `ray stop` would stop every Ray on the machine)."""
        for name in sorted(self.nodes, key=lambda n: n == "head"):
            try:
                self.kill_node(name)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
