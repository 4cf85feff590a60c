"""Cells under ``torch.autocast("cpu", torch.bfloat16)``: they follow autocast like a linear
layer (any floating input, ``y`` in bfloat16) and compute the recurrence in float32."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnnkit.core.cells import GRU, LSTM, SLSTM, Elman
from rnnkit.core.recurrent import Recurrent

CELLS = {"elman": Elman, "lstm": LSTM, "gru": GRU, "slstm": SLSTM}
#: bfloat16 keeps 8 significant bits: one rounding of y (and of the Linear before it)
TOL = {"rtol": 2e-2, "atol": 2e-2}


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_two_layer_stack(kind: str) -> None:
    """A 2-layer stack runs (the second layer gets bfloat16), returns bfloat16 like a linear
    layer whatever the backend, and matches float32 within bfloat16 rounding."""
    torch.manual_seed(0)
    model = Recurrent(kind, 5, 8, num_layers=2)
    x = torch.randn(3, 7, 5)
    want, _ = model(x)
    with torch.autocast("cpu", torch.bfloat16):
        got, final = model(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, **TOL)
    for layer_state in final if isinstance(final, (list, tuple)) else [final]:
        for s in layer_state if isinstance(layer_state, tuple) else [layer_state]:
            assert s.dtype == torch.float32


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_cell_after_linear(kind: str, backend: str) -> None:
    """A cell after ``nn.Linear`` (whose output autocast makes bfloat16) runs, and its
    gradients reach the parameters in float32."""
    torch.manual_seed(0)
    lin, cell = nn.Linear(4, 5), CELLS[kind](5, 8)
    x = torch.randn(3, 7, 4)
    want, want_final = cell(lin(x), backend=backend)
    with torch.autocast("cpu", torch.bfloat16):
        h = lin(x)
        assert h.dtype == torch.bfloat16
        got, final = cell(h, backend=backend)
    assert got.dtype == torch.bfloat16
    assert all(s.dtype == torch.float32 for s in final)
    torch.testing.assert_close(got.float(), want, **TOL)
    torch.testing.assert_close(final[0], want_final[0], **TOL)
    got.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in cell.parameters())


def test_autocast_availability_of_another_device_type_is_asked_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Device types outside the table looked up at import (a renamed privateuseone backend)
    get torch's answer, asked once and kept."""
    from rnnkit.core import cell as cell_module

    asked: list[str] = []

    def available(device: str) -> bool:
        asked.append(device)
        return True

    monkeypatch.setattr(torch.amp, "is_autocast_available", available)
    monkeypatch.setattr(cell_module, "_AUTOCAST_AVAILABLE", {"cpu": False})
    assert cell_module._autocast_available("npu") is True
    assert cell_module._autocast_available("npu") is True
    assert cell_module._autocast_available("cpu") is False
    assert asked == ["npu"]
