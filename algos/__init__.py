"""Our own implementations of the Hugging Face Deep RL course algorithms (units 1 to 4).

Nothing in this package knows of Hydra, Ray Tune or MLflow: an algorithm takes a typed
config, an env config, a seed and a :class:`~algos.core.reporting.Reporter`, and returns
its result. The registry below is how the pipelines find an algorithm by its config name.
"""

from __future__ import annotations

from algos.registry import ALGORITHMS, Algorithm, get_algorithm

__all__ = ["ALGORITHMS", "Algorithm", "get_algorithm"]
