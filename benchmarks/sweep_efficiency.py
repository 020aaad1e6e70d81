"""Parallel efficiency of a sweep of short trials, and where its time goes.

16 trials of Q-learning on Taxi (course settings, 25,000 episodes, seeds 0..15), a few
seconds each, run as a user runs them: `python -m pipelines.sweep` from a fresh process,
Ray's start, MLflow logging, the summary and the exit included. Against two ideals, each
the same 16 trainings split over the cores in plain processes (no Ray, no MLflow):
- the course's own loop (the unit 2 notebook's, benchmarks.q_learning_taxi.course_loop),
  what issue 9 counts against: efficiency = ideal seconds / sweep command seconds;
- our loop (algos.q_learning.train), the stricter ratio: all that is not training.

The breakdown adds up the sweep's time: the driver's phases (perf/* metrics of the parent
run) and, inside Tune's fit, the trials' own time (perf/trial_* of the child runs) per
core, the rest of the fit being worker start-up and Tune's scheduling between trials.
Usage: python -m benchmarks.sweep_efficiency [--trials 16] [--episodes 25000] [--cpus N]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os

from algos.core.metrics import EVAL_SCORE
from benchmarks.common import median, run_sweep, table, timed, write
from pipelines.tracking.series import (
    RAY_SHUTDOWN_S,
    RAY_START_AND_MLFLOW_S,
    STARTUP_S,
    SUMMARY_S,
    SWEEP_WALL_S,
    TRIAL_CHECKPOINT_S,
    TRIAL_MODELS_S,
    TRIAL_REPORT_WAIT_S,
    TRIAL_SETUP_S,
    TRIAL_TEARDOWN_S,
    TRIAL_TEST_S,
    TRIAL_TRACKING_S,
    TRIAL_TRAIN_S,
    TUNE_SETUP_S,
)

OVERRIDES = ["experiment=taxi_course"]


def _train_ours(args: tuple[int, int]) -> float:
    from algos.q_learning import train
    from pipelines.config.compose import compose_config

    seed, episodes = args
    cfg = compose_config([*OVERRIDES, f"algo.episodes={episodes}", f"seed={seed}"]).cfg
    return train(cfg.algo, cfg.env, cfg.seed).metrics[EVAL_SCORE]


def _train_course(args: tuple[int, int]) -> float:
    from benchmarks.q_learning_taxi import course_loop
    from pipelines.config.compose import compose_config

    seed, episodes = args
    cfg = compose_config([*OVERRIDES, f"algo.episodes={episodes}", f"seed={seed}"]).cfg
    return course_loop(cfg.algo, seed)[1]


def split_over_cores(fn, trials: int, episodes: int, cpus: int) -> float:
    """Seconds to run the trainings in `cpus` plain processes (started and importing
    before the clock starts)."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(cpus) as pool:
        pool.map(_warm, range(cpus))
        seconds, _ = timed(lambda: pool.map(fn, [(s, episodes) for s in range(trials)],
                                            chunksize=1))
    return seconds


def _warm(_: int) -> None:
    import algos.q_learning  # noqa: F401
    import benchmarks.q_learning_taxi  # noqa: F401
    import pipelines.config.compose  # noqa: F401


def breakdown(m: dict, cpus: int) -> list[list]:
    """Rows (what, seconds) that add up to the command's seconds."""
    ph, tr = m["phases"], m["trial_sums"]
    fit = ph[SWEEP_WALL_S]
    lanes = {k: v / cpus for k, v in tr.items()}
    rows = [
        ["driver start-up: interpreter, imports, validating every trial's config",
         ph.get(STARTUP_S, 0.0)],
        ["Ray start, and meanwhile the MLflow experiment and parent run",
         ph.get(RAY_START_AND_MLFLOW_S, 0.0)],
        ["Tune set-up", ph.get(TUNE_SETUP_S, 0.0)],
        ["Tune fit, per core:", fit],
        ["  trials training (the algorithm's own loop)", lanes.get(TRIAL_TRAIN_S, 0)],
        ["  trial set-up: compose, MLflow run, tags, system monitor",
         lanes.get(TRIAL_SETUP_S, 0)],
        ["  metric writes to MLflow", lanes.get(TRIAL_TRACKING_S, 0)],
        ["  checkpoints", lanes.get(TRIAL_CHECKPOINT_S, 0)],
        ["  waiting in tune.report for the driver", lanes.get(TRIAL_REPORT_WAIT_S, 0)],
        ["  held-out test: the best agent played on seeds no evaluation saw",
         lanes.get(TRIAL_TEST_S, 0)],
        ["  models: the final and best agents logged as MLflow models",
         lanes.get(TRIAL_MODELS_S, 0)],
        ["  trial teardown: last metrics, last system sample, run closed",
         lanes.get(TRIAL_TEARDOWN_S, 0)],
        ["  worker start-up and imports, Tune's scheduling between trials",
         fit - sum(lanes.values())],
        ["Ray shutdown", ph.get(RAY_SHUTDOWN_S, 0.0)],
        ["summary: statistics, plots, artifacts (beyond Ray's shutdown, which it overlaps)",
         ph.get(SUMMARY_S, 0.0)],
    ]
    accounted = sum(v for label, v in rows if not label.startswith("  "))
    rows.append(["the rest: failures, the parent run closed, the process's exit",
                 m["command_s"] - accounted])
    rows.append(["command, end to end", m["command_s"]])
    return rows


def main() -> None:
    """Measure, print the tables, write results/sweep_efficiency.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--episodes", type=int, default=25_000)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=2,
                        help="rounds of (course, ours, sweep), in turn; medians reported")
    args = parser.parse_args()
    rounds = []
    for _ in range(args.repeats):
        course = split_over_cores(_train_course, args.trials, args.episodes, args.cpus)
        ours = split_over_cores(_train_ours, args.trials, args.episodes, args.cpus)
        m = run_sweep([*OVERRIDES, f"algo.episodes={args.episodes}",
                       f"seed=range(0,{args.trials})", f"cluster.num_cpus={args.cpus}"])
        rounds.append((course, ours, m))
        print(f"round: course {course:.1f} s, ours {ours:.1f} s, sweep {m['command_s']:.1f} s "
              f"(efficiency {course / m['command_s']:.3f} and {ours / m['command_s']:.3f})")
    course = median([r[0] for r in rounds])
    ours = median([r[1] for r in rounds])
    m = sorted((r[2] for r in rounds), key=lambda m: m["command_s"])[(len(rounds) - 1) // 2]
    command = median([r[2]["command_s"] for r in rounds])
    print(f"{args.trials} Q-learning trials on Taxi ({args.episodes:,} episodes each), "
          f"{args.cpus} CPUs, median of {args.repeats} rounds (the breakdown: the median "
          "round's sweep)")
    print(table(["how", "seconds", "sweep efficiency against it"], [
        [f"course loops split over {args.cpus} processes (the ideal)", course,
         course / command],
        [f"our loops split over {args.cpus} processes", ours, ours / command],
        ["python -m pipelines.sweep, end to end", command, "-"],
    ]))
    print()
    rows = breakdown(m, args.cpus)
    print(table(["where the sweep's time goes", "seconds"], rows))
    data = {"trials": args.trials, "episodes": args.episodes, "cpus": args.cpus,
            "course_split_s": course, "ours_split_s": ours, "sweep": m,
            "efficiency_vs_course": course / command, "efficiency_vs_ours": ours / command,
            "breakdown": rows, "rounds": [[r[0], r[1], r[2]["command_s"]] for r in rounds]}
    print(f"written to {write('sweep_efficiency', data)}")


if __name__ == "__main__":
    main()
