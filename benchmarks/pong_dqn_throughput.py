"""Pong DQN end to end: env steps and learner updates per second of a real training run.

algos.dqn.train with experiment=pong_dqn's settings (Nature CNN, batch 32, one update per
4 env steps, frame memory, rollout workers on Ray), shortened: a 100,000-transition
memory, --learning-starts steps of sampling only, then --steps of learning, reporting
every --learning-starts steps: each report's env steps/s and learner updates/s (the
evaluation after each report is not counted). On a GPU machine this is the one script
to run: the learner takes CUDA when there is one (--device auto).
Usage: python -m benchmarks.pong_dqn_throughput [--steps 20000] [--learning-starts 10000]
       [--workers 2] [--envs-per-worker 4] [--rollout-steps N] [--device auto]
"""

from __future__ import annotations

import argparse
import os

import torch

from algos.core.networks import resolve_device
from algos.core.reporting import MemoryReporter
from algos.dqn import train
from benchmarks.common import table, write
from pipelines.config import compose_config


def main() -> None:
    """Measure, print the table, write results/pong_dqn_throughput.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--learning-starts", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--envs-per-worker", type=int, default=4)
    parser.add_argument("--rollout-steps", type=int, default=None,
                        help="env steps per worker request (default: the experiment's)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    import ray

    start = args.learning_starts
    cfg = compose_config([
        "experiment=pong_dqn", f"algo.total_steps={start + args.steps}",
        "algo.buffer_size=100000", f"algo.learning_starts={start}",
        f"algo.eval_every={start}", "algo.eval_episodes=1",
        f"algo.num_rollout_workers={args.workers}",
        f"algo.envs_per_worker={args.envs_per_worker}", f"algo.device={args.device}",
        "env.max_episode_frames=4000",  # a short evaluation episode
    ] + ([] if args.rollout_steps is None else [f"algo.rollout_steps={args.rollout_steps}"])
    ).cfg
    ray.init(num_cpus=max(os.cpu_count() or 1, args.workers + 1), include_dashboard=False,
             logging_level="ERROR")
    reporter = MemoryReporter()
    try:
        train(cfg.algo, cfg.env, seed=0, reporter=reporter)
    finally:
        ray.shutdown()
    device = resolve_device(args.device)
    rows, data = [], {"device": str(device), "args": vars(args), "reports": reporter.reports}
    for i, r in enumerate(reporter.reports):
        phase = "sampling only (and worker start-up)" if i == 0 else "learning"
        rows.append([r["step"], phase, r["perf/env_steps_per_s"], r["perf/updates_per_s"]])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"Pong DQN on {name} ({device}), {args.workers} rollout workers x "
          f"{args.envs_per_worker} envs, {os.cpu_count()} CPUs")
    print(table(["env steps at report", "phase", "env steps/s", "updates/s"], rows))
    print(f"written to {write('pong_dqn_throughput', data)}")


if __name__ == "__main__":
    main()
