"""Bound management: keep the input DAC and the output ADC out of saturation.

A crossbar read converts ``x = v`` with a DAC of range ``±inp_bound`` and every column sum
``z_j = Σ_i w̃_ij x_i`` with an ADC of range ``±out_bound``. Anything beyond a range is clipped,
and a clipped value is lost for good. Because the bit-line sum is linear in the inputs, a read
of ``x / β`` multiplied by ``β`` afterwards is the same product (only quantisation and noise
change), so a digital controller can trade resolution for range:

1. **DAC** (known before the read): ``β_0 = 2^⌈log2(max_i |v_i| / inp_bound)⌉`` (1 if it already
   fits): the smallest power of two, a shift in digital, that brings the vector into the DAC
   range.
2. **ADC** (known only after the read): while a conventional-ADC column of the vector clipped
   (``|z_j| > out_bound``), double ``β`` and read again. Each repetition is a fresh read
   (fresh read and output noise) and costs one more MVM; only the vectors that saturated are
   repeated.
3. Stop when nothing clips or the next ``β`` would exceed ``bm_max_factor``: that vector keeps
   its (clipped) last read.

The price is resolution: at ``β`` the DAC spends ``1/β`` of its levels on the vector and every
ADC step and noise sample counts ``β`` times in the result, so the error after bound
management is at most ``β`` times the quantisation error of one read (``Σ_i |w̃_ij| Δ_in/2 +
Δ_out/2`` in normalised units) plus noise. Columns that feed NL-ADCs do not trigger
repetitions: their converter's saturation is the activation's own (sigmoid, tanh).

This is the notion of aihwkit's ``bound_management`` (iterative halving on output
saturation, reference notes §2) extended with the DAC pre-scale; it is written from the
description above, not from its code.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from rnnkit.kernels.analog.config import AnalogConfig

__all__ = ["Read", "bound_managed", "dac_prescale"]

#: one read of a batch of (already noise-managed) vectors ``(n, in)``: the column outputs
#: ``(n, out)`` in normalised units and whether a conventional ADC of each vector clipped
#: ``(n,)`` bool.
Read = Callable[[Tensor], tuple[Tensor, Tensor]]


def dac_prescale(v: Tensor, config: AnalogConfig) -> Tensor:
    """``β_0 (n, 1)``: the smallest power of two ``>= 1`` with ``max|v| / β_0 <= inp_bound``,
    capped at ``bm_max_factor``. ``v: (n, in)``."""
    need = v.detach().abs().amax(-1, keepdim=True) / config.inp_bound
    exp = torch.ceil(torch.log2(need.clamp_min(1.0)))
    cap = math.floor(math.log2(config.bm_max_factor))
    return torch.exp2(exp.clamp_max(cap)).to(v.dtype)


def bound_managed(read: Read, v: Tensor, config: AnalogConfig) -> Tensor:
    """``read`` with bound management: ``(n, in) -> (n, out)``, in the units of ``v W̃^T``.

    ``v`` is the input after noise management (the DAC clips it at ``±inp_bound``).
    Straight-through gradients are those of ``read`` (scaling by ``β`` and back cancels).
    """
    beta = dac_prescale(v, config)
    z, sat = read(v / beta)
    z = z * beta
    limit = config.bm_max_factor
    rows = (sat & (2 * beta.squeeze(-1) <= limit)).nonzero().squeeze(-1)
    while rows.numel():
        b = beta.index_select(0, rows) * 2
        zr, sr = read(v.index_select(0, rows) / b)
        z = z.index_copy(0, rows, zr * b)
        beta = beta.index_copy(0, rows, b)
        rows = rows[sr & (2 * b.squeeze(-1) <= limit)]
    return z
