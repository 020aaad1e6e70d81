"""Uniform replay memories (course unit 3: no prioritization).

Two layouts behind one interface, `add(...)` and `sample(batch_size)`:

- :class:`ReplayBuffer` stores each transition's observation and next observation as
  they are (vector observations such as CartPole's, or frames when memory is no object).
- :class:`FrameReplayBuffer` stores each Atari frame once and rebuilds the stacks when it
  samples: 1,000,000 transitions of 84x84 frames take about 7.1 GB instead of 28 GB (no
  next observations) or 56 GB (both stacks).

Transitions arrive per env stream (`env_ids`), in the order each env produced them,
without the reset steps of next-step autoreset (the rollout workers drop those). A
transition stores `terminated` only: a truncated episode still bootstraps from its true
final observation, which both layouts keep.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Batch:
    """A sampled minibatch, as numpy arrays with the batch first."""

    obs: Any
    """numpy, or a torch tensor on the frames' device (FrameReplayBuffer on a device)."""
    actions: np.ndarray
    rewards: np.ndarray
    next_obs: Any
    """As obs."""
    terminated: np.ndarray


def available_memory() -> int | None:
    """Bytes of memory the OS says are available now (Linux), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(nbytes: int, what: str) -> None:
    """Raise MemoryError with the figures when `nbytes` will not fit in memory now."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise MemoryError(
            f"{what} needs {nbytes / 2**30:.2f} GiB but {free / 2**30:.2f} GiB is available; "
            "lower algo.buffer_size (or use the frame-deduplicating memory for Atari)"
        )


