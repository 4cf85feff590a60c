"""The analog simulator: every analog backend, with ideal devices, against the digital reference.

The simulator runs cells of the gated form converted by ``to_analog``; its reference
(:data:`rnnkit.kernels.analog.REFERENCE`) is the digital cell it simulates, i.e. the loop over
``recur`` run in float64. Cells: core's Elman (tanh and ReLU), LSTM, GRU and sLSTM with 1 and 3
heads (input 5, hidden 9); backends: every kernel ``rnnkit.kernels.analog`` registers (each
checked to be in the dispatch registry), in float64 and float32:

- ideal devices and periphery without NL-ADCs (``AnalogConfig.ideal(nl_adc=False)``: exact DAC
  and ADC, exact digital activations) equal the reference within the dtype's tolerance: output,
  final state and the gradients of the input, the initial state and every parameter, for
  lengths 1, 7 and 13, with and without an initial state and resets; and a NaN in the input
  makes exactly its own example's later outputs and final state NaN;
- with ideal 10-bit NL-ADCs (``AnalogConfig.ideal(nl_bits=10)``) the only error left is the
  converters' rounding, half an LSB (2^-11 of the output range) per activation, carried a few
  steps by the recurrence: within :data:`NL_ADC_TOL` relative RMS (values, and gradients through
  the straight-through estimator), T=13 from an initial state with resets.

Converted cells run in eval mode: in training mode the simulator samples fresh programming noise
on every forward (hardware-aware training), which is not what these tests compare.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from _form_helpers import (
    DTYPE_IDS,
    DTYPES,
    REFERENCE,
    check_backend,
    check_nan_propagates,
    gated_reference,
)
from _gated_helpers import KINDS

from rnnkit.core.dispatch import KernelCall, kernels_for
from rnnkit.core.reference import reference_forward
from rnnkit.kernels import analog
from rnnkit.kernels.analog import AnalogConfig, to_analog

CELLS = [(kind, heads) for kind in KINDS for heads in (1, 3)]
CELL_IDS = [f"{kind}-h{heads}" for kind, heads in CELLS]
BACKENDS = sorted({k.backend for k in analog.kernels()})
#: Relative RMS bound with ideal 10-bit NL-ADCs (measured: at most 2.1e-3, LSTM 3 heads).
NL_ADC_TOL = 5e-3


def _converted(kind: str, heads: int, config: AnalogConfig) -> Any:
    return to_analog(gated_reference(kind, heads).cell, config).eval()


def test_reference_is_the_digital_loop() -> None:
    assert analog.REFERENCE is reference_forward


@pytest.mark.parametrize("kind", KINDS)
def test_backends_are_registered(kind: str) -> None:
    """Every analog kernel is in the dispatch registry for every gated cell, and refuses a cell
    that was not converted (it never stands in for an exact backend)."""
    cell = gated_reference(kind, 1).cell
    registered = {k.backend for k in kernels_for(cell)}
    assert BACKENDS and set(BACKENDS) <= registered and REFERENCE not in BACKENDS
    x = torch.randn(2, 3, cell.input_size, dtype=torch.float64)
    converted = to_analog(cell, AnalogConfig.ideal())
    for k in kernels_for(cell):
        if k.backend in BACKENDS:
            assert k.why_not(KernelCall(cell, x, None, None, needs_grad=False)) is not None
            assert k.why_not(KernelCall(converted, x, None, None, needs_grad=False)) is None


@pytest.mark.parametrize("resets", [False, True], ids=["noresets", "resets"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(("kind", "heads"), CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ideal_without_nl_adcs_equals_reference(
    backend: str, kind: str, heads: int, dtype: torch.dtype, resets: bool
) -> None:
    cell = _converted(kind, heads, AnalogConfig.ideal(nl_adc=False))
    check_backend(gated_reference(kind, heads), backend, dtype, use_resets=resets, cell=cell)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(("kind", "heads"), CELLS, ids=CELL_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ideal_nl_adcs_within_rounding_of_reference(
    backend: str, kind: str, heads: int, dtype: torch.dtype
) -> None:
    cell = _converted(kind, heads, AnalogConfig.ideal(nl_bits=10))
    reference = gated_reference(kind, heads)
    check_backend(
        reference, backend, dtype, use_resets=True, times=(13,), states=(True,), cell=cell,
        tol=NL_ADC_TOL,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_gives_nan_out(backend: str, kind: str, dtype: torch.dtype) -> None:
    check_nan_propagates(_converted(kind, 3, AnalogConfig.ideal(nl_adc=False)), backend, dtype)
