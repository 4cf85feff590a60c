"""Numerical comparison helpers for tests: relative RMS error and per-dtype tolerances."""

from __future__ import annotations

import torch
from torch import Tensor

#: Relative RMS tolerance of a computation in each dtype against a float64 reference.
TOLERANCES: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 5e-3,
    torch.bfloat16: 3e-2,
}


def tolerance(dtype: torch.dtype) -> float:
    """The relative RMS tolerance for ``dtype`` (see :data:`TOLERANCES`)."""
    try:
        return TOLERANCES[dtype]
    except KeyError:
        raise ValueError(f"no tolerance defined for dtype {dtype}") from None


def rel_rms(actual: Tensor, expected: Tensor) -> float:
    """``rms(actual - expected) / rms(expected)``, computed in float64.

    Returns ``inf`` if ``actual`` has a NaN or infinity, and the plain RMS of ``actual`` when
    ``expected`` is exactly zero. Shapes must match.
    """
    if actual.shape != expected.shape:
        raise ValueError(f"shape mismatch: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    a = actual.detach().to(torch.complex128 if actual.is_complex() else torch.float64).cpu()
    e = expected.detach().to(a.dtype).cpu()
    if not torch.isfinite(a).all():
        return float("inf")
    if a.numel() == 0:
        return 0.0
    diff = (a - e).abs().square().mean().sqrt().item()
    scale = e.abs().square().mean().sqrt().item()
    return diff / scale if scale > 0 else diff


def assert_close(name: str, actual: Tensor, expected: Tensor, tol: float) -> None:
    """Assert ``rel_rms(actual, expected) <= tol`` with a message naming ``name``."""
    err = rel_rms(actual, expected)
    assert err <= tol, f"{name}: relative RMS error {err:.3e} > tolerance {tol:.1e}"
