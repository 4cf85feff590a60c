"""Kernels of the **matrix-state** form: a per-head memory written by rank-one updates.

``S_t = S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T`` (delta rule) or
``S_{t-1} + beta_t v_t k_t^T`` (linear attention), read out by ``o_t = S_t q_t``; cells of this
form derive from :class:`rnnkit.core.matrix_state.MatrixStateCell` (DeltaNet). Backends, named
as users pass them to ``backend=``:

================  ===============================================================================
``chunked.py``    backend ``chunked``: chunks of 64 tokens in the WY/UT form, written backward
``triton/``       backend ``chunked_triton``: the same algorithm, forward and written backward
                  as Triton kernels (CUDA; CPU under ``TRITON_INTERPRET=1``)
================  ===============================================================================

**Reference.** :data:`REFERENCE` (:func:`.reference.memory_recurrence`) is the step-by-step
recurrence; the cell-level oracle is the generic loop over ``Cell.recur``.
``tests/test_form_matrix_state.py`` pits every backend against both on odd shapes.
"""

from __future__ import annotations

from rnnkit.core.dispatch import Kernel
from rnnkit.kernels.matrix_state import chunked, triton
from rnnkit.kernels.matrix_state.chunked import CHUNK, chunked_forward, delta_rule_chunked
from rnnkit.kernels.matrix_state.reference import memory_recurrence
from rnnkit.kernels.matrix_state.reference import memory_recurrence as REFERENCE
from rnnkit.kernels.matrix_state.triton import delta_rule_triton

__all__ = [
    "CHUNK",
    "REFERENCE",
    "chunked_forward",
    "delta_rule_chunked",
    "delta_rule_triton",
    "kernels",
    "memory_recurrence",
]


def kernels() -> list[Kernel]:
    """Every backend of the form: ``chunked``, ``chunked_triton``."""
    return [*chunked.kernels(), *triton.kernels()]
