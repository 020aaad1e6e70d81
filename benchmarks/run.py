"""Run every benchmark in turn: python -m benchmarks.run (make bench). Minutes: the
CartPole DQN comparison alone takes about 7 on 2 cores (RLlib's 300-second budget)."""

from __future__ import annotations

import runpy
import sys

BENCHMARKS = [
    "benchmarks.q_learning_taxi",
    "benchmarks.tabular_optimum",
    "benchmarks.sweep_efficiency",
    "benchmarks.pbt",
    "benchmarks.cluster_scale",
    "benchmarks.cartpole_dqn",
    "benchmarks.dqn_learner",
    "benchmarks.atari_sampling",
    "benchmarks.replay_memory",
    "benchmarks.pong_dqn_throughput",
    "benchmarks.cartpole_reinforce",
    "benchmarks.learning_curves",
    "benchmarks.tracking_load",
]


def main() -> None:
    """Each benchmark prints its table and writes benchmarks/results/<name>.json."""
    for name in BENCHMARKS:
        print(f"\n## {name}\n", flush=True)
        sys.argv = [name]
        runpy.run_module(name, run_name="__main__")


if __name__ == "__main__":
    main()
