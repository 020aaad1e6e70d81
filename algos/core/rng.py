"""Seeding helpers: a run is a function of (config, seed)."""

from __future__ import annotations

from typing import Any

import numpy as np


def generator_state(rng: np.random.Generator) -> dict[str, Any]:
    """The state of a numpy Generator, as plain data for a checkpoint."""
    return dict(rng.bit_generator.state)


def set_generator_state(rng: np.random.Generator, state: dict[str, Any]) -> None:
    """Put a numpy Generator back into a checkpointed state."""
    rng.bit_generator.state = state
