"""Divergence: a loss or value that is no longer a finite number ends training at once.

Retrying from the last checkpoint would diverge again, so the error says what went bad
and where, and the pipelines fail the run without retrying it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


class NonFiniteError(FloatingPointError):
    """Training diverged: `name` was `value` (NaN or infinite) at env step `step`."""

    def __init__(self, step: int, name: str, value: float) -> None:
        self.step, self.name, self.value = int(step), name, float(value)
        super().__init__(
            f"{name} = {value} at env step {int(step):,}: training diverged (a loss or value "
            "is no longer finite); lower the learning rate, clip the gradients "
            "(algo.max_grad_norm), or check the env's rewards"
        )


def check_finite(step: int, values: Mapping[str, float]) -> None:
    """Raise NonFiniteError for the first of `values` that is NaN or infinite."""
    for name, value in values.items():
        if not math.isfinite(value):
            raise NonFiniteError(step, name, value)
