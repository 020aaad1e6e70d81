"""DQN learner updates per second: our training phases against the plain loop.

The plain loop is one gradient step as a straightforward DQN takes it: draw a minibatch
from the replay memory, compute its targets with the target network, one Adam step
(PyTorch's foreach kernel). Ours is algos.dqn's update(), called as train() calls it, with
the updates one sample request pays for: the phase's minibatches drawn at once, DQN's
targets in one pass over the phase (the target network is fixed within a phase), Adam's
fused kernel. Both with a gradient-norm clip of 10 and the Huber loss, on the same replay
memory filled with random transitions, alternating rounds in one process; median of 3.
On a CUDA device two more: the frames in GPU memory (algo.replay_device=learner), and
that plus each step replayed as a CUDA graph (algo.cuda_graph).

Cases: CartPole's [256, 256] MLP, batch 64, 64 gradient steps per 256 env steps
(experiment=cartpole_dqn), and Pong's Nature CNN, batch 32, one step per 4 env steps
(experiment=pong_dqn, 32 steps per request of 2 workers x 4 envs) drawing from a
100,000-transition frame memory. On --device (auto: CUDA when there is one).
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
from algos.dqn import (
    capture_step,
    dqn_loss,
    make_optimizer,
    network_factory,
    request_steps,
    to_tensors,
    update,
)
from benchmarks.common import median, table, write
from pipelines.config.compose import compose_config


def fill(buffer, obs_shape, n: int, seed: int = 0) -> None:
    """n random transitions (episodes of 200 steps) into the memory, in chunks of 1,000
    that reuse one chunk of random observations (drawing 100,000 random frame stacks
    would take longer than the measurement)."""
    rng = np.random.default_rng(seed)
    frames = isinstance(buffer, FrameReplayBuffer)
    dtype = np.uint8 if frames else np.float32
    pool = (rng.integers(0, 255, (1000, *obs_shape)) if frames
            else rng.standard_normal((1000, *obs_shape))).astype(dtype)
    for start in range(0, n, 1000):
        k = min(1000, n - start)
        obs = pool[:k]
        next_obs = np.roll(obs, -1, axis=0)
        ends = (np.arange(start, start + k) % 200) == 199
        buffer.add(np.zeros(k, np.int64), obs, rng.integers(0, 2, k), rng.random(k),
                   next_obs, ends, np.zeros(k, bool), (np.arange(start, start + k) % 200) == 0)


def plain_loop(online, target, optimizer, buffer, n, cfg, device, graphed=None) -> None:
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


def updates_per_request(cfg) -> int:
    """The gradient steps train() takes for one sample request's env steps."""
    return max(1, request_steps(cfg) * cfg.gradient_steps // cfg.train_freq)


def phases(online, target, optimizer, buffer, n, cfg, device, graphed=None) -> None:
    """n gradient steps, update() called per sample request, as algos.dqn.train does."""
    per_call = updates_per_request(cfg)
    for first in range(0, n, per_call):
        update(online, target, optimizer, buffer, min(per_call, n - first), cfg, device,
              graphed)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(experiment: str, device: torch.device, seconds: float) -> dict:
    """Updates per second of the plain loop and of ours, for one experiment's settings."""
    cfg = compose_config([f"experiment={experiment}"]).cfg
    algo = cfg.algo
    frames = cfg.env.kind == "atari"

    def memory(where=None):
        if frames:
            shape = (cfg.env.frame_stack, cfg.env.screen_size, cfg.env.screen_size)
            buffer = FrameReplayBuffer(100_000, shape[1:], stack=shape[0], seed=0, device=where)
            fill(buffer, shape, 100_000)
        else:
            shape = (4,)
            buffer = ReplayBuffer(100_000, shape, np.float32, seed=0)
            fill(buffer, shape, 100_000)
        return buffer, shape

    buffer, obs_shape = memory()
    import gymnasium as gym

    n_actions = 6 if frames else 2
    obs_space = gym.spaces.Box(0, 255, obs_shape, np.uint8 if frames else np.float32)
    net = network_factory(algo)(obs_space, gym.spaces.Discrete(n_actions)).to(device)
    # name: (step function, fused Adam, replay memory, CUDA graph)
    candidates = {"plain loop": (plain_loop, False, buffer, False),
                  "ours": (phases, True, buffer, False)}
    if device.type == "cuda":
        gpu_buffer = memory(device)[0] if frames else buffer
        if frames:
            candidates["ours, frames on GPU"] = (phases, True, gpu_buffer, False)
        candidates["ours, frames on GPU, CUDA graph" if frames else "ours, CUDA graph"] = (
            phases, True, gpu_buffer, True)
    per_call = updates_per_request(algo)
    runs = {}
    for name, (fn, fused, memory_, graph) in candidates.items():
        online, target = copy.deepcopy(net), copy.deepcopy(net)
        optimizer = (make_optimizer(online, algo.lr, device, capturable=graph) if fused
                     else torch.optim.Adam(online.parameters(), lr=algo.lr, foreach=True))
        extra = ({"graphed": capture_step(online, target, optimizer, algo, obs_space, device)}
                 if graph else {})
        fn(online, target, optimizer, memory_, per_call, algo, device, **extra)  # warm up
        start, n = time.perf_counter(), 0
        while time.perf_counter() - start < seconds / 4:  # size a round to ~seconds
            fn(online, target, optimizer, memory_, per_call, algo, device, **extra)
            n += per_call
        runs[name] = (fn, online, target, optimizer, memory_, max(n * 4, per_call), extra)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(3):
        for name, (fn, online, target, optimizer, memory_, n, extra) in runs.items():
            start = time.perf_counter()
            fn(online, target, optimizer, memory_, n, algo, device, **extra)
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
        plain = rates.pop("plain loop")
        for name, rate in rates.items():
            rows.append([experiment, plain, name, rate, rate / plain])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"DQN learner updates per second on {name} ({device}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(table(["settings", "plain loop", "ours", "updates/s", "ratio ours/plain"], rows))
    print(f"written to {write('dqn_learner', data)}")


if __name__ == "__main__":
    main()
