"""The rollout workers of one learner: in the learner's process, or Ray actors that are
replaced in place when they die.

One pool serves DQN (a stream of transition batches, one request in flight per worker)
and REINFORCE (batches of whole episodes). It owns what both used to repeat: the env
probe for the spaces, the seeding rule, the weights broadcast (one `ray.put` per update,
sent to a worker only when it has not seen them) and the replacement of a dead worker:
a new actor in the same placement-group bundle, seeded afresh, given the current weights,
its unreturned work lost and redone. RLlib restarts its env runners the same way
(`restart_failed_env_runners`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

import gymnasium as gym
import numpy as np
from torch import nn

from algos.core.envs import EnvConfig, make_env
from algos.core.rollout import RolloutWorker, remote_worker_class

log = logging.getLogger(__name__)


def worker_seed(seed: int, index: int, generation: int = 0, start: int = 0) -> int:
    """The seed of worker `index` (0: the learner's own sampler; i + 1: rollout worker i):
    its envs' resets and its exploration. A fresh run keeps the simple rule seed + 1000 *
    index; a replacement (generation > 0) or a resumed run (start: the env step or episode
    it resumes at) mixes those in, so that no stream is replayed."""
    if generation == 0 and start == 0:
        return seed + 1000 * index
    return int(np.random.SeedSequence([seed, index, generation, start]).generate_state(1)[0])


class WorkerFailure(RuntimeError):
    """The rollout workers died more often than max_restarts allows."""


class WorkerPool:
    """`num_workers` rollout workers (0: one RolloutWorker in this process)."""

    def __init__(
        self,
        env_cfg: EnvConfig,
        num_workers: int,
        envs_per_worker: int,
        network_fn: Callable[[gym.Space, gym.Space], nn.Module],
        seed: int,
        start: int = 0,
        max_restarts: int = 0,
    ) -> None:
        self.env_cfg, self.envs_per_worker, self.network_fn = env_cfg, envs_per_worker, network_fn
        self.seed, self.start, self.max_restarts = seed, start, max_restarts
        self.remote = num_workers > 0
        self.restarts = 0
        """Workers replaced so far in this run (train/worker_restarts)."""
        self.version = 0
        self._weights: Any = None
        if not self.remote:
            self.local = RolloutWorker(env_cfg, envs_per_worker, network_fn,
                                       worker_seed(seed, 0, start=start))
            self.obs_space = cast(gym.spaces.Box, self.local.envs.single_observation_space)
            self.action_space = cast(gym.spaces.Discrete,
                                     self.local.envs.single_action_space)
            self._local_version = 0
            return
        import ray

        self.ray = ray
        self.generation = [0] * num_workers
        self.sent = [0] * num_workers  # the weights version each worker has
        self.workers = [self._spawn(i) for i in range(num_workers)]
        self.in_flight: dict[Any, int] = {}
        self.ready: list[dict[str, Any]] = []  # batches filled in lockstep, not yet used
        probe = make_env(env_cfg)
        self.obs_space = cast(gym.spaces.Box, probe.observation_space)
        self.action_space = cast(gym.spaces.Discrete, probe.action_space)
        probe.close()

    @classmethod
    def for_run(cls, env_cfg: EnvConfig, cfg: Any, network_fn, seed: int,
                state: Mapping[str, Any] | None, position: str) -> WorkerPool:
        """The pool of a run of algorithm config `cfg` (its num_rollout_workers,
        envs_per_worker, max_worker_restarts), continuing a checkpoint `state`: a resumed
        run's workers start new streams, seeded by where it resumes (state[position]), not
        replays, and its restarts so far count against max_worker_restarts."""
        pool = cls(env_cfg, cfg.num_rollout_workers, cfg.envs_per_worker, network_fn, seed,
                   start=state[position] if state else 0,
                   max_restarts=cfg.max_worker_restarts)
        pool.restarts = state.get("worker_restarts", 0) if state else 0
        return pool

    def _spawn(self, i: int):
        from algos.core.placement import worker_options

        seed = worker_seed(self.seed, i + 1, self.generation[i], self.start)
        return remote_worker_class().options(**worker_options(i)).remote(
            self.env_cfg, self.envs_per_worker, self.network_fn, seed, i)

    def _replace(self, i: int, error: BaseException) -> None:
        """Worker i died: a new one in its bundle, given the current weights next time."""
        self.restarts += 1
        if self.restarts > self.max_restarts:
            raise WorkerFailure(
                f"rollout worker {i} died ({type(error).__name__}), and {self.restarts} "
                f"workers died in this run, more than algo.max_worker_restarts="
                f"{self.max_restarts}: {error}") from error
        log.warning("rollout worker %d died (%s); replacing it (%d of at most %d)", i,
                    type(error).__name__, self.restarts, self.max_restarts)
        self.ray.kill(self.workers[i], no_restart=True)
        self.generation[i] += 1
        self.sent[i] = 0
        self.workers[i] = self._spawn(i)

    def set_weights(self, weights: dict[str, Any]) -> None:
        """New learner weights: every worker samples with them from its next request."""
        self.version += 1
        self._weights = self.ray.put(weights) if self.remote else weights

    def _weights_for(self, i: int):
        """The weights reference for worker i's next request, None if it has them."""
        if self.sent[i] == self.version:
            return None
        self.sent[i] = self.version
        return self._weights

    def _request(self, i: int, steps: int, epsilon: float, frames_only: bool) -> None:
        ref = self.workers[i].sample.remote(steps, epsilon, self._weights_for(i), frames_only)
        self.in_flight[ref] = i

    def sample(self, steps: int, epsilon: float, frames_only: bool = False,
               policy: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
        """The next batch of at least `steps` transitions: sampled here, or the first one a
        worker returns (each worker keeps one request in flight, asked with the epsilon
        and weights of when it was sent). A dead worker is replaced and asked again.
        With `policy` (algo.acting=learner) it picks the greedy actions of every worker
        instead of their own networks: see sample_by_policy."""
        if policy is not None:
            return self.sample_by_policy(steps, epsilon, frames_only, policy)
        if not self.remote:
            if self._local_version != self.version:
                self.local.set_weights(self._weights)
                self._local_version = self.version
            return self.local.sample(steps, epsilon, frames_only=frames_only)
        for i in range(len(self.workers)):
            if i not in self.in_flight.values():
                self._request(i, steps, epsilon, frames_only)
        while True:
            ready, _ = self.ray.wait(list(self.in_flight), num_returns=1)
            i = self.in_flight.pop(ready[0])
            try:
                batch = self.ray.get(ready[0])
            except self.ray.exceptions.RayActorError as e:
                self._replace(i, e)
                self._request(i, steps, epsilon, frames_only)
                continue
            self._request(i, steps, epsilon, frames_only)
            return batch

    def sample_by_policy(self, steps: int, epsilon: float, frames_only: bool,
                         policy: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
        """The next batch of at least `steps` transitions, `policy` (observations ->
        greedy actions, on the learner's device) acting for every worker: each round,
        the workers that have rows acting greedily hand back their observations, one call
        of `policy` answers all of them, and each steps on. All workers fill a batch in
        lockstep; they come back one per call. A dead worker is replaced and its batch
        begun again."""
        if not self.remote:
            obs, batch = self.local.begin(steps, epsilon, frames_only)
            while batch is None:
                obs, batch = self.local.resume(policy(cast(np.ndarray, obs)))
            return batch
        if self.ready:
            return self.ready.pop(0)
        pending = {i: w.begin.remote(steps, epsilon, frames_only)
                   for i, w in enumerate(self.workers)}
        while pending:
            asking: dict[int, np.ndarray] = {}
            for i, ref in list(pending.items()):
                try:
                    obs, batch = self.ray.get(ref)
                except self.ray.exceptions.RayActorError as e:
                    self._replace(i, e)
                    pending[i] = self.workers[i].begin.remote(steps, epsilon, frames_only)
                    continue
                if batch is not None:
                    self.ready.append(batch)
                    del pending[i]
                else:
                    asking[i] = obs
            if asking:
                actions = policy(np.concatenate(list(asking.values())))
                ends = np.cumsum([len(o) for o in asking.values()])
                for i, part in zip(asking, np.split(actions, ends[:-1]), strict=True):
                    pending[i] = self.workers[i].resume.remote(part)
        return self.ready.pop(0)

    def sample_episodes(self, n: int, max_steps: int) -> list[list[dict[str, Any]]]:
        """`n` whole episodes with the current weights, shared among the workers: one list
        per worker that played any. A dead worker's share is played again by its
        replacement."""
        if not self.remote:
            self._local_version = self.version
            return [self.local.sample_episodes(n, max_steps, self._weights)]
        k = len(self.workers)
        shares = {i: n // k + (i < n % k) for i in range(k) if n // k + (i < n % k)}
        done: dict[int, list] = {}
        while len(done) < len(shares):
            refs = {self.workers[i].sample_episodes.remote(shares[i], max_steps,
                                                           self._weights): i
                    for i in shares if i not in done}
            for ref, i in refs.items():
                try:
                    done[i] = self.ray.get(ref)
                except self.ray.exceptions.RayActorError as e:
                    self._replace(i, e)
        return [done[i] for i in sorted(done)]

    def close(self) -> None:
        """Stop the workers."""
        if self.remote:
            for w in self.workers:
                self.ray.kill(w, no_restart=True)
        else:
            self.local.close()
