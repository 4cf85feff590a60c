"""Kernels of the **gated** form: ``g_t = px_t + R h_{t-1}`` then a pointwise gate function.

The cells of this form are core's Elman (tanh, ReLU), LSTM, GRU and sLSTM, with ``R``
block-diagonal over heads (``[G, heads, D, D]``). One sub-folder per backend, named as users
pass it to ``backend=``:

========================  =========================================================================
``fused/``                pure-torch time loops with a hand-written backward (any device)
``fused_cpp/``            the same loops in C++ (CPU; ``csrc/`` holds the sources)
``triton/``               fused Triton kernels that keep ``R`` on-chip across steps (CUDA)
``torch_native.py``       backend ``torch``: delegation to torch's own RNN ops (cuDNN, oneDNN)
========================  =========================================================================

**Reference.** Every backend here is tested against :data:`REFERENCE`, the generic loop over
``Cell.recur`` (:func:`rnnkit.core.reference.reference_forward`), whose per-step equations are
the cells' ``recur`` methods in :mod:`rnnkit.core.cells`. ``tests/test_form_gated.py`` pits
every backend against it on odd shapes, gradients included.
"""

from __future__ import annotations

from rnnkit.core.reference import reference_forward as REFERENCE

__all__ = ["REFERENCE"]
