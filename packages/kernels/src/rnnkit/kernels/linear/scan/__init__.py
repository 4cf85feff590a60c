"""Scans for the diagonal linear recurrence ``h_t = a_t * h_{t-1} + b_t``.

:func:`linear_scan` is the op (pure-torch chunked scan, Triton kernels, resets, packed
sequences, a hand-written backward); :func:`kernels` registers it for every cell of the
diagonal linear form as the ``scan`` and ``scan_triton`` backends.
"""

from __future__ import annotations

from rnnkit.kernels.linear.scan._alloc import poison_enabled, set_poison
from rnnkit.kernels.linear.scan._register import kernels
from rnnkit.kernels.linear.scan.op import linear_scan, linear_scan_reference

__all__ = ["kernels", "linear_scan", "linear_scan_reference", "poison_enabled", "set_poison"]
