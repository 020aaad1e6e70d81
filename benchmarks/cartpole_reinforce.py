"""REINFORCE on CartPole-v1: ours (0, 1, 2 rollout workers) against the course's loop.

The peer is the course's unit 4 notebook as it writes it: a Policy module whose act()
samples one action at a time, one episode per update, the returns-to-go built with a
deque, standardized, and the loss summed from a Python list. Both use the course's
settings (hidden 16, lr 1e-2, gamma 1.0) and evaluate 10 episodes with the stochastic
policy every 20 training episodes; the clock stops at the first evaluation mean >= 475.
Ours with 2 workers averages 2 episodes an update (one from each worker), which changes
the algorithm's sample use: the table says how many episodes each needed.
Usage: python -m benchmarks.cartpole_reinforce [--max-seconds 300] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from collections import deque

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from algos.core.metrics import EPISODES, EVAL_MEAN_RETURN
from algos.reinforce import train
from benchmarks.common import table, write
from pipelines.config.compose import compose_config

GOAL, EVAL_EVERY, EVAL_EPISODES = 475.0, 20, 10


class Policy(nn.Module):
    """The course's policy."""

    def __init__(self, s_size, a_size, h_size):
        super().__init__()
        self.fc1 = nn.Linear(s_size, h_size)
        self.fc2 = nn.Linear(h_size, a_size)

    def forward(self, x):
        x = torch.relu(self.fc1(x))
        return torch.softmax(self.fc2(x), dim=1)

    def act(self, state):
        state = torch.from_numpy(state).float().unsqueeze(0)
        probs = self.forward(state)
        m = torch.distributions.Categorical(probs)
        action = m.sample()
        return action.item(), m.log_prob(action)


def course(seed: int, max_seconds: float) -> dict:
    """The course's reinforce() with its evaluate_agent() every EVAL_EVERY episodes."""
    torch.manual_seed(seed)
    env, eval_env = gym.make("CartPole-v1"), gym.make("CartPole-v1")
    env.reset(seed=seed)
    eval_env.reset(seed=seed + 1)
    policy = Policy(4, 2, 16)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    gamma, max_t = 1.0, 1000
    start, steps = time.perf_counter(), 0
    for i_episode in range(1, 1001):
        saved_log_probs, rewards = [], []
        state, _ = env.reset()
        for _ in range(max_t):
            action, log_prob = policy.act(state)
            saved_log_probs.append(log_prob)
            state, reward, terminated, truncated, _ = env.step(action)
            rewards.append(reward)
            if terminated or truncated:
                break
        steps += len(rewards)
        returns = deque(maxlen=max_t)
        for t in range(len(rewards))[::-1]:
            disc_return_t = returns[0] if len(returns) > 0 else 0
            returns.appendleft(gamma * disc_return_t + rewards[t])
        eps = np.finfo(np.float32).eps.item()
        returns = torch.tensor(returns)
        returns = (returns - returns.mean()) / (returns.std() + eps)
        policy_loss = torch.cat([-lp * r for lp, r in zip(saved_log_probs, returns,
                                                          strict=True)]).sum()
        optimizer.zero_grad()
        policy_loss.backward()
        optimizer.step()
        if i_episode % EVAL_EVERY == 0:
            scores = []
            for _ in range(EVAL_EPISODES):
                state, _ = eval_env.reset()
                total = 0.0
                for _ in range(max_t):
                    action, _ = policy.act(state)
                    state, reward, terminated, truncated, _ = eval_env.step(action)
                    total += reward
                    if terminated or truncated:
                        break
                scores.append(total)
            if np.mean(scores) >= GOAL:
                return {"seconds": time.perf_counter() - start, "episodes": i_episode,
                        "steps": steps}
        if time.perf_counter() - start > max_seconds:
            break
    return {"seconds": None, "episodes": None, "steps": steps}


class _Reached(Exception):
    pass


class Watcher:
    """Stops our run at the first evaluation mean >= GOAL."""

    def __init__(self, max_seconds: float) -> None:
        self.start = time.perf_counter()
        self.max_seconds = max_seconds
        self.reached: dict | None = None

    def report(self, step, metrics, history=None, state=None, final=False) -> None:
        if metrics[EVAL_MEAN_RETURN] >= GOAL:
            self.reached = {"seconds": time.perf_counter() - self.start,
                            "episodes": int(metrics[EPISODES]), "steps": step}
            raise _Reached
        if time.perf_counter() - self.start > self.max_seconds:
            raise _Reached


def ours(workers: int, seed: int, max_seconds: float) -> dict:
    """Our REINFORCE with `workers` rollout workers (m = max(1, workers)), on the course's
    settings: the experiment's but for its two departures (gamma 0.99, the decay of lr)."""
    cfg = compose_config([
        "experiment=cartpole_reinforce", "algo.gamma=1.0", "algo.lr_end=null",
        f"algo.num_rollout_workers={workers}",
        f"algo.episodes_per_update={max(1, workers)}", f"algo.eval_every={EVAL_EVERY}",
        f"algo.eval_episodes={EVAL_EPISODES}"]).cfg
    watcher = Watcher(max_seconds)
    try:
        train(cfg.algo, cfg.env, seed=seed, reporter=watcher)
    except _Reached:
        pass
    return watcher.reached or {"seconds": None, "episodes": None, "steps": None}


def main() -> None:
    """Measure, print the table, write results/cartpole_reinforce.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-seconds", type=float, default=300.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import ray

    results = {"course": course(args.seed, args.max_seconds),
               "ours, 0 workers": ours(0, args.seed, args.max_seconds)}
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    for n in (1, 2):
        results[f"ours, {n} worker{'s' if n > 1 else ''}"] = ours(n, args.seed,
                                                                  args.max_seconds)
    ray.shutdown()
    base = results["course"]["seconds"]
    rows = []
    for name, r in results.items():
        ratio = base / r["seconds"] if base and r["seconds"] else "-"
        rows.append([name, r["seconds"] or "not reached", r["episodes"] or "-", ratio])
    print(f"REINFORCE on CartPole-v1 until a {EVAL_EPISODES}-episode evaluation mean of "
          f"{GOAL:.0f} (evaluated every {EVAL_EVERY} episodes), seed {args.seed}")
    print(table(["implementation", "seconds", "training episodes", "speed-up vs course"],
                rows))
    print(f"written to {write('cartpole_reinforce', results)}")


if __name__ == "__main__":
    main()
