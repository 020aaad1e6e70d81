"""Replay memories: the frame-deduplicating one samples exactly what whole stacks would."""

from __future__ import annotations

import numpy as np
import pytest

from algos.core.replay import FrameReplayBuffer, ReplayBuffer
from tests.helpers import FRAME, STACK, check_frame_memory_on, feed, make_stream


@pytest.mark.parametrize("n_envs,capacity", [(1, 60), (3, 90), (2, 1000)])
def test_frame_memory_samples_what_whole_stacks_would(n_envs, capacity):
    stream = make_stream(n_envs, steps=400, seed=n_envs)
    by_id = {int(t[3]): t for t in stream}
    frames = FrameReplayBuffer(capacity, FRAME, stack=STACK, n_envs=n_envs, seed=0)
    feed(frames, stream)
    batch = frames.sample(2000)
    for k in range(2000):
        e, obs, action, reward, next_obs, terminated, truncated, _ = by_id[int(batch.rewards[k])]
        assert np.array_equal(batch.obs[k], obs)
        assert np.array_equal(batch.next_obs[k], next_obs)  # the true final obs included
        assert batch.actions[k] == action and bool(batch.terminated[k]) == terminated
    # Coverage: every transition still fully in memory can be sampled, and nothing else.
    sampled = {int(r) for r in frames.sample(50_000).rewards}
    live = set()
    for e in range(n_envs):
        ids = [int(t[3]) for t in stream if t[0] == e]
        # Walk the env's slots back from the newest, as the memory laid them out.
        slots = []
        for t in (t for t in stream if t[0] == e):
            if t[7]:
                slots += [None] * (STACK - 1)
            slots.append(int(t[3]))
            if t[5] or t[6]:
                slots.append(None)
        ring = frames.ring
        kept = slots[-ring:]
        for pos, tid in enumerate(kept):
            if tid is not None and pos >= STACK - 1 and pos + 1 < len(kept):
                live.add(tid)
        assert set(ids) >= {t for t in live if by_id[t][0] == e}
    assert sampled == live


def test_wraparound_never_mixes_old_and_new_frames():
    stream = make_stream(1, steps=1000, seed=9)
    by_id = {int(t[3]): t for t in stream}
    frames = FrameReplayBuffer(37, FRAME, stack=STACK, n_envs=1, seed=1)
    feed(frames, stream, chunk=1)
    batch = frames.sample(5000)
    for k in range(5000):
        _, obs, _, _, next_obs, *_ = by_id[int(batch.rewards[k])]
        assert np.array_equal(batch.obs[k], obs) and np.array_equal(batch.next_obs[k], next_obs)


def test_a_restarted_stream_does_not_sample_its_broken_step():
    frames = FrameReplayBuffer(100, FRAME, stack=STACK, n_envs=1, seed=0)
    stream = make_stream(1, steps=30, seed=3)
    stream = [t for t in stream][:10]
    # Cut the stream mid-episode and start a new episode (a worker restarted).
    fresh = make_stream(1, steps=5, seed=4)
    fresh = [(0, o, a, r + 1000, n, te, tr, True if i == 0 else s)
             for i, (_, o, a, r, n, te, tr, s) in enumerate(fresh)]
    feed(frames, stream + fresh, chunk=1)
    by_id = {int(t[3]): t for t in stream + fresh}
    cut = int(stream[-1][3])
    batch = frames.sample(3000)
    assert cut not in set(batch.rewards.astype(int).tolist())
    for k in range(3000):
        _, obs, _, _, next_obs, *_ = by_id[int(batch.rewards[k])]
        assert np.array_equal(batch.obs[k], obs) and np.array_equal(batch.next_obs[k], next_obs)


def test_whole_transition_memory_round_trips_and_wraps():
    buffer = ReplayBuffer(10, (2,), np.float32, n_envs=2, seed=0)
    for t in range(30):
        buffer.add(np.array([t % 2]), np.full((1, 2), t, np.float32), np.array([t % 3]),
                   np.array([float(t)]), np.full((1, 2), t + 0.5, np.float32),
                   np.array([t % 5 == 0]), np.array([False]))
    assert len(buffer) == 10
    batch = buffer.sample(500)
    assert set(batch.rewards.astype(int).tolist()) == set(range(20, 30))
    assert np.all(batch.obs[:, 0] == batch.rewards) and np.all(batch.next_obs[:, 0] ==
                                                               batch.rewards + 0.5)
    assert np.all(batch.terminated == (batch.rewards.astype(int) % 5 == 0))


def test_a_memory_that_does_not_fit_says_so_before_allocating():
    with pytest.raises(MemoryError, match="algo.buffer_size"):
        FrameReplayBuffer(10**12, (84, 84))


