"""Replay memory for 1,000,000 Pong transitions: measured bytes of each layout.

Allocates the frame-deduplicating memory for real (it touches every page, so the figure
is resident memory, not a promise) and reports the whole-stack layouts from their array
sizes per transition, scaled. Goal: at most 7.5 GB. Usage: python -m benchmarks.replay_memory
"""

from __future__ import annotations

import resource

import numpy as np

from algos.core.replay import FrameReplayBuffer, ReplayBuffer
from benchmarks.common import table, write

N = 1_000_000


def rss() -> int:
    """Peak resident bytes of this process."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    """Measure, print the table, write results/replay_memory.json."""
    before = rss()
    frames = FrameReplayBuffer(N, (84, 84), stack=4, n_envs=8)
    frames.frames.fill(1)  # touch every page
    resident = rss() - before
    small = 10_000
    whole = ReplayBuffer(small, (4, 84, 84), np.uint8, n_envs=8).nbytes * (N / small)
    no_next = whole / 2
    rows = [
        ["frames stored once (ours)", frames.nbytes / 1e9, resident / 1e9],
        ["obs and next_obs stacks (naive)", whole / 1e9, "-"],
        ["obs stacks only (SB3 optimize_memory_usage)", no_next / 1e9, "-"],
    ]
    print(f"Replay memory for {N:,} Pong transitions (84x84 uint8, 4 stacked frames)")
    print(table(["layout", "GB (arrays)", "GB (resident, measured)"], rows))
    data = {"transitions": N, "frames_bytes": frames.nbytes,
            "frames_resident_bytes": resident, "naive_bytes": whole,
            "no_next_obs_bytes": no_next}
    print(f"written to {write('replay_memory', data)}")


if __name__ == "__main__":
    main()
