"""Pong DQN end to end: env steps and learner updates per second of a real training run.

algos.dqn.train with experiment=pong_dqn's settings (Nature CNN, batch 32, one update per
4 env steps, frame memory, rollout workers on Ray), shortened: a 100,000-transition
memory, --learning-starts steps of sampling only (reported twice: the first report holds
the workers' start-up, the second is the workers' steady rate), then --steps of learning
reported every --report-every steps: each report's env steps/s and learner updates/s (the
evaluation after each report is not counted). On a GPU machine this is the one script
to run: the learner takes CUDA when there is one (--device auto), with its frames in GPU
memory (--replay-device learner) and its steps as CUDA graphs unless --no-cuda-graph.
With --acting cpu,learner both acting modes run one after the other in this process
(algo.acting: each worker's CPU copy of the network, or the learner's network answering
every worker at once), each with its own table.
Usage: python -m benchmarks.pong_dqn_throughput [--steps 20000] [--learning-starts 10000]
       [--workers 2] [--envs-per-worker 4] [--acting cpu[,learner]] [--rollout-steps N]
       [--device auto]
       [--replay-device cpu|learner] [--no-cuda-graph] [--name pong_dqn_throughput]
"""

from __future__ import annotations

import argparse
import os

import torch

from algos.core.metrics import ENV_STEPS_PER_S, UPDATES_PER_S
from algos.core.networks import resolve_device
from algos.core.reporting import MemoryReporter
from algos.dqn import train
from benchmarks.common import table, write
from pipelines.config.compose import compose_config


def parse_args() -> argparse.Namespace:
    """The command line (the module's docstring says what each flag does)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--learning-starts", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--envs-per-worker", type=int, default=4)
    parser.add_argument("--rollout-steps", type=int, default=None,
                        help="env steps per worker request (default: the experiment's)")
    parser.add_argument("--acting", default="cpu",
                        help="comma-separated acting modes to measure: cpu, learner")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--replay-device", default=None, choices=("cpu", "learner"),
                        help="where the frames live (default: the experiment's)")
    parser.add_argument("--no-cuda-graph", action="store_true")
    parser.add_argument("--report-every", type=int, default=None,
                        help="env steps between learning reports (default: --steps / 4)")
    parser.add_argument("--name", default="pong_dqn_throughput", help="results file name")
    args = parser.parse_args()
    for mode in args.acting.split(","):
        if mode not in ("cpu", "learner"):
            parser.error(f"--acting: {mode!r} is not cpu or learner")
    return args


def overrides_of(args: argparse.Namespace) -> list[str]:
    """pong_dqn, shortened: reports every `every` env steps, with the defaults two while
    only sampling (the first with the workers' start-up), then four while learning."""
    start = args.learning_starts
    every = args.report_every or max(1, args.steps // 4)
    overrides = [
        "experiment=pong_dqn", f"algo.total_steps={start + args.steps}",
        "algo.buffer_size=100000", f"algo.learning_starts={start}",
        f"algo.eval_every={every}", "algo.eval_episodes=1",
        f"algo.num_rollout_workers={args.workers}",
        f"algo.envs_per_worker={args.envs_per_worker}", f"algo.device={args.device}",
        "env.max_episode_frames=4000",  # a short evaluation episode
        f"algo.cuda_graph={not args.no_cuda_graph}",
    ]
    if args.rollout_steps is not None:
        overrides.append(f"algo.rollout_steps={args.rollout_steps}")
    if args.replay_device:
        overrides.append(f"algo.replay_device={args.replay_device}")
    return overrides


def main() -> None:
    """Measure, print the table, write results/pong_dqn_throughput.json."""
    args = parse_args()
    import ray

    overrides = overrides_of(args)
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, args.workers + 1),
             include_dashboard=False, logging_level="ERROR")
    data: dict = {"args": vars(args), "modes": {}}
    try:
        for mode in args.acting.split(","):
            cfg = compose_config([*overrides, f"algo.acting={mode}"]).cfg
            reporter = MemoryReporter()
            train(cfg.algo, cfg.env, seed=0, reporter=reporter)
            data["modes"][mode] = reporter.reports
    finally:
        ray.shutdown()
    device = resolve_device(args.device)
    algo = cfg.algo
    data.update({"device": str(device), "replay_device": algo.replay_device,
                 "cuda_graph": algo.cuda_graph})
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    for mode, reports in data["modes"].items():
        rows = []
        for r in reports:
            phase = ("learning" if r[UPDATES_PER_S] > 0 else
                     "sampling only, start-up" if r is reports[0] else "sampling only")
            rows.append([r["step"], phase, r[ENV_STEPS_PER_S], r[UPDATES_PER_S]])
        print(f"Pong DQN on {name} ({device}), acting={mode}, {args.workers} rollout workers "
              f"x {args.envs_per_worker} envs, {os.cpu_count()} CPUs, frames on "
              f"{algo.replay_device}, CUDA graph {algo.cuda_graph and device.type == 'cuda'}")
        print(table(["env steps at report", "phase", "env steps/s", "updates/s"], rows,
                    title=f"acting={mode}"))
    print(f"written to {write(args.name, data)}")


if __name__ == "__main__":
    main()
