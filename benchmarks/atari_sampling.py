"""Atari sampling: env steps per second of N rollout workers against the raw limit.

The raw limit is one bare ale-py AtariVectorEnv stepping random actions in one process
(no network, no transitions kept). Ours is the RolloutWorker as used by DQN: the same
vector env plus epsilon-greedy acting through the Nature CNN and the transitions returned
as numpy (each frame once, as DQN's frame memory takes them), on 1 and on 2 Ray actors
sampling at once, each worker on its own core. Two exploration rates: 1.0 (the start of
training: the network does not run) and 0.05 (late training: the CNN runs on the CPU for
95% of the steps). At 0.05 a second limit shows what the acting itself costs: the bare
vector env plus the same CNN acting in one process, keeping nothing.
Usage: python -m benchmarks.atari_sampling [--seconds 10] [--envs 8]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from algos.core.envs import EnvConfig, make_vector_env
from algos.dqn import DQNConfig, network_factory
from benchmarks.common import table, write
from pipelines.config.compose import compose_config


def raw(env_cfg: EnvConfig, envs: int, seconds: float, epsilon: float = 1.0) -> float:
    """Agent steps per second of a bare vector env in this process: random actions
    (epsilon 1.0), or epsilon-greedy through the Nature CNN on one thread, as a worker
    acts, but keeping nothing (the acting limit at that epsilon)."""
    vec = make_vector_env(env_cfg, envs)
    obs, _ = vec.reset(seed=0)
    rng = np.random.default_rng(0)
    n = int(vec.single_action_space.n)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    net = network_factory(DQNConfig(network="cnn"))(vec.single_observation_space,
                                                    vec.single_action_space).eval()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        actions = rng.integers(0, n, envs)
        greedy = rng.random(envs) >= epsilon
        if greedy.any():
            with torch.inference_mode():
                actions[greedy] = net(torch.as_tensor(obs[greedy])).argmax(1).numpy()
        obs, *_ = vec.step(actions)
        steps += envs
    torch.set_num_threads(threads)
    rate = steps / (time.perf_counter() - start)
    vec.close()
    return rate


def workers(env_cfg: EnvConfig, envs: int, n_workers: int, seconds: float,
            epsilon: float) -> float:
    """Agent steps per second of n RolloutWorker actors sampling together."""
    import ray

    from algos.core.rollout import remote_worker_class

    actor = remote_worker_class()
    factory = network_factory(DQNConfig(network="cnn"))
    pool = [actor.remote(env_cfg, envs, factory, seed=i, worker_index=i)
            for i in range(n_workers)]
    # frames_only: each frame travels once, as DQN's workers send to the frame memory
    ray.get([w.sample.remote(envs, epsilon, None, True) for w in pool])  # warm up
    steps, start = 0, time.perf_counter()
    in_flight = {w.sample.remote(256, epsilon, None, True): w for w in pool}
    while time.perf_counter() - start < seconds:
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        w = in_flight.pop(ready[0])
        steps += ray.get(ready[0])["steps"]
        in_flight[w.sample.remote(256, epsilon, None, True)] = w
    rate = steps / (time.perf_counter() - start)
    ray.get(list(in_flight))
    for w in pool:
        ray.kill(w)
    return rate


def main() -> None:
    """Measure, print the table, write results/atari_sampling.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--envs", type=int, default=8)
    args = parser.parse_args()
    import ray

    env_cfg = compose_config(["env=pong"]).cfg.env
    epsilons = (1.0, 0.05)
    limits = {e: raw(env_cfg, args.envs, args.seconds, e) for e in epsilons}
    limit = limits[1.0]
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    rows = [["bare AtariVectorEnv, random actions, 1 process", 1, limit, 1.0, 1.0],
            ["bare AtariVectorEnv + CNN acting at epsilon 0.05, 1 process", 1, limits[0.05],
             limits[0.05] / limit, 1.0]]
    data = {"envs_per_worker": args.envs, "raw_steps_per_s": limit,
            "acting_limit_steps_per_s": limits}
    for epsilon in epsilons:
        for n in range(1, (os.cpu_count() or 1) + 1):
            rate = workers(env_cfg, args.envs, n, args.seconds, epsilon)
            rows.append([f"{n} rollout worker(s), epsilon {epsilon}", n, rate,
                         rate / (n * limit), rate / (n * limits[epsilon])])
            data[f"workers_{n}_epsilon_{epsilon}"] = {
                "steps_per_s": rate, "ratio_per_core": rate / (n * limit),
                "ratio_per_core_to_acting_limit": rate / (n * limits[epsilon])}
    ray.shutdown()
    print(f"ALE Pong, {args.envs} envs per process, agent steps per second")
    print(table(["sampler", "cores", "steps/s", "per core / raw random",
                 "per core / same-epsilon limit"], rows))
    print(f"written to {write('atari_sampling', data)}")


if __name__ == "__main__":
    main()
