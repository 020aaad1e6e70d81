"""DQN on CartPole-v1: ours against RLlib's DQN, side by side in one run.

Both take experiment=cartpole_dqn's hyperparameters (read from conf/, so they stay in
step): Adam, gamma, batch, uniform replay, learning start, gradient steps per train_freq
env steps, the epsilon schedule (it ends at the same env step whatever the budget), the
MLP, no dueling, the same double flag, on this machine's CPU. RLlib samples in its
learner's process, with its uniform EpisodeReplayBuffer, n_step 1, training_intensity =
gradient_steps x batch / train_freq and the target synced every train_freq env steps (ours
syncs between training phases). Ours samples in the learner (0 workers), and with 1 rollout
worker sampling while the learner trains.

Measured: wall seconds and env steps until the mean return of the last 20 training
episodes reaches 475, and env steps per second. Ours runs each seed of --seeds (the median
is the headline: one seed is one draw of a noisy curve); RLlib runs seed 0 (its budget is
minutes). Ours reports (and evaluates one greedy episode) every 2,000 steps, which its time
includes.
Usage: python -m benchmarks.cartpole_dqn [--double] [--seeds 0,1,2] [--max-steps 100000]
       [--max-seconds 300] [--skip-rllib]
"""

from __future__ import annotations

import argparse
import time
from collections import deque

from algos.core.metrics import EPISODE_RETURN
from algos.dqn import train
from benchmarks.common import median, table, write
from pipelines.config.compose import compose_config

GOAL, WINDOW = 475.0, 20


class _Reached(Exception):
    pass


class GoalWatcher:
    """A Reporter that notes when the last-20-episode mean first reaches the goal."""

    def __init__(self, max_seconds: float) -> None:
        self.window: deque[float] = deque(maxlen=WINDOW)
        self.start = time.perf_counter()
        self.max_seconds = max_seconds
        self.reached: tuple[float, int] | None = None
        self.steps = 0

    def report(self, step, metrics, history=None, state=None, final=False) -> None:
        self.steps = step
        for s, value in (history or {}).get(EPISODE_RETURN, []):
            self.window.append(value)
            if len(self.window) == WINDOW and sum(self.window) / WINDOW >= GOAL:
                self.reached = (time.perf_counter() - self.start, s)
                raise _Reached
        if time.perf_counter() - self.start > self.max_seconds:
            raise _Reached


def settings(double: bool):
    """experiment=cartpole_dqn's algo settings, and the env step where epsilon ends."""
    algo = compose_config(["experiment=cartpole_dqn", f"algo.double={double}"]).cfg.algo
    return algo, int(algo.exploration_fraction * algo.total_steps)


def ours(double: bool, max_steps: int, max_seconds: float, workers: int = 0,
         seed: int = 0) -> dict:
    """Our DQN until the goal (or the budget), sampling in the learner (0 workers) or on
    rollout-worker actors that sample while the learner trains."""
    _, decay = settings(double)
    cfg = compose_config(["experiment=cartpole_dqn", f"algo.double={double}",
                          f"algo.total_steps={max_steps}", "algo.eval_every=2000",
                          "algo.eval_episodes=1", "algo.device=cpu",
                          f"algo.num_rollout_workers={workers}",
                          f"algo.exploration_fraction={decay / max_steps}"]).cfg
    watcher = GoalWatcher(max_seconds)
    try:
        train(cfg.algo, cfg.env, seed=seed, reporter=watcher)
    except _Reached:
        pass
    seconds = time.perf_counter() - watcher.start
    return {"seed": seed,
            "reached_s": watcher.reached[0] if watcher.reached else None,
            "reached_steps": watcher.reached[1] if watcher.reached else None,
            "steps": watcher.steps, "seconds": seconds, "steps_per_s": watcher.steps / seconds}


