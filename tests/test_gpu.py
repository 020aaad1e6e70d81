"""On a CUDA device: the learner's CUDA graph and GPU frame memory against their host and
eager versions, DQN learning with the learner on CUDA and the rollout worker on a CPU,
a sweep whose trials share one GPU (fractional cluster.gpus_per_trial), and a trial
without a GPU share that leaves the GPU alone.

Marked `gpu` (not in the default suite): `python -m pytest -m gpu`. Each test skips where
no CUDA device is visible.
"""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

from algos.core.reporting import MemoryReporter
from algos.dqn import (
    DQNConfig,
    capture_step,
    make_optimizer,
    network_factory,
    train,
    train_phase,
)
from pipelines.config.compose import compose_config
from tests.helpers import check_frame_memory_on, run_cli, runs_of

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


def pong_phase(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """n minibatches of 32 random Pong-shaped transitions, on the GPU."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randint(0, 256, (32 * n, 4, 84, 84), dtype=torch.uint8, generator=g)
    return {
        "obs": obs.to(CUDA),
        "actions": torch.randint(0, 6, (32 * n,), generator=g).to(CUDA),
        "rewards": torch.randint(-1, 2, (32 * n,), generator=g).float().to(CUDA),
        "next_obs": torch.roll(obs, 1, 0).to(CUDA),
        "terminated": (torch.rand(32 * n, generator=g) < 0.05).to(CUDA),
    }


@pytest.fixture
def full_fp32():
    """Convolutions and matrix products in full fp32, not TF32 (PyTorch's default for
    cuDNN convolutions), so that two ways of computing the same steps agree to fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


TOLERANCE = {False: {"rtol": 1e-3, "atol": 1e-5}, True: {"rtol": 1e-2, "atol": 1e-3}}


@pytest.mark.parametrize("double", [False, True], ids=["dqn", "ddqn"])
def test_a_graphed_phase_takes_the_same_steps_as_the_eager_one(double, full_fp32):
    cfg = DQNConfig(batch_size=32, double=double, lr=1e-4)
    space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    torch.manual_seed(0)
    net = network_factory(cfg)(space, gym.spaces.Discrete(6)).to(CUDA)
    target = copy.deepcopy(net)
    eager, graphed_net = copy.deepcopy(net), copy.deepcopy(net)
    eager_opt = make_optimizer(eager, cfg.lr, CUDA)
    graph_opt = make_optimizer(graphed_net, cfg.lr, CUDA, capturable=True)
    before = [p.detach().clone() for p in graphed_net.parameters()]
    graphed = capture_step(graphed_net, target, graph_opt, cfg, space, CUDA)
    # Capture ran warm-up steps: they must have been undone.
    for p, q in zip(graphed_net.parameters(), before, strict=True):
        assert torch.equal(p, q)
    for seed in range(3):  # several phases: the graph's Adam state carries over
        phase = pong_phase(8, seed)
        a = train_phase(eager, target, eager_opt, phase, 8, cfg)
        b = train_phase(graphed_net, target, graph_opt, phase, 8, cfg, graphed)
        # The same steps, up to fp32 rounding (cuDNN may pick other kernels in a graph).
        # Double DQN's argmax turns a rounding difference at a near-tie into another
        # target: looser there (a graph reading stale inputs misses by orders more).
        torch.testing.assert_close(b, a, **TOLERANCE[double])
    for p, q in zip(graphed_net.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-6 if not double else 1e-4)


def test_the_frame_memory_on_the_gpu_samples_what_the_host_one_does():
    check_frame_memory_on(CUDA)


def test_dqn_learns_cartpole_with_the_learner_on_cuda_and_a_cpu_rollout_worker(ray_session):
    cfg = compose_config(["experiment=cartpole_dqn", "algo.num_rollout_workers=1",
                          "algo.device=cuda"]).cfg
    reporter = MemoryReporter()
    result = train(cfg.algo, cfg.env, seed=0, reporter=reporter)
    evals = [r["eval/mean_return"] for r in reporter.reports]
    assert evals[-1] >= 475, evals  # the final network, not only its best
    assert reporter.reports[-1]["perf/updates_per_s"] > 0
    assert result.network is not None


def test_two_trials_share_one_gpu_each_learner_on_cuda(workdir):
    result = run_cli("pipelines.sweep", [
        "experiment=cartpole_dqn", "algo.total_steps=30000", "algo.eval_every=10000",
        "seed=0,1", "cluster.gpus_per_trial=0.5", "cluster.num_gpus=1",
        "tracking.system_metrics_every_s=1",
    ], workdir, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    _, parents, children = runs_of(client, "sweeps")
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert parents[0].data.tags["cluster.gpus"] == "1"
    for c in children:
        assert c.data.tags["ray.gpu_ids"] == "0", c.data.tags  # both on the one GPU
        assert c.data.tags["learner.device"] == "cuda"
        assert "system/gpu_0_utilization_percentage" in c.data.metrics
    a, b = (c.info for c in children)
    assert a.start_time < b.end_time and b.start_time < a.end_time, "they did not overlap"


def test_a_trial_without_a_gpu_share_does_not_use_the_gpu(workdir):
    result = run_cli("pipelines.train", [
        "experiment=cartpole_dqn", "algo.total_steps=3000", "algo.eval_every=3000",
        "algo.num_rollout_workers=1", "cluster.gpus_per_trial=0",
    ], workdir, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run = runs_of(client, "dqn-cartpole")[1][0]
    assert run.data.tags["learner.device"] == "cpu", run.data.tags
    assert "ray.gpu_ids" not in run.data.tags
