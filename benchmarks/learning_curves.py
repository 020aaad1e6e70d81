"""Learning curves of the course experiments: every report of five seeds each.

Each experiment trains in this process, with no Ray and no MLflow, as a notebook would:
`get_algorithm(name).train(cfg.algo, cfg.env, seed, reporter)` with a MemoryReporter, the
config composed from `experiment=<name>` alone. Kept per experiment and seed: the (env
step, eval/score, eval/mean_return) of every report, the final eval/score and the wall
seconds. The table says how many seeds reach each experiment's pass mark at the end and
at their best report. The docs draw the curves from results/learning_curves.json.
Usage: python -m benchmarks.learning_curves [--seeds 0,1,2,3,4] [--experiments a,b]
"""

from __future__ import annotations

import argparse
import time

from algos.core import metrics as m
from algos.core.reporting import MemoryReporter
from algos.registry import get_algorithm
from benchmarks.common import median, table, write
from pipelines.config.compose import compose_config

PASS_MARKS = {
    # experiment: (metric, the least value that passes, what the mark is)
    "frozenlake_course": (m.EVAL_MEAN_RETURN, 1.0, "solved: every evaluation episode"),
    "taxi_course": (m.EVAL_SCORE, 4.5, "the course's pass mark"),
    "frozenlake_slippery": (m.EVAL_MEAN_RETURN, 0.717, "95% of the optimal policy's 0.755"),
    "frozenlake_slippery_mc": (m.EVAL_MEAN_RETURN, 0.717, "95% of the optimal policy's 0.755"),
    "cartpole_dqn": (m.EVAL_MEAN_RETURN, 475.0, "CartPole's solved threshold"),
    "cartpole_ddqn": (m.EVAL_MEAN_RETURN, 475.0, "CartPole's solved threshold"),
    "cartpole_reinforce": (m.EVAL_SCORE, 350.0, "the course's pass mark"),
}


def curve(experiment: str, seed: int) -> dict:
    """One training run of `experiment` on `seed`: its reports and its final score."""
    cfg = compose_config([f"experiment={experiment}"]).cfg
    reporter = MemoryReporter()
    start = time.perf_counter()
    get_algorithm(cfg.algo.name).train(cfg.algo, cfg.env, seed, reporter)
    seconds = time.perf_counter() - start
    reports = [[r["step"], r[m.EVAL_SCORE], r[m.EVAL_MEAN_RETURN]] for r in reporter.reports]
    return {"reports": reports, "final_score": reports[-1][1], "seconds": seconds}


def passes(run: dict, metric: str, least: float) -> tuple[bool, bool]:
    """(the last report reaches the mark, some report reaches it)."""
    column = 1 if metric == m.EVAL_SCORE else 2
    values = [r[column] for r in run["reports"]]
    return values[-1] >= least, max(values) >= least


def main() -> None:
    """Train, print the table, write results/learning_curves.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--experiments", default=",".join(PASS_MARKS))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    experiments: dict[str, dict] = {}
    rows = []
    for name in args.experiments.split(","):
        metric, least, what = PASS_MARKS[name]
        runs = {str(seed): curve(name, seed) for seed in seeds}
        experiments[name] = {"pass_mark": {"metric": metric, "at_least": least, "what": what},
                             "seeds": runs}
        marks = [passes(r, metric, least) for r in runs.values()]
        finals = [r["final_score"] for r in runs.values()]
        rows.append([name, f"{metric} >= {least:g}",
                     f"{sum(end for end, _ in marks)}/{len(runs)}",
                     f"{sum(best for _, best in marks)}/{len(runs)}",
                     sum(finals) / len(finals), min(finals), max(finals),
                     median([r["seconds"] for r in runs.values()])])
        print(f"{name}: final eval/score {[round(s, 2) for s in finals]}", flush=True)
    print(f"The course experiments, seeds {args.seeds}, trained in process")
    print(table(["experiment", "pass mark", "seeds at the mark at the end",
                 "seeds at the mark at their best report", "final eval/score, mean",
                 "min", "max", "seconds per run, median"], rows,
                title=f"Final evaluations over seeds {args.seeds}"))
    print(f"written to {write('learning_curves', {'seeds': seeds, 'experiments': experiments})}")


if __name__ == "__main__":
    main()
