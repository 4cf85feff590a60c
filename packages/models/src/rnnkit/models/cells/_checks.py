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


def check_dt_range(dt_min: float, dt_max: float, dt_floor: float | None = None) -> None:
    """``0 < dt_min <= dt_max < inf`` (and ``0 < dt_floor <= dt_max`` when given), else a
    ``ValueError`` naming the argument at fault."""
    # exp(dt A) and the bilinear map with Re A < 0 are contractions for every finite dt > 0; a
    # non-positive step makes the decay 1 or growing, and an infinite one makes exp(dt A) NaN
    # for complex A (inf * 0 in its phase): both are unstable discretisations
    if not (0.0 < dt_min <= dt_max and math.isfinite(dt_max)):
        raise ValueError(
            f"need 0 < dt_min <= dt_max < inf (a stable discretisation needs a finite dt > 0), "
            f"got dt_min={dt_min}, dt_max={dt_max}"
        )
    if dt_floor is not None and not 0.0 < dt_floor <= dt_max:
        raise ValueError(f"need 0 < dt_floor <= dt_max, got dt_floor={dt_floor}")
