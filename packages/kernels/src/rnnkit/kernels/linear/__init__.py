"""Kernels of the **diagonal linear** form: ``h_t = a_t * h_{t-1} + b_t`` (real or complex).

Cells of this form derive from :class:`rnnkit.core.linear.DiagonalLinearCell` (LRU, and any
third-party cell that supplies ``coefficients`` and ``readout``). Backends, named as users pass
them to ``backend=``:

=================  ==============================================================================
``scan/``          backend ``scan``: chunked scan in torch or C++ with a hand-written backward, and
                   backend ``scan_triton``: the same scan as Triton kernels
=================  ==============================================================================

**Reference.** :data:`REFERENCE` (:func:`rnnkit.kernels.linear.scan.linear_scan_reference`) is
the sequential float loop of the recurrence; the cell-level oracle is the generic loop over
``Cell.recur``. ``tests/test_form_linear.py`` pits every backend against both on odd shapes.
"""

from __future__ import annotations

from rnnkit.kernels.linear.scan.op import linear_scan_reference as REFERENCE

__all__ = ["REFERENCE"]
