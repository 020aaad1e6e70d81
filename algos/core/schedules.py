"""Schedules: the course's exponential decay of epsilon (unit 2), and the linear decay of
unit 3 (DQN's epsilon, and its learning rate when algo.lr_end is set)."""

from __future__ import annotations

import math


def exponential_epsilon(episode: int, start: float, end: float, decay_rate: float) -> float:
    """Course unit 2: end + (start - end) * exp(-decay_rate * episode)."""
    return end + (start - end) * math.exp(-decay_rate * episode)


def linear(step: int, start: float, end: float, duration: int) -> float:
    """Course unit 3: from start to end linearly over `duration` steps, then end."""
    if duration <= 0:
        return end
    fraction = min(1.0, step / duration)
    return start + fraction * (end - start)
