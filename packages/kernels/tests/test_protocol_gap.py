"""The form kernels refuse a cell that declares their form without implementing it with a
``ProtocolGap``, so that the conformance kit fails instead of skipping them (issue 14
item 16)."""

from __future__ import annotations

import pytest
import torch

from rnnkit.core import LSTM, Form, KernelCall, ProtocolGap
from rnnkit.core.dispatch import kernels_for
from rnnkit.core.testing.checks import check_backends


def _declaring(form: Form) -> type[LSTM]:
    return type(f"LSTMClaiming_{form.name}", (LSTM,), {"forms": frozenset({Form.GATED, form})})


@pytest.mark.parametrize(
    ("form", "backends"),
    [
        (Form.DIAGONAL_JACOBIAN, {"newton"}),
        (Form.DIAGONAL_LINEAR, {"scan", "scan_triton"}),
        (Form.MATRIX_STATE, {"chunked", "chunked_triton"}),
        (Form.SELECTIVE_DIAGONAL, {"selective_torch", "selective_cpp", "selective_triton"}),
    ],
)
def test_a_cell_declaring_a_form_it_does_not_implement_fails_the_kit(
    form: Form, backends: set[str]
) -> None:
    cls = _declaring(form)
    cell = cls(input_size=3, hidden_size=4).double()
    call = KernelCall(cell, torch.zeros(2, 3, 3, dtype=torch.float64), None, None, True)
    gaps = {k.backend for k in kernels_for(cell) if isinstance(k.supports(call), ProtocolGap)}
    assert gaps == backends
    with pytest.raises(AssertionError, match=r"refuses the cell for a missing part of the form"):
        check_backends(lambda: cls(input_size=3, hidden_size=4), dtypes=(torch.float64,))