class ReplayBuffer:
    """A preallocated numpy ring of whole transitions (SB3's layout, one ring per env)."""

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        obs_dtype: np.dtype | type,
        n_envs: int = 1,
        seed: int | None = None,
    ) -> None:
        self.n_envs = n_envs
        self.ring = max(1, capacity // n_envs)
        obs_dtype = np.dtype(obs_dtype)
        check_fits(self.planned_nbytes(capacity, obs_shape, obs_dtype, n_envs),
                   f"a replay memory of {capacity:,} transitions")
        shape = (n_envs, self.ring)
        self.obs = np.zeros(shape + tuple(obs_shape), dtype=obs_dtype)
        self.next_obs = np.zeros(shape + tuple(obs_shape), dtype=obs_dtype)
        self.actions = np.zeros(shape, dtype=np.int64)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.terminated = np.zeros(shape, dtype=np.bool_)
        self.count = np.zeros(n_envs, dtype=np.int64)
        self.rng = np.random.default_rng(seed)

    @staticmethod
    def planned_nbytes(capacity: int, obs_shape: tuple[int, ...], obs_dtype, n_envs: int = 1
                       ) -> int:
        """Bytes the arrays of such a memory take (checked before allocating; known to the
        pipelines before anything starts)."""
        per_slot = 2 * int(np.prod(obs_shape)) * np.dtype(obs_dtype).itemsize + 8 + 4 + 1
        return per_slot * max(1, capacity // n_envs) * n_envs

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return sum(a.nbytes for a in (self.obs, self.next_obs, self.actions, self.rewards,
                                      self.terminated))

    @property
    def obs_nbytes(self) -> int:
        """Bytes of one sampled observation."""
        return self.obs[0, 0].nbytes

    def __len__(self) -> int:
        return int(np.minimum(self.count, self.ring).sum())

    def add(self, env_ids: np.ndarray, obs: np.ndarray, actions: np.ndarray,
            rewards: np.ndarray, next_obs: np.ndarray, terminated: np.ndarray,
            truncated: np.ndarray, episode_starts: np.ndarray | None = None,
            first_frames: np.ndarray | None = None) -> None:
        """Store transitions; row k came from env `env_ids[k]`. Whole observations only:
        `first_frames` (newest-frame batches) is FrameReplayBuffer's format."""
        if first_frames is not None:
            raise ValueError("ReplayBuffer stores whole observations; sample them with "
                             "frames_only=False")
        for k, e in enumerate(np.asarray(env_ids)):
            i = self.count[e] % self.ring
            self.obs[e, i] = obs[k]
            self.next_obs[e, i] = next_obs[k]
            self.actions[e, i] = actions[k]
            self.rewards[e, i] = rewards[k]
            self.terminated[e, i] = terminated[k]
            self.count[e] += 1

    def sample(self, batch_size: int) -> Batch:
        """Uniform over the stored transitions."""
        sizes = np.minimum(self.count, self.ring)
        if sizes.sum() == 0:
            raise ValueError("cannot sample an empty replay memory")
        flat = self.rng.integers(0, sizes.sum(), size=batch_size)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        env = np.searchsorted(offsets, flat, side="right") - 1
        idx = flat - offsets[env]
        return Batch(self.obs[env, idx], self.actions[env, idx], self.rewards[env, idx],
                     self.next_obs[env, idx], self.terminated[env, idx])

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this memory (for checkpoints)."""
        return {"kind": "whole", "obs": self.obs, "next_obs": self.next_obs,
                "actions": self.actions, "rewards": self.rewards,
                "terminated": self.terminated, "count": self.count,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned."""
        for key in ("obs", "next_obs", "actions", "rewards", "terminated", "count"):
            getattr(self, key)[...] = state[key]
        self.rng.bit_generator.state = state["rng"]


def check_fits_on(device, nbytes: int, what: str) -> None:
    """check_fits for host memory, or for a CUDA device's free memory."""
    if device is None or str(device) == "cpu":
        check_fits(nbytes, what)
        return
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    if nbytes > free:
        raise MemoryError(
            f"{what} needs {nbytes / 2**30:.2f} GiB on {device} but {free / 2**30:.2f} GiB "
            "is free there; lower algo.buffer_size or keep it in host memory "
            "(algo.replay_device=cpu)"
        )


class FrameReplayBuffer:
    """Stacked-frame transitions with each frame stored once (Dopamine's layout).

    Each env stream writes its own ring of slots. An episode of T steps takes T + 4 slots:
    the 3 older frames of its first stack, one slot per step (the newest frame of that
    step's observation, with its action, reward and terminated flag), and one slot for the
    newest frame of the final observation. A sampled stack is the `stack` slots ending at
    a step slot; its next stack ends one slot later. Within an episode the stack never
    crosses its start (the older frames are stored), and a step is sampled only when all
    its slots are still live: none overwritten by the write cursor, the next one written.

    The frames may live in a torch tensor on `device` (the learner's): on a GPU a minibatch
    is then gathered there and only its indices cross the bus. The bookkeeping stays in
    numpy.
    """

    def __init__(
        self,
        capacity: int,
        frame_shape: tuple[int, ...],
        stack: int = 4,
        n_envs: int = 1,
        seed: int | None = None,
        dtype: np.dtype | type = np.uint8,
        device=None,
    ) -> None:
        self.n_envs = n_envs
        self.stack = stack
        self.ring = max(stack + 2, capacity // n_envs)
        dtype = np.dtype(dtype)
        self.on_device = device is not None  # torch tensors there (the CPU too)
        frames, bookkeeping = self.planned_nbytes(capacity, frame_shape, stack, n_envs, dtype)
        what = f"a frame replay memory of {capacity:,} transitions"
        shape = (n_envs, self.ring)
        self.frames: Any  # a numpy array, or a torch tensor on `device`
        if self.on_device:
            import torch

            check_fits_on(device, frames, what)
            check_fits(bookkeeping, what)
            self.frames = torch.zeros(shape + tuple(frame_shape),
                                      dtype=torch.from_numpy(np.zeros(0, dtype)).dtype,
                                      device=device)
        else:
            check_fits(frames + bookkeeping, what)
            self.frames = np.zeros(shape + tuple(frame_shape), dtype=dtype)
        self.actions = np.zeros(shape, dtype=np.int32)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.terminated = np.zeros(shape, dtype=np.bool_)
        self.is_step = np.zeros(shape, dtype=np.bool_)
        self.count = np.zeros(n_envs, dtype=np.int64)
        self.in_episode = np.zeros(n_envs, dtype=np.bool_)
        self.rng = np.random.default_rng(seed)

    @staticmethod
    def planned_nbytes(capacity: int, frame_shape: tuple[int, ...], stack: int = 4,
                       n_envs: int = 1, dtype=np.uint8) -> tuple[int, int]:
        """(frame bytes, bookkeeping bytes) such a memory takes: the frames live on its
        device, the bookkeeping (action, reward, flags per slot) in host memory."""
        slots = max(stack + 2, capacity // n_envs) * n_envs
        return slots * int(np.prod(frame_shape)) * np.dtype(dtype).itemsize, slots * 10

    @property
    def frame_nbytes(self) -> int:
        """Bytes of one stored frame."""
        frame = self.frames[0, 0]
        return frame.nbytes if isinstance(frame, np.ndarray) else (
            frame.nelement() * frame.element_size())

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (the frames wherever they live)."""
        return self.frame_nbytes * self.ring * self.n_envs + sum(
            a.nbytes for a in (self.actions, self.rewards, self.terminated, self.is_step))

    @property
    def obs_nbytes(self) -> int:
        """Bytes of one sampled observation (a rebuilt stack)."""
        return self.stack * self.frame_nbytes

    def __len__(self) -> int:
        return int(self._valid_mask().sum())

    def _write(self, e: int, frame: np.ndarray, step: bool, action: int = 0,
               reward: float = 0.0, terminated: bool = False) -> None:
        """Write one slot's bookkeeping now and queue its frame for _store_frames."""
        i = self.count[e] % self.ring
        self._queued.append((e, i, frame))
        self.actions[e, i] = action
        self.rewards[e, i] = reward
        self.terminated[e, i] = terminated
        self.is_step[e, i] = step
        self.count[e] += 1

    def add(self, env_ids: np.ndarray, obs: np.ndarray, actions: np.ndarray,
            rewards: np.ndarray, next_obs: np.ndarray, terminated: np.ndarray,
            truncated: np.ndarray, episode_starts: np.ndarray | None = None,
            first_frames: np.ndarray | None = None) -> None:
        """Store transitions. obs and next_obs are stacks, oldest frame first; or, with
        `first_frames` (RolloutWorker.sample(frames_only=True)), only the newest frame of
        each, and first_frames the older frames of each episode-starting stack, in order.
        """
        compact = first_frames is not None
        if compact and episode_starts is None:
            raise ValueError("first_frames needs episode_starts")
        self._queued: list[tuple[int, int, np.ndarray]] = []
        try:
            self._add(env_ids, obs, actions, rewards, next_obs, terminated, truncated,
                      episode_starts, first_frames, compact)
        finally:
            self._store_frames(self._queued)
            self._queued = []

    def _store_frames(self, queued: list[tuple[int, int, np.ndarray]]) -> None:
        """Write the queued frames in one copy (one transfer to a device); a slot written
        twice in one batch (a ring smaller than the batch) keeps its last frame."""
        if not queued:
            return
        last = {(e, i): k for k, (e, i, _) in enumerate(queued)}
        keep = sorted(last.values())
        env = np.fromiter((queued[k][0] for k in keep), np.int64, len(keep))
        pos = np.fromiter((queued[k][1] for k in keep), np.int64, len(keep))
        frames = np.stack([queued[k][2] for k in keep])
        if self.on_device:
            import torch

            device = self.frames.device
            self.frames[torch.from_numpy(env).to(device), torch.from_numpy(pos).to(device)] = (
                torch.from_numpy(frames).to(device))
        else:
            self.frames[env, pos] = frames

    def _add(self, env_ids, obs, actions, rewards, next_obs, terminated, truncated,
             episode_starts, first_frames, compact) -> None:
        starts_seen = 0
        for k, e in enumerate(np.asarray(env_ids)):
            flagged = episode_starts is not None and bool(episode_starts[k])
            if flagged or not self.in_episode[e]:
                if self.in_episode[e] and self.count[e] > 0:
                    # The stream restarted mid-episode (a restarted worker): the step
                    # before has no next frame, so it must not be sampled.
                    self.is_step[e, (self.count[e] - 1) % self.ring] = False
                if compact and not flagged:
                    raise ValueError(f"env stream {e} continues an episode this memory "
                                     "never saw start, and its older frames were not sent")
                older = first_frames[starts_seen] if compact else obs[k][:-1]
                starts_seen += flagged
                for j in range(self.stack - 1):
                    self._write(e, older[j], step=False)
            newest = obs[k] if compact else obs[k][-1]
            self._write(e, newest, step=True, action=int(actions[k]),
                        reward=float(rewards[k]), terminated=bool(terminated[k]))
            self.in_episode[e] = True
            if terminated[k] or truncated[k]:
                self._write(e, next_obs[k] if compact else next_obs[k][-1], step=False)
                self.in_episode[e] = False

    def _valid(self, env: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Which of the slots (env, ring position pos) can be sampled now (broadcasts)."""
        count = self.count[env]
        # The absolute index of the slot at ring position pos: the newest write there.
        absolute = count - 1 - ((count - 1 - pos) % self.ring)
        oldest_live = np.maximum(count - self.ring, 0)
        return (
            self.is_step[env, pos]
            & (absolute >= 0)
            & (absolute - (self.stack - 1) >= oldest_live)  # its stack is not overwritten
            & (absolute + 1 < count)  # its next frame is written
        )

    def _valid_mask(self) -> np.ndarray:
        """(n_envs, ring) mask of slots that can be sampled now."""
        return self._valid(np.arange(self.n_envs)[:, None], np.arange(self.ring)[None, :])

    def _pick(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """(env, pos) of `batch_size` valid slots, uniform over the valid ones: uniform
        draws over the written slots, the invalid ones (first-stack frames, final frames,
        the few at the write cursor: about 4 per episode) drawn again. The cost grows
        with the batch, not with the memory (a mask over 1M slots costs milliseconds)."""
        written = np.minimum(self.count, self.ring)
        offsets = np.concatenate([[0], np.cumsum(written)])
        env = np.empty(batch_size, dtype=np.int64)
        pos = np.empty(batch_size, dtype=np.int64)
        todo = np.arange(batch_size)
        for _ in range(64):
            flat = self.rng.integers(0, offsets[-1], size=todo.size)
            e = np.searchsorted(offsets, flat, side="right") - 1
            p = (self.count[e] - written[e] + flat - offsets[e]) % self.ring
            ok = self._valid(e, p)
            env[todo[ok]], pos[todo[ok]] = e[ok], p[ok]
            todo = todo[~ok]
            if todo.size == 0:
                return env, pos
        # Almost nothing is valid (a memory that holds little but episode starts): draw
        # the rest from the mask of all valid slots.
        valid = np.flatnonzero(self._valid_mask())
        if valid.size == 0:
            raise ValueError("cannot sample an empty replay memory")
        env[todo], pos[todo] = np.divmod(valid[self.rng.integers(0, valid.size, todo.size)],
                                         self.ring)
        return env, pos

    def sample(self, batch_size: int) -> Batch:
        """Uniform over the valid transitions (obs and next_obs as tensors on the device
        when the frames live on one)."""
        if not self.count.any():
            raise ValueError("cannot sample an empty replay memory")
        env, pos = self._pick(batch_size)
        offsets = np.arange(-(self.stack - 1), 2)  # the stack and one more for next_obs
        slots = (pos[:, None] + offsets[None, :]) % self.ring
        if self.on_device:
            import torch

            device = self.frames.device
            rows = torch.from_numpy(env[:, None]).to(device, non_blocking=True)
            window = self.frames[rows, torch.from_numpy(slots).to(device, non_blocking=True)]
        else:
            window = self.frames[env[:, None], slots]  # (batch, stack + 1, *frame)
        return Batch(
            obs=window[:, :-1],
            actions=self.actions[env, pos].astype(np.int64),
            rewards=self.rewards[env, pos],
            next_obs=window[:, 1:],
            terminated=self.terminated[env, pos],
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this memory (for checkpoints), in host memory."""
        frames = self.frames.cpu().numpy() if self.on_device else self.frames
        return {"kind": "frames", "frames": frames, "actions": self.actions,
                "rewards": self.rewards, "terminated": self.terminated,
                "is_step": self.is_step, "count": self.count, "in_episode": self.in_episode,
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict() returned (into host or device memory)."""
        for key in ("actions", "rewards", "terminated", "is_step", "count", "in_episode"):
            getattr(self, key)[...] = state[key]
        if self.on_device:
            import torch

            self.frames.copy_(torch.from_numpy(np.asarray(state["frames"])))
        else:
            self.frames[...] = state["frames"]
        self.rng.bit_generator.state = state["rng"]
