"""Q-learning on Taxi-v3 with the course's settings: ours against the course's own loop.

The peer is the training loop of the course's unit 2 notebook, written as it writes it
(np.argmax on the table, random.uniform, env.action_space.sample(), the wrapped env), in
the same process, alternating with ours. Both train 25,000 episodes and then evaluate once
on the course's 100 seeds. Usage: python -m benchmarks.q_learning_taxi [--repeats N]
"""

from __future__ import annotations

import argparse
import random

import gymnasium as gym
import numpy as np

from algos.core.metrics import EVAL_SCORE
from algos.q_learning import train
from benchmarks.common import alternate, median, table, write
from pipelines.config.compose import compose_config


def course_loop(cfg, seed: int) -> tuple[np.ndarray, float]:
    """The course's train() and evaluate_agent(), as the notebook writes them."""
    env = gym.make("Taxi-v3")
    random.seed(seed)
    env.reset(seed=seed)
    env.action_space.seed(seed)
    qtable = np.zeros((env.observation_space.n, env.action_space.n))

    def greedy_policy(qtable, state):
        return np.argmax(qtable[state][:])

    def epsilon_greedy_policy(qtable, state, epsilon):
        if random.uniform(0, 1) > epsilon:
            return greedy_policy(qtable, state)
        return env.action_space.sample()

    for episode in range(cfg.episodes):
        epsilon = cfg.epsilon_end + (cfg.epsilon_start - cfg.epsilon_end) * np.exp(
            -cfg.epsilon_decay * episode
        )
        state, info = env.reset()
        for _ in range(cfg.max_steps):
            action = epsilon_greedy_policy(qtable, state, epsilon)
            new_state, reward, terminated, truncated, info = env.step(action)
            qtable[state][action] = qtable[state][action] + cfg.lr * (
                reward + cfg.gamma * np.max(qtable[new_state]) - qtable[state][action]
            )
            if terminated or truncated:
                break
            state = new_state

    rewards = []
    for s in cfg.evaluation_seeds():
        state, info = env.reset(seed=s)
        total = 0.0
        for _ in range(cfg.max_steps):
            new_state, reward, terminated, truncated, info = env.step(
                greedy_policy(qtable, state)
            )
            total += reward
            if terminated or truncated:
                break
            state = new_state
        rewards.append(total)
    return qtable, float(np.mean(rewards) - np.std(rewards))


def main() -> None:
    """Measure, print the table, write results/q_learning_taxi.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    composed = compose_config(["experiment=taxi_course"])
    cfg, env_cfg = composed.cfg.algo, composed.cfg.env
    one_report = type(cfg)(**{**cfg.__dict__, "report_every": cfg.episodes})
    reporting = f"ours, {cfg.episodes // cfg.report_every} evaluations"
    scores: dict[str, list[float]] = {"ours": [], reporting: [], "course": []}

    def ours():
        scores["ours"].append(train(one_report, env_cfg, seed=0).metrics[EVAL_SCORE])

    def ours_reporting():
        scores[reporting].append(train(cfg, env_cfg, seed=0).metrics[EVAL_SCORE])

    def course():
        scores["course"].append(course_loop(cfg, seed=0)[1])

    seconds = alternate(
        {"ours": ours, reporting: ours_reporting, "course": course}, args.repeats
    )
    base = median(seconds["course"])
    rows = [
        [name, median(s), base / median(s), median(scores[name])]
        for name, s in seconds.items()
    ]
    print(f"Q-learning, Taxi-v3, course settings ({cfg.episodes:,} episodes), "
          f"median of {args.repeats}")
    print(table(["implementation", "seconds", "speed-up vs course", EVAL_SCORE], rows))
    path = write("q_learning_taxi", {
        "episodes": cfg.episodes, "repeats": args.repeats,
        "seconds": seconds, "scores": scores,
        "speedup_vs_course": base / median(seconds["ours"]),
    })
    print(f"written to {path}")


if __name__ == "__main__":
    main()
