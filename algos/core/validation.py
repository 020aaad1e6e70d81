"""Range checks for the algorithms' typed configs, raised as one clear error per key."""

from __future__ import annotations

from typing import Any


class ConfigValueError(ValueError):
    """A config value outside what is allowed; names the key and the allowed values."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"{key}={value!r}: {allowed}")

    def with_prefix(self, prefix: str) -> ConfigValueError:
        """The same error with the key placed under `prefix` (e.g. 'algo')."""
        return ConfigValueError(f"{prefix}.{self.key}", self.value, self.allowed)


def positive(obj: Any, *keys: str) -> None:
    """Each key of `obj` must be > 0."""
    for key in keys:
        value = getattr(obj, key)
        if not value > 0:
            raise ConfigValueError(key, value, "must be > 0")


def at_least(obj: Any, key: str, low: float) -> None:
    """`obj.key` must be >= low."""
    value = getattr(obj, key)
    if not value >= low:
        raise ConfigValueError(key, value, f"must be >= {low}")


def in_range(obj: Any, key: str, low: float, high: float, *, low_open: bool = False) -> None:
    """`obj.key` must lie in [low, high], or (low, high] with low_open."""
    value = getattr(obj, key)
    ok = (low < value if low_open else low <= value) and value <= high
    if not ok:
        interval = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise ConfigValueError(key, value, f"must be in {interval}")


def one_of(obj: Any, key: str, allowed: tuple) -> None:
    """`obj.key` must be one of `allowed`."""
    value = getattr(obj, key)
    if value not in allowed:
        raise ConfigValueError(key, value, f"must be one of {', '.join(map(str, allowed))}")
