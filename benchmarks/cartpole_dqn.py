"""DQN on CartPole-v1: ours against RLlib's DQN, side by side in one run.

Ours sampling in the learner's process, and with 1 rollout worker sampling while the
learner trains. Both with the same hyperparameters (experiment=cartpole_dqn: Adam 2.3e-3,
gamma 0.99,
batch 64, 100k uniform replay, learning from 1,000 steps, 128 gradient steps per 256 env
steps, epsilon 1.0 to 0.04 over 8,000 steps, a [256, 256] MLP, no dueling, the same
double flag), on this machine's CPU; RLlib samples in its learner's process. RLlib is
configured with its uniform EpisodeReplayBuffer, n_step 1, training_intensity 32 (= 128
x 64 / 256). Measured: wall seconds and env steps until the mean return of the last 20
training episodes reaches 475, and env steps per second. Ours reports (and evaluates
one greedy episode) every 2,000 steps, which its time includes.
Usage: python -m benchmarks.cartpole_dqn [--double] [--max-steps 100000] [--max-seconds 300]
"""

from __future__ import annotations

import argparse
import time
from collections import deque

from algos.dqn import train
from benchmarks.common import table, write
from pipelines.config import compose_config

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
        for s, value in (history or {}).get("train/episode_return", []):
            self.window.append(value)
            if len(self.window) == WINDOW and sum(self.window) / WINDOW >= GOAL:
                self.reached = (time.perf_counter() - self.start, s)
                raise _Reached
        if time.perf_counter() - self.start > self.max_seconds:
            raise _Reached


def ours(double: bool, max_steps: int, max_seconds: float, workers: int = 0) -> dict:
    """Our DQN until the goal (or the budget), sampling in the learner (0 workers) or on
    rollout-worker actors that sample while the learner trains."""
    # The same schedule as RLlib's below: epsilon reaches 0.04 at 8,000 steps, whatever
    # the budget (exploration_fraction is a fraction of total_steps).
    cfg = compose_config(["experiment=cartpole_dqn", f"algo.double={double}",
                          f"algo.total_steps={max_steps}", "algo.eval_every=2000",
                          "algo.eval_episodes=1", "algo.device=cpu",
                          f"algo.num_rollout_workers={workers}",
                          f"algo.exploration_fraction={8000 / max_steps}"]).cfg
    watcher = GoalWatcher(max_seconds)
    try:
        train(cfg.algo, cfg.env, seed=0, reporter=watcher)
    except _Reached:
        pass
    seconds = time.perf_counter() - watcher.start
    return {"reached_s": watcher.reached[0] if watcher.reached else None,
            "reached_steps": watcher.reached[1] if watcher.reached else None,
            "steps": watcher.steps, "seconds": seconds, "steps_per_s": watcher.steps / seconds}


def rllib(double: bool, max_steps: int, max_seconds: float) -> dict:
    """RLlib's DQN (new API stack) with the same settings, until the goal or the budget."""
    import ray
    from ray.rllib.algorithms.dqn import DQNConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    config = (
        DQNConfig()
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1)
        .reporting(metrics_num_episodes_for_smoothing=WINDOW)
        .training(
            lr=2.3e-3, gamma=0.99, train_batch_size_per_learner=64,
            replay_buffer_config={"type": "EpisodeReplayBuffer", "capacity": 100_000},
            num_steps_sampled_before_learning_starts=1000,
            target_network_update_freq=256, double_q=double, dueling=False, n_step=1,
            training_intensity=32, epsilon=[(0, 1.0), (8000, 0.04)], noisy=False,
        )
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[256, 256],
                                                   head_fcnet_hiddens=[]))
        .debugging(seed=0)
    )
    algo = config.build_algo()
    start = time.perf_counter()
    reached, steps = None, 0
    while steps < max_steps and time.perf_counter() - start < max_seconds:
        result = algo.train()
        runners = result.get("env_runners", {})
        steps = int(result.get("num_env_steps_sampled_lifetime",
                               runners.get("num_env_steps_sampled_lifetime", steps)))
        mean = runners.get("episode_return_mean")
        if mean is not None and mean >= GOAL:
            reached = (time.perf_counter() - start, steps)
            break
    seconds = time.perf_counter() - start
    algo.stop()
    ray.shutdown()
    return {"reached_s": reached[0] if reached else None,
            "reached_steps": reached[1] if reached else None,
            "steps": steps, "seconds": seconds, "steps_per_s": steps / seconds}


def main() -> None:
    """Measure, print the table, write results/cartpole_dqn.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--double", action="store_true")
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    args = parser.parse_args()
    import ray

    results = {"ours": ours(args.double, args.max_steps, args.max_seconds)}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    results["ours, 1 rollout worker"] = ours(args.double, args.max_steps, args.max_seconds, 1)
    ray.shutdown()
    results["rllib"] = rllib(args.double, args.max_steps, args.max_seconds)
    o, r = results["ours"], results["rllib"]

    def show(x):
        return "not reached" if x is None else x

    rows = [[name, show(m["reached_s"]), show(m["reached_steps"]), m["steps_per_s"]]
            for name, m in results.items()]
    rows.append(["ratio ours/RLlib",
                 (r["reached_s"] / o["reached_s"]) if o["reached_s"] and r["reached_s"]
                 else "-",
                 "-", o["steps_per_s"] / r["steps_per_s"]])
    name = "DDQN" if args.double else "DQN"
    print(f"{name} on CartPole-v1 until the last {WINDOW} training episodes average "
          f"{GOAL:.0f} (budget {args.max_steps:,} steps, {args.max_seconds:.0f} s)")
    print(table(["implementation", "seconds to 475", "env steps to 475", "env steps/s"], rows))
    print(f"written to {write('cartpole_' + name.lower(), results)}")


if __name__ == "__main__":
    main()
