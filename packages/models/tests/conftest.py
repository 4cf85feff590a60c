"""Shared by rnnkit-models' tests: which backends exist in this environment.

rnnkit-models is tested alone (nox's ``tests(package='models')`` installs core and models
only), where the fast backends of rnnkit-kernels (``scan``, ``chunked``, ``selective_torch``,
...) are not registered; the tests that compare a cell on them skip there and run in the
sessions that install rnnkit-kernels (``integration``, the development environment).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

HAS_KERNELS = importlib.util.find_spec("rnnkit.kernels") is not None

#: Skip a test that needs a backend of rnnkit-kernels when it is not installed.
needs_kernels = pytest.mark.skipif(
    not HAS_KERNELS, reason="the backend comes with rnnkit-kernels, which is not installed"
)


def backend_params(*names: str) -> list[Any]:
    """``names`` as pytest parameters; every one but ``reference`` skips without kernels."""
    return [n if n == "reference" else pytest.param(n, marks=needs_kernels) for n in names]


def available_backends(*names: str) -> tuple[str, ...]:
    """``names`` without the kernels' backends when rnnkit-kernels is not installed."""
    return names if HAS_KERNELS else tuple(n for n in names if n == "reference")
