"""Kernels of the **selective diagonal** form: Mamba-1's selective scan.

``h_t = exp(dt_t A) * h_{t-1} + (dt_t x_t) B_t^T`` over a ``(D, N)`` state per sequence,
``y_t = h_t C_t + D x_t``; cells of this form derive from
:class:`rnnkit.core.selective.SelectiveDiagonalCell` (Mamba). No backend materialises the
``(B, T, D, N)`` states. Backends, named as users pass them to ``backend=``:

==================  =============================================================================
``torch_loop.py``   backend ``selective_torch``: the step loop in torch, chunks recomputed in the
                    backward (any device and dtype; the fallback of ``selective_cpp``)
``cpp/``            backend ``selective_cpp``: C++ loops over time per lane, lanes in parallel,
                    backward by recomputation from checkpoints (CPU, float32/float64)
``triton/``         backend ``selective_triton``: chunked Triton kernels, one program per
                    (batch row, block of channels) (CUDA; CPU under ``TRITON_INTERPRET=1``)
==================  =============================================================================

**Reference.** :data:`REFERENCE` (:func:`.reference.selective_scan_reference`) is the
step-by-step recurrence; the cell-level oracle is the generic loop over ``Cell.recur``.
``tests/test_form_selective.py`` pits every backend against both on odd shapes.
"""

from __future__ import annotations

from rnnkit.core.dispatch import Kernel
from rnnkit.kernels.selective import cpp, torch_loop, triton
from rnnkit.kernels.selective.cpp import selective_scan_cpp
from rnnkit.kernels.selective.reference import selective_scan_reference
from rnnkit.kernels.selective.reference import selective_scan_reference as REFERENCE
from rnnkit.kernels.selective.torch_loop import selective_scan_torch
from rnnkit.kernels.selective.triton import selective_scan_triton

__all__ = [
    "REFERENCE",
    "kernels",
    "selective_scan_cpp",
    "selective_scan_reference",
    "selective_scan_torch",
    "selective_scan_triton",
]


def kernels() -> list[Kernel]:
    """Every backend of the form: ``selective_torch``, ``selective_cpp``, ``selective_triton``."""
    return [*torch_loop.kernels(), *cpp.kernels(), *triton.kernels()]
