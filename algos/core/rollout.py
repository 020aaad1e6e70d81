"""Rollout workers: a vector env and a CPU copy of the network, sampling transitions.

The same class runs in the learner's process (0 workers) or as a Ray actor
(`RemoteRolloutWorker`), one CPU each. Weights arrive as a state dict (an object-store
reference when remote: one `ray.put` per sync, shared by every worker). Vector envs
autoreset on the next step: the step after an episode ends is a reset whose action is
ignored, and it is never returned as a transition.

Acting: sample() picks the greedy actions with the worker's own copy of the network
(algo.acting=cpu). With algo.acting=learner the learner picks them instead, SEED RL's
way (Espeholt et al. 2020): begin() hands back the observations of the rows that act
greedily, the learner answers with one batched forward pass for every worker, resume()
steps the envs with those actions and hands back the next step's observations, until
the batch is full. The exploration draws are the worker's in both modes, so the same
weights give the same actions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any, cast

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from algos.core.envs import EnvConfig, make_vector_env


class RolloutWorker:
    """Samples epsilon-greedy transitions from `num_envs` envs."""

    def __init__(
        self,
        env_cfg: EnvConfig,
        num_envs: int,
        network_fn: Callable[[gym.Space, gym.Space], nn.Module],
        seed: int,
        worker_index: int = 0,
    ) -> None:
        torch.set_num_threads(1)
        self.envs = make_vector_env(env_cfg, num_envs)
        self.episodic_life = env_cfg.episodic_life
        """A life lost ends a training episode; the return reported is still the game's."""
        self.num_envs = num_envs
        self.net = network_fn(self.envs.single_observation_space, self.envs.single_action_space)
        self.net.eval()
        self.n_actions = int(cast(gym.spaces.Discrete, self.envs.single_action_space).n)
        self.rng = np.random.default_rng(seed)
        self.torch_rng = torch.Generator().manual_seed(seed)
        self.env_offset = worker_index * num_envs
        self.obs, _ = self.envs.reset(seed=seed)
        self._stepping: Generator[np.ndarray, np.ndarray, dict[str, Any]] | None = None
        self.episode_start = np.ones(num_envs, dtype=np.bool_)
        self.resetting = np.zeros(num_envs, dtype=np.bool_)
        self.ep_return = np.zeros(num_envs)
        self.ep_length = np.zeros(num_envs, dtype=np.int64)

    def set_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Load the learner's weights."""
        self.net.load_state_dict(weights)

    @torch.inference_mode()
    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """This worker's network's greedy actions for a batch of observations."""
        return self.net(torch.as_tensor(obs)).argmax(1).numpy()

    def _explore(self, obs: np.ndarray, epsilon: float
                 ) -> Generator[np.ndarray, np.ndarray, np.ndarray]:
        """Epsilon-greedy actions: yields the observations of the rows that act greedily
        (when any do) and takes their actions back. The random draws are the same
        whoever answers, so both acting modes give the same actions for the same
        weights."""
        explore = self.rng.random(len(obs)) < epsilon
        actions = self.rng.integers(0, self.n_actions, len(obs))
        greedy = ~explore
        if greedy.any():
            actions[greedy] = yield obs[greedy]
        return actions

    def sample(
        self, num_steps: int, epsilon: float, weights: dict[str, torch.Tensor] | None = None,
        frames_only: bool = False,
    ) -> dict[str, Any]:
        """At least `num_steps` transitions (a multiple of num_envs, resets excluded), and
        the episodes that finished: (return, length, transitions of this batch so far, the
        wall time it ended at).

        frames_only (stacked frames, for the frame replay memory): "obs" and "next_obs"
        hold only the newest frame of each stack, and "first_frames" the older frames of
        the stacks that start an episode (one per true "episode_starts", in order): every
        frame travels once, a quarter of the bytes of whole stacks."""
        if weights is not None:
            self.set_weights(weights)
        steps = self._sample_steps(num_steps, epsilon, frames_only)
        try:
            greedy_obs = next(steps)
            while True:
                greedy_obs = steps.send(self.greedy(greedy_obs))
        except StopIteration as done:
            return done.value

    def begin(self, num_steps: int, epsilon: float, frames_only: bool = False
              ) -> tuple[np.ndarray | None, dict[str, Any] | None]:
        """sample() with the learner acting (algo.acting=learner): (the observations of
        the rows that act greedily at the first step, None), or (None, the batch) when no
        step needed the network. resume() answers with their actions."""
        self._stepping = self._sample_steps(num_steps, epsilon, frames_only)
        return self._advance(None)

    def resume(self, actions: np.ndarray) -> tuple[np.ndarray | None, dict[str, Any] | None]:
        """The greedy actions for the observations begin() or resume() handed back: the
        next step's observations to act on, or the finished batch."""
        return self._advance(actions)

    def _advance(self, actions: np.ndarray | None
                 ) -> tuple[np.ndarray | None, dict[str, Any] | None]:
        if self._stepping is None:
            raise RuntimeError("resume() before begin()")
        try:
            obs = next(self._stepping) if actions is None else self._stepping.send(actions)
        except StopIteration as done:
            self._stepping = None
            return None, done.value
        return obs, None

    def _sample_steps(self, num_steps: int, epsilon: float, frames_only: bool
                      ) -> Generator[np.ndarray, np.ndarray, dict[str, Any]]:
        """sample()'s loop: yields the observations that need greedy actions at each
        step and takes the actions back; returns the batch."""
        cols: dict[str, list] = {k: [] for k in (
            "env_ids", "obs", "actions", "rewards", "next_obs", "terminated", "truncated",
            "episode_starts", "first_frames")}
        episodes: list[tuple[float, int, int, float]] = []
        stored = 0
        ids = np.arange(self.num_envs) + self.env_offset
        while stored < num_steps:
            actions = yield from self._explore(self.obs, epsilon)
            next_obs, rewards, terminated, truncated, info = self.envs.step(actions)
            keep = ~self.resetting
            if keep.any():
                cols["env_ids"].append(ids[keep])
                if frames_only:
                    cols["obs"].append(self.obs[keep, -1])
                    cols["next_obs"].append(next_obs[keep, -1])
                    cols["first_frames"].append(self.obs[keep & self.episode_start, :-1])
                else:
                    cols["obs"].append(self.obs[keep])
                    cols["next_obs"].append(next_obs[keep])
                cols["actions"].append(actions[keep])
                cols["rewards"].append(rewards[keep].astype(np.float32))
                cols["terminated"].append(terminated[keep])
                cols["truncated"].append(truncated[keep])
                cols["episode_starts"].append(self.episode_start[keep])
                stored += int(keep.sum())
            self.ep_return[keep] += rewards[keep]
            self.ep_length[keep] += 1
            done = keep & (terminated | truncated)
            # With episodic lives an episode ends at each life lost; the game goes on
            # (lives left) and so does its return, reported once, when the game ends.
            game_over = done & (truncated | (np.asarray(info["lives"]) == 0)) if (
                self.episodic_life) else done
            now = time.time()
            for i in np.flatnonzero(game_over):
                episodes.append((float(self.ep_return[i]), int(self.ep_length[i]), stored, now))
            self.ep_return[game_over] = 0.0
            self.ep_length[game_over] = 0
            # A reset step's obs starts an episode; a kept step's obs continues one.
            self.episode_start = self.resetting.copy()
            self.resetting = done
            self.obs = next_obs
        batch: dict[str, Any] = {k: np.concatenate(v) for k, v in cols.items() if v}
        batch["episodes"] = episodes
        batch["steps"] = stored
        return batch

    @torch.inference_mode()
    def sample_episodes(
        self, n: int, max_steps: int, weights: dict[str, torch.Tensor] | None = None
    ) -> list[dict[str, Any]]:
        """`n` full episodes played by the stochastic policy (softmax over the network's
        outputs), as per-episode arrays obs, actions, rewards, and the wall time each ended
        at (ended_at).

        Episodes are played in rounds in which every env used plays exactly one episode
        from a reset, so that short episodes are not favoured over long ones."""
        if weights is not None:
            self.set_weights(weights)
        episodes: list[dict[str, Any]] = []
        while len(episodes) < n:
            take = min(n - len(episodes), self.num_envs)
            obs, _ = self.envs.reset()
            cols: list[dict[str, list]] = [{"obs": [], "actions": [], "rewards": []}
                                           for _ in range(take)]
            ended_at = [0.0] * take
            active = np.zeros(self.num_envs, dtype=np.bool_)
            active[:take] = True
            for _ in range(max_steps):
                probs = torch.softmax(self.net(torch.as_tensor(obs)), dim=1)
                actions = torch.multinomial(probs, 1, generator=self.torch_rng).squeeze(
                    1).numpy()
                next_obs, rewards, terminated, truncated, _ = self.envs.step(actions)
                for i in np.flatnonzero(active):
                    cols[i]["obs"].append(obs[i])
                    cols[i]["actions"].append(actions[i])
                    cols[i]["rewards"].append(float(rewards[i]))
                ended = active & (terminated | truncated)
                for i in np.flatnonzero(ended):
                    ended_at[i] = time.time()
                active &= ~ended
                obs = next_obs
                if not active.any():
                    break
            now = time.time()  # episodes cut at max_steps end now
            episodes += [{"obs": np.stack(c["obs"]), "actions": np.asarray(c["actions"]),
                          "rewards": np.asarray(c["rewards"], dtype=np.float64),
                          "ended_at": ended_at[i] or now}
                         for i, c in enumerate(cols)]
        # The next sample() or sample_episodes() starts from fresh resets.
        self.obs, _ = self.envs.reset()
        self.episode_start[:] = True
        self.resetting[:] = False
        self.ep_return[:] = 0.0
        self.ep_length[:] = 0
        return episodes

    def close(self) -> None:
        """Close the envs."""
        self.envs.close()


def remote_worker_class(num_cpus: float = 1.0):
    """RolloutWorker as a Ray actor class (imported lazily: Ray is optional here). Ray does
    not restart it: a restart would rerun its constructor with the same seed and replay its
    episodes; algos.core.workers.WorkerPool replaces a dead worker instead."""
    import ray

    return ray.remote(num_cpus=num_cpus, max_restarts=0, max_task_retries=0)(RolloutWorker)