def test_frame_memory_stores_one_frame_per_slot():
    frames = FrameReplayBuffer(1000, (84, 84), n_envs=2)
    whole = ReplayBuffer(1000, (4, 84, 84), np.uint8, n_envs=2)
    assert frames.nbytes / 1000 == pytest.approx(84 * 84 + 10)
    assert whole.nbytes / frames.nbytes > 7.9  # two stacks of 4 frames per transition


def feed_compact(buffer, stream, chunk: int = 7):
    """As feed(), in RolloutWorker.sample(frames_only=True)'s format: newest frames, and
    the older frames of the stacks that start an episode."""
    for i in range(0, len(stream), chunk):
        cols = list(zip(*stream[i:i + chunk], strict=True))
        obs, next_obs, starts = np.array(cols[1]), np.array(cols[4]), np.array(cols[7])
        buffer.add(np.array(cols[0]), obs[:, -1], np.array(cols[2]),
                   np.array(cols[3], dtype=np.float32), next_obs[:, -1],
                   np.array(cols[5]), np.array(cols[6]), starts,
                   first_frames=obs[starts, :-1])


@pytest.mark.parametrize("n_envs", [1, 3])
def test_newest_frames_only_fill_the_memory_as_whole_stacks_do(n_envs):
    stream = make_stream(n_envs, steps=300, seed=11)
    whole = FrameReplayBuffer(200, FRAME, stack=STACK, n_envs=n_envs, seed=0)
    compact = FrameReplayBuffer(200, FRAME, stack=STACK, n_envs=n_envs, seed=0)
    feed(whole, stream)
    feed_compact(compact, stream)
    a, b = whole.state_dict(), compact.state_dict()
    for key in ("frames", "actions", "rewards", "terminated", "is_step", "count",
                "in_episode"):
        assert np.array_equal(a[key], b[key]), key


def test_newest_frames_only_refuse_an_episode_whose_start_was_not_sent():
    stream = make_stream(1, steps=20, seed=5)
    frames = FrameReplayBuffer(100, FRAME, stack=STACK, n_envs=1, seed=0)
    with pytest.raises(ValueError, match="never saw start"):
        mid = next(k for k, t in enumerate(stream) if not t[7])
        feed_compact(frames, stream[mid:])


def test_a_rollout_worker_sends_each_pong_frame_once_and_the_memory_is_the_same():
    import torch

    from algos.core.envs import EnvConfig
    from algos.core.networks import NetworkFactory
    from algos.core.rollout import RolloutWorker

    # Episodes truncated at 300 agent steps: starts and true final frames in 1,500 steps.
    env_cfg = EnvConfig(id="ALE/Pong-v5", kind="atari", max_episode_frames=1200)
    memories, sizes = [], []
    for frames_only in (False, True):
        torch.manual_seed(0)  # the same network acts in both runs
        worker = RolloutWorker(env_cfg, 2, NetworkFactory("cnn", ()), seed=3)
        memory = FrameReplayBuffer(3000, (84, 84), n_envs=2, seed=0)
        for _ in range(3):
            batch = worker.sample(500, epsilon=0.5, frames_only=frames_only)
            memory.add(batch["env_ids"], batch["obs"], batch["actions"], batch["rewards"],
                       batch["next_obs"], batch["terminated"], batch["truncated"],
                       batch["episode_starts"], batch.get("first_frames"))
            sizes.append(sum(a.nbytes for a in batch.values() if isinstance(a, np.ndarray)))
        worker.close()
        memories.append(memory.state_dict())
    # Episodes ended and started again: final frames and first stacks beyond the first two.
    assert memories[0]["count"].sum() > 1500 + 2 * (STACK - 1)
    for key in ("frames", "actions", "rewards", "terminated", "is_step", "count"):
        assert np.array_equal(memories[0][key], memories[1][key]), key
    assert sum(sizes[3:]) < sum(sizes[:3]) / 3.5


def test_frame_memory_samples_every_valid_transition_equally_often():
    # Rejection sampling over the written slots must stay uniform over the valid ones,
    # across env streams of different fill (a 1M-slot mask per minibatch is not an option).
    stream = make_stream(3, steps=120, seed=21)
    stream = [t for t in stream if t[0] != 2 or int(t[3]) % 3 == 0]  # env 2 fills slower
    frames = FrameReplayBuffer(240, FRAME, stack=STACK, n_envs=3, seed=2)
    feed(frames, stream)
    n = 200_000
    ids, counts = np.unique(frames.sample(n).rewards.astype(int), return_counts=True)
    assert ids.size == len(frames)
    expected = n / ids.size
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected)), (counts.min(),
                                                                     counts.max(), expected)


def test_frames_in_a_torch_tensor_sample_what_the_numpy_memory_does():
    check_frame_memory_on("cpu")
