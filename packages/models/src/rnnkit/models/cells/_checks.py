"""Hyperparameter checks shared by the cells: each error names the argument at fault."""

from __future__ import annotations

import math


def check_range(name: str, value: object, *, minimum: float | None = None) -> tuple[float, float]:
    """``(low, high)`` as floats if ``value`` is a pair of finite numbers with ``low <= high``
    (and ``low >= minimum`` when given), else a ``ValueError`` naming ``name``."""
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        low, high = float(value[0]), float(value[1])
        if (
            math.isfinite(low)
            and math.isfinite(high)
            and low <= high
            and (minimum is None or low >= minimum)
        ):
            return low, high
    floor = "" if minimum is None else f", low >= {minimum}"
    raise ValueError(
        f"{name} must be a pair (low, high) of finite numbers with low <= high{floor}, "
        f"got {value!r}"
    )


def check_finite(name: str, value: object, *, positive: bool = False) -> float:
    """``value`` as a float if it is a finite number (``> 0`` when ``positive``), else a
    ``ValueError`` naming ``name``."""
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (not positive or value > 0)
    ):
        return float(value)
    what = "a finite number > 0" if positive else "a finite number"
    raise ValueError(f"{name} must be {what}, got {value!r}")
