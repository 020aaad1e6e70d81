"""DQN learner updates per second: our training phases against the plain loop.

The plain loop is one gradient step as a straightforward DQN takes it: draw a minibatch
from the replay memory, compute its targets with the target network, one Adam step
(PyTorch's foreach kernel). Ours is algos.dqn's training phase: the phase's minibatches
drawn at once, DQN's targets in one pass over the phase (the target network is fixed
within a phase), Adam's fused kernel. Both with a gradient-norm clip of 10 and the Huber
loss, on the same replay memory filled with random transitions, alternating rounds in one
process; median of 3 rounds.

Cases: CartPole's [256, 256] MLP, batch 64, 64 gradient steps per phase
(experiment=cartpole_dqn), and Pong's Nature CNN, batch 32, 1 gradient step per phase
(experiment=pong_dqn: there a phase is one step, so only the optimizer differs) drawing
from a 100,000-transition frame memory. On --device (auto: CUDA when there is one).
Usage: python -m benchmarks.dqn_learner [--device auto] [--seconds 3]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
from torch import nn

from algos.core.networks import resolve_device
from algos.core.replay import FrameReplayBuffer, ReplayBuffer
from algos.dqn import dqn_loss, learn, make_optimizer, network_factory, to_tensors
from benchmarks.common import median, table, write
from pipelines.config import compose_config


def fill(buffer, obs_shape, n: int, seed: int = 0) -> None:
    """n random transitions (episodes of 200 steps) into the memory, in chunks."""
    rng = np.random.default_rng(seed)
    frames = isinstance(buffer, FrameReplayBuffer)
    for start in range(0, n, 1000):
        k = min(1000, n - start)
        dtype = np.uint8 if frames else np.float32
        obs = (rng.integers(0, 255, (k, *obs_shape)) if frames
               else rng.standard_normal((k, *obs_shape))).astype(dtype)
        next_obs = np.roll(obs, -1, axis=0)
        ends = (np.arange(start, start + k) % 200) == 199
        buffer.add(np.zeros(k, np.int64), obs, rng.integers(0, 2, k), rng.random(k),
                   next_obs, ends, np.zeros(k, bool), (np.arange(start, start + k) % 200) == 0)


def plain_loop(online, target, optimizer, buffer, n, cfg, device) -> None:
    """n gradient steps, one draw and one target pass each."""
    for _ in range(n):
        batch = to_tensors(buffer.sample(cfg.batch_size), device, cfg.clip_rewards)
        loss, _ = dqn_loss(online, target, batch, cfg.gamma, cfg.double, cfg.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(online.parameters(), cfg.max_grad_norm)
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def phases(online, target, optimizer, buffer, n, cfg, device) -> None:
    """n gradient steps in phases of cfg.gradient_steps, as algos.dqn.train takes them."""
    for first in range(0, n, cfg.gradient_steps):
        learn(online, target, optimizer, buffer, min(cfg.gradient_steps, n - first), cfg,
              device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(experiment: str, device: torch.device, seconds: float) -> dict:
    """Updates per second of the plain loop and of ours, for one experiment's settings."""
    cfg = compose_config([f"experiment={experiment}"]).cfg
    algo = cfg.algo
    if cfg.env.kind == "atari":
        obs_shape = (cfg.env.frame_stack, cfg.env.screen_size, cfg.env.screen_size)
        buffer = FrameReplayBuffer(100_000, obs_shape[1:], stack=obs_shape[0], seed=0)
        fill(buffer, obs_shape[1:], 100_000)
        n_actions = 6
    else:
        obs_shape, n_actions = (4,), 2
        buffer = ReplayBuffer(100_000, obs_shape, np.float32, seed=0)
        fill(buffer, obs_shape, 100_000)
    import gymnasium as gym

    dtype = np.uint8 if cfg.env.kind == "atari" else np.float32
    obs_space = gym.spaces.Box(0, 255, obs_shape, dtype)
    net = network_factory(algo)(obs_space, gym.spaces.Discrete(n_actions)).to(device)
    runs = {}
    for name, fn, fused in (("plain loop", plain_loop, False), ("ours", phases, True)):
        online, target = copy.deepcopy(net), copy.deepcopy(net)
        optimizer = (make_optimizer(online, algo.lr, device) if fused
                     else torch.optim.Adam(online.parameters(), lr=algo.lr, foreach=True))
        fn(online, target, optimizer, buffer, algo.gradient_steps, algo, device)  # warm up
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds / 4:  # size a round to ~seconds
            fn(online, target, optimizer, buffer, algo.gradient_steps, algo, device)
            n += algo.gradient_steps
        runs[name] = (fn, online, target, optimizer, max(n * 4, algo.gradient_steps))
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(3):
        for name, (fn, online, target, optimizer, n) in runs.items():
            start = time.perf_counter()
            fn(online, target, optimizer, buffer, n, algo, device)
            rates[name].append(n / (time.perf_counter() - start))
    return {name: median(r) for name, r in rates.items()}


def main() -> None:
    """Measure, print the table, write results/dqn_learner.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    device = resolve_device(args.device)
    data, rows = {"device": str(device)}, []
    for experiment in ("cartpole_dqn", "pong_dqn"):
        rates = measure(experiment, device, args.seconds)
        data[experiment] = rates
        rows.append([experiment, rates["plain loop"], rates["ours"],
                     rates["ours"] / rates["plain loop"]])
    print(f"DQN learner updates per second on {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(table(["settings", "plain loop", "ours", "ratio ours/plain"], rows))
    print(f"written to {write('dqn_learner', data)}")


if __name__ == "__main__":
    main()
