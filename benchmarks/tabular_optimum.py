"""The tabular experiments against the optimum: value iteration on each env's known model.

FrozenLake's and Taxi's dynamics are published (`env.unwrapped.P`), so the optimal
policy of each experiment's discount is computed (algos/core/optimum.py), not learned. It
plays the experiment's own evaluation seeds with its step cap, and each experiment's
trained agents (seeds 0..N-1, in process: Q-learning as the experiment pins it, and Monte
Carlo control as its *_mc experiment does, with the same budget, discount and evaluation
seeds) are put beside it: mean return and score (mean - std), and each as a fraction of
the optimum's.

Usage: python -m benchmarks.tabular_optimum [--seeds 5]
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from algos.core.metrics import EVAL_MEAN_RETURN, EVAL_SCORE, EVAL_STD_RETURN
from benchmarks.common import table, timed, write

EXPERIMENTS = {
    # Q-learning's experiment: Monte Carlo's (tuned by sweep=monte_carlo_grid)
    "frozenlake_course": "frozenlake_mc",
    "frozenlake_slippery": "frozenlake_slippery_mc",
    "taxi_course": "taxi_mc",
}


def optimum(experiment: str) -> dict[str, Any]:
    """The optimal policy's figures on the experiment's evaluation seeds."""
    from algos.core.agents import TableAgent
    from algos.core.envs import make_env
    from algos.core.evaluation import play_episodes
    from algos.core.optimum import optimal_q_table
    from pipelines.config.compose import compose_and_check

    cfg = compose_and_check([f"experiment={experiment}"]).cfg
    env = make_env(cfg.env)
    agent = TableAgent(optimal_q_table(env, cfg.algo.gamma))
    env.close()
    mean, std, _ = play_episodes(cfg.env, cfg.algo.evaluation_seeds(), agent.act,
                                 cfg.algo.max_steps)
    return {"mean": mean, "std": std, "score": mean - std, "gamma": cfg.algo.gamma,
            "max_steps": cfg.algo.max_steps, "episodes": len(cfg.algo.evaluation_seeds())}


def trained(experiment: str, seeds: int) -> list[dict[str, float]]:
    """Each seed's final evaluation (mean, std, score) and its training seconds."""
    from algos.registry import get_algorithm
    from pipelines.config.compose import compose_and_check

    out = []
    for seed in range(seeds):
        cfg = compose_and_check([f"experiment={experiment}", f"seed={seed}"]).cfg
        algorithm = get_algorithm(cfg.algo.name)
        seconds, result = timed(lambda cfg=cfg, algorithm=algorithm: algorithm.train(
            cfg.algo, cfg.env, cfg.seed))
        metrics = result.metrics
        out.append({"mean": metrics[EVAL_MEAN_RETURN], "std": metrics[EVAL_STD_RETURN],
                    "score": metrics[EVAL_SCORE], "seconds": seconds})
    return out


def main() -> None:
    """Solve, train, print the table, write results/tabular_optimum.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    rows, data = [], {}
    for experiment, mc_experiment in EXPERIMENTS.items():
        best = optimum(experiment)
        data[experiment] = {"optimum": best, "trained": {}}
        rows.append([experiment, "optimal policy (value iteration)", best["mean"],
                     best["score"], 1.0, 1.0])
        for name, trained_as in (("q_learning", experiment), ("monte_carlo", mc_experiment)):
            runs = trained(trained_as, args.seeds)
            data[experiment]["trained"][name] = {"experiment": trained_as, "runs": runs}
            mean = float(np.mean([r["mean"] for r in runs]))
            score = float(np.mean([r["score"] for r in runs]))
            rows.append([experiment, f"{name} ({trained_as}), mean of {args.seeds} seeds",
                         mean, score,
                         mean / best["mean"], score / best["score"]])
            print(f"{experiment} {name}: mean return {mean:.3f} ({mean / best['mean']:.1%} "
                  f"of the optimum's {best['mean']:.3f})", flush=True)
    print(table(["experiment", "agent", "mean return", "score (mean - std)",
                 "mean return / optimum's", "score / optimum's"], rows,
                title=f"Final evaluation on each experiment's evaluation seeds, "
                      f"seeds 0-{args.seeds - 1}"))
    notes = ["The optimum: value iteration on env.unwrapped.P with the experiment's gamma "
             "(algos/core/optimum.py), its greedy policy played on the experiment's "
             "evaluation seeds with its step cap.",
             "Trained agents: their last evaluation (eval/*), on the same seeds; Monte "
             "Carlo as its *_mc experiment (the same budget, discount and seeds, its own "
             "step size, visits and epsilon decay)."]
    print(f"written to {write('tabular_optimum', {'seeds': args.seeds, **data}, notes)}")


if __name__ == "__main__":
    main()
