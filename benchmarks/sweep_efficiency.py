"""Parallel efficiency of a sweep of short trials: Tune on this machine's cores against
running the same trials one after another in one process.

16 trials of Q-learning on Taxi (course settings, 25,000 episodes, seeds 0..15), each a few
seconds. The sweep runs through the real command line (python -m pipelines.sweep), with
MLflow logging, with and without actor reuse; its time is Tune's fit time as the parent
MLflow run records it (perf/sweep_wall_s), plus the whole command's wall time.
efficiency = sequential seconds / (cores x sweep seconds).
Usage: python -m benchmarks.sweep_efficiency [--trials 16] [--episodes 25000]
"""

from __future__ import annotations

import argparse
import os

from algos.q_learning import train
from benchmarks.common import run_sweep, table, timed, write
from pipelines.config import compose_config


def sequential(trials: int, episodes: int) -> float:
    """Seconds to train the trials one after another, in this process, without Tune."""
    total = 0.0
    for seed in range(trials):
        cfg = compose_config(["experiment=taxi_course", f"algo.episodes={episodes}",
                              f"seed={seed}"]).cfg
        total += timed(lambda cfg=cfg: train(cfg.algo, cfg.env, cfg.seed))[0]
    return total


def sweep(trials: int, episodes: int, cpus: int, reuse: bool) -> dict[str, float]:
    """Tune's fit seconds, the whole command's seconds, and the start-up (fit start to the
    first trial's MLflow run: worker processes starting and importing) of one sweep."""
    return run_sweep([
        "experiment=taxi_course", f"algo.episodes={episodes}", f"seed=range(0,{trials})",
        f"cluster.num_cpus={cpus}", f"cluster.reuse_actors={str(reuse).lower()}",
    ])


def main() -> None:
    """Measure, print the table, write results/sweep_efficiency.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--episodes", type=int, default=25_000)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    args = parser.parse_args()
    seq = sequential(args.trials, args.episodes)
    rows = [["one after another, one process", seq, "-", "-", "-", "-"]]
    data = {"trials": args.trials, "episodes": args.episodes, "cpus": args.cpus,
            "sequential_s": seq}
    for reuse in (True, False):
        m = sweep(args.trials, args.episodes, args.cpus, reuse)
        m["efficiency"] = seq / (args.cpus * m["fit_s"])
        m["efficiency_after_startup"] = seq / (args.cpus * (m["fit_s"] - m["startup_s"]))
        label = f"Tune sweep, {args.cpus} CPUs, reuse_actors={reuse}"
        rows.append([label, m["fit_s"], m["command_s"], m["startup_s"], m["efficiency"],
                     m["efficiency_after_startup"]])
        data[f"reuse_{reuse}"] = m
    print(f"{args.trials} Q-learning trials (Taxi, {args.episodes:,} episodes each, "
          f"{seq / args.trials:.2f} s of training each)")
    print(table(["how", "seconds", "command seconds", "start-up seconds",
                 "parallel efficiency", "efficiency after start-up"], rows))
    print(f"written to {write('sweep_efficiency', data)}")


if __name__ == "__main__":
    main()
