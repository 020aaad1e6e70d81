"""What Population Based Training buys on CartPole DQN, against random search and ASHA.

Each method trains a population of the same size (4 members, seeds 4r..4r+3 in repeat r)
for the same env steps per member (50,000, a constant learning rate: lr_end=null), from
the same ranges, run as a user runs them (`python -m pipelines.sweep`, its own sqlite
store per sweep):
- random: each member's values drawn once (Tune's BasicVariantGenerator, seeded by the
  repeat), kept for the whole run;
- asha: the same draws, ASHA stopping the weaker members at rungs of 2, 4 and 8 reports
  (reduction factor 2): fewer env steps spent, none given to anyone else;
- pbt: the same first draws, then every 10,000 env steps the bottom quarter copies a
  top-quarter member's networks and optimizer and explores (x0.8 or x1.2, or a new draw
  with probability 0.25, clipped to the range).

The starting range is deliberately poor: the learning rate is drawn from
tag(log, interval(1e-3, 1e-1)), whose geometric middle (1e-2) is 10 times the tuned 1e-3
of experiment=cartpole_dqn; exploration fraction and target interval from the ranges of
conf/sweep/cartpole_dqn_pbt.yaml. Reported, per method: the IQM over repeats of the best
member's final evaluation (10 episodes, greedy) and of the population's mean final
evaluation, each repeat's figures, and the env steps spent.

Usage: python -m benchmarks.pbt [--repeats 3] [--steps 50000] [--cpus N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from typing import Any

import numpy as np

from algos.core.metrics import ENV_STEPS, EVAL_MEAN_RETURN
from benchmarks.common import ROOT, table, timed, write
from pipelines.tracking.series import EXPLOITS

POPULATION = 4
RANGES = {
    "algo.lr": "tag(log, interval(1e-3, 1e-1))",
    "algo.exploration_fraction": "interval(0.05, 0.3)",
    "algo.target_update_interval": "tag(log, interval(10, 1000))",
}
EVAL_EVERY = 5_000
METHODS = ("random", "asha", "pbt")


def overrides(method: str, repeat: int, steps: int, cpus: int) -> list[str]:
    """The sweep's command-line overrides for one method and repeat."""
    reports = steps // EVAL_EVERY
    common = ["experiment=cartpole_dqn", f"seed=range({POPULATION * repeat},"
              f"{POPULATION * (repeat + 1)})", f"algo.total_steps={steps}", "algo.lr_end=null",
              f"algo.eval_every={EVAL_EVERY}", f"cluster.num_cpus={cpus}",
              "tracking.system_metrics_every_s=0", "sweep.name=bench"]
    ranges = [f"{key}={value}" for key, value in RANGES.items()]
    if method == "random":
        return [*common, *ranges]
    if method == "asha":
        return [*common, *ranges, "sweep.scheduler.name=asha", f"sweep.scheduler.max_t={reports}",
                "sweep.scheduler.grace_period=2", "sweep.scheduler.reduction_factor=2"]
    mutations = ", ".join(f"{key}:'{value}'" for key, value in RANGES.items())
    return ["sweep=cartpole_dqn_pbt", *common, f"sweep.scheduler.mutations={{{mutations}}}",
            "sweep.scheduler.perturbation_interval=10000"]


def run(method: str, repeat: int, steps: int, cpus: int) -> dict[str, Any]:
    """One sweep, from a fresh process in an empty folder: each member's final evaluation,
    env steps and first values, the sweep's seconds and its exploits."""
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as work:
        args = [sys.executable, "-m", "pipelines.sweep", *overrides(method, repeat, steps, cpus)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        seconds, proc = timed(lambda: subprocess.run(args, cwd=work, env=env,
                                                     capture_output=True, text=True))
        if proc.returncode != 0:
            raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-3000:])
        client = MlflowClient(f"sqlite:///{work}/mlflow.db")
        experiments = [e.experiment_id for e in client.search_experiments()]
        members = [r for r in client.search_runs(experiments, max_results=1000)
                   if "mlflow.parentRunId" in r.data.tags]
        if len(members) != POPULATION:
            raise RuntimeError(f"{method}: {len(members)} members, not {POPULATION}")
        finals = [r.data.metrics[EVAL_MEAN_RETURN] for r in members]
        return {
            "seconds": seconds,
            "finals": finals,
            "env_steps": [r.data.metrics[ENV_STEPS] for r in members],
            "first_lr": [float(r.data.params["algo.lr"]) for r in members],
            "exploits": sum(r.data.metrics.get(EXPLOITS, 0) for r in members),
            "best": max(finals),
            "population": float(np.mean(finals)),
        }


def main() -> None:
    """Measure, print the tables, write results/pbt.json."""
    from pipelines.results.stats import iqm

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for repeat in range(args.repeats):  # methods in turn, so drift hits them alike
        for method in METHODS:
            r = run(method, repeat, args.steps, args.cpus)
            results[method].append(r)
            print(f"repeat {repeat} {method}: best {r['best']:.1f}, population "
                  f"{r['population']:.1f}, exploits {r['exploits']:.0f}, {r['seconds']:.0f} s",
                  flush=True)
    rows = []
    for method in METHODS:
        runs = results[method]
        best, population = [r["best"] for r in runs], [r["population"] for r in runs]
        rows.append([method, float(iqm(np.array(best))), float(iqm(np.array(population))),
                     " / ".join(f"{v:.0f}" for v in best),
                     " / ".join(f"{v:.0f}" for v in population),
                     float(np.mean([sum(r["env_steps"]) for r in runs])),
                     float(np.mean([r["exploits"] for r in runs])),
                     float(np.mean([r["seconds"] for r in runs]))])
    title = (f"CartPole DQN, {POPULATION} members x {args.steps:,} env steps, lr drawn "
             f"from {RANGES['algo.lr']}, {args.repeats} repeats")
    print(table(["method", "best member's final eval (IQM)", "population's final eval (IQM)",
                 "best, per repeat", "population, per repeat", "env steps per sweep",
                 "exploits per sweep", "seconds per sweep"], rows, title=title))
    notes = [f"Final evaluation: eval/mean_return of each member's last evaluation (10 "
             f"greedy episodes, every {EVAL_EVERY:,} env steps); 500 is CartPole-v1's "
             "most. IQM over repeats (with 3 repeats, the mean).",
             "ASHA's stopped members keep their last evaluation, at fewer env steps."]
    data = {"population": POPULATION, "steps": args.steps, "ranges": RANGES,
            "repeats": args.repeats, "cpus": args.cpus, "results": results}
    print(f"written to {write('pbt', data, notes)}")


if __name__ == "__main__":
    main()