def rllib(double: bool, max_steps: int, max_seconds: float) -> dict:
    """RLlib's DQN (new API stack) with the same settings, until the goal or the budget."""
    import ray
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    algo, decay = settings(double)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    config = (
        DQNConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1)
        .reporting(metrics_num_episodes_for_smoothing=WINDOW)
        .training(
            lr=algo.lr, gamma=algo.gamma, train_batch_size_per_learner=algo.batch_size,
            replay_buffer_config={"type": "EpisodeReplayBuffer",
                                  "capacity": algo.buffer_size},
            num_steps_sampled_before_learning_starts=algo.learning_starts,
            target_network_update_freq=algo.train_freq, double_q=double, dueling=False,
            n_step=1,
            training_intensity=algo.gradient_steps * algo.batch_size / algo.train_freq,
            epsilon=[(0, algo.epsilon_start), (decay, algo.epsilon_end)], noisy=False,
            grad_clip=algo.max_grad_norm, grad_clip_by="global_norm",
        )
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=list(algo.hidden_sizes),
                                                   head_fcnet_hiddens=[]))
        .debugging(seed=0)
    )
    built = config.build_algo()
    start = time.perf_counter()
    reached, steps = None, 0
    while steps < max_steps and time.perf_counter() - start < max_seconds:
        result = built.train()
        runners = result.get("env_runners", {})
        steps = int(result.get("num_env_steps_sampled_lifetime",
                               runners.get("num_env_steps_sampled_lifetime", steps)))
        mean = runners.get("episode_return_mean")
        if mean is not None and mean >= GOAL:
            reached = (time.perf_counter() - start, steps)
            break
    seconds = time.perf_counter() - start
    built.stop()
    ray.shutdown()
    return {"seed": 0, "reached_s": reached[0] if reached else None,
            "reached_steps": reached[1] if reached else None,
            "steps": steps, "seconds": seconds, "steps_per_s": steps / seconds}


def summary(runs: list[dict]) -> dict:
    """Median seconds and steps to the goal over the runs (a run that did not reach it
    counts as infinitely slow), how many reached it, and the median env steps/s."""
    def med(key):
        values = [r[key] if r[key] is not None else float("inf") for r in runs]
        m = median(values)
        return None if m == float("inf") else m

    return {"runs": runs, "reached": sum(r["reached_s"] is not None for r in runs),
            "median_reached_s": med("reached_s"), "median_reached_steps": med("reached_steps"),
            "median_steps_per_s": median([r["steps_per_s"] for r in runs])}


def main() -> None:
    """Measure, print the table, write results/cartpole_dqn.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--double", action="store_true")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--skip-rllib", action="store_true")
    args = parser.parse_args()
    import ray

    seeds = [int(s) for s in args.seeds.split(",")]
    results = {"ours": summary([ours(args.double, args.max_steps, args.max_seconds, 0, s)
                                for s in seeds])}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    results["ours, 1 rollout worker"] = summary(
        [ours(args.double, args.max_steps, args.max_seconds, 1, s) for s in seeds])
    ray.shutdown()
    if not args.skip_rllib:
        results["rllib"] = summary([rllib(args.double, args.max_steps, args.max_seconds)])

    def show(x):
        return "not reached" if x is None else x

    rows = []
    for name, m in results.items():
        runs = m["runs"]
        rows.append([name, ", ".join(str(r["seed"]) for r in runs),
                     f"{m['reached']}/{len(runs)}", show(m["median_reached_s"]),
                     show(m["median_reached_steps"]), m["median_steps_per_s"]])
        if len(runs) > 1:
            rows += [[f"  seed {r['seed']}", "", "", show(r["reached_s"]),
                      show(r["reached_steps"]), r["steps_per_s"]] for r in runs]
    if "rllib" in results:
        o, r = results["ours"], results["rllib"]
        rows.append(["ratio ours/RLlib", "", "",
                     (r["median_reached_s"] / o["median_reached_s"])
                     if o["median_reached_s"] and r["median_reached_s"] else "-",
                     "-", o["median_steps_per_s"] / r["median_steps_per_s"]])
    name = "DDQN" if args.double else "DQN"
    print(f"{name} on CartPole-v1 until the last {WINDOW} training episodes average "
          f"{GOAL:.0f} (budget {args.max_steps:,} steps, {args.max_seconds:.0f} s per run)")
    print(table(["implementation", "seeds", "reached", "median seconds to 475",
                 "median env steps to 475", "env steps/s"], rows))
    print(f"written to {write('cartpole_dqn', results)}")  # DDQN: a run of its own


if __name__ == "__main__":
    main()
