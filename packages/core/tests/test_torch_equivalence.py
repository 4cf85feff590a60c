"""Elman, LSTM and GRU load and export torch.nn weights and match torch in float64 to 1e-10."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from rnnkit.core import GRU, LSTM, Elman, Recurrent
from rnnkit.core.testing import assert_close

TOL = 1e-10  # float64, outputs and gradients

CASES: list[tuple[type[Any], type[nn.RNNBase], dict[str, Any]]] = [
    (Elman, nn.RNN, {"nonlinearity": "tanh"}),
    (Elman, nn.RNN, {"nonlinearity": "relu"}),
    (LSTM, nn.LSTM, {}),
    (GRU, nn.GRU, {}),
]
IDS = ["rnn-tanh", "rnn-relu", "lstm", "gru"]


def _torch_state(cell: Any, state: Any) -> Any:
    if isinstance(cell, LSTM):
        return (state.h[None], state.c[None])
    return state.h[None]


def _split_torch_out(final: Any) -> list[torch.Tensor]:
    return [final[0][0], final[1][0]] if isinstance(final, tuple) else [final[0]]


@pytest.mark.parametrize(("cls", "torch_cls", "kw"), CASES, ids=IDS)
@pytest.mark.parametrize("bias", [True, False])
def test_from_torch_matches_outputs_and_gradients(
    cls: type[Any], torch_cls: type[nn.RNNBase], kw: dict[str, Any], bias: bool
) -> None:
    torch.manual_seed(0)
    ref = torch_cls(5, 7, batch_first=True, bias=bias, dtype=torch.float64, **kw)
    cell = cls.from_torch(ref)
    x = torch.randn(3, 9, 5, dtype=torch.float64)
    state = cell.init_state(3)
    state = state._replace(
        **{f: torch.randn_like(v) for f, v in zip(state._fields, state, strict=True)}
    )
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    s1 = [s.clone().requires_grad_() for s in state]
    s2 = [s.clone().requires_grad_() for s in state]
    y1, f1 = cell(x1, cell.state_type(*s1), backend="reference")
    y2, f2 = ref(x2, _torch_state(cell, cell.state_type(*s2)))
    assert_close("y", y1, y2, TOL)
    f2_list = _split_torch_out(f2)
    for a, b in zip(f1, f2_list, strict=True):
        assert_close("final state", a, b, TOL)
    dy = torch.randn_like(y1)
    dfs = [torch.randn_like(a) for a in f1]
    ((y1 * dy).sum() + sum((a * d).sum() for a, d in zip(f1, dfs, strict=True))).backward()
    ((y2 * dy).sum() + sum((b * d).sum() for b, d in zip(f2_list, dfs, strict=True))).backward()
    assert x1.grad is not None and x2.grad is not None
    assert_close("dx", x1.grad, x2.grad, TOL)
    for a, b in zip(s1, s2, strict=True):
        assert a.grad is not None and b.grad is not None
        assert_close("d state", a.grad, b.grad, TOL)
    # parameter gradients: map torch's into rnnkit's layout
    g_ih = ref.weight_ih_l0.grad
    g_hh = ref.weight_hh_l0.grad
    assert g_ih is not None and g_hh is not None and cell.weight_ih.grad is not None
    assert_close("d weight_ih", cell.weight_ih.grad, g_ih, TOL)
    assert_close("d recurrent", cell.recurrent.grad.reshape(g_hh.shape), g_hh, TOL)
    if bias:
        H = 7
        g_bih, g_bhh = ref.bias_ih_l0.grad, ref.bias_hh_l0.grad
        assert g_bih is not None and g_bhh is not None
        if cls is GRU:
            # bias = [b_ir + b_hr, b_iz + b_hz, b_in]; d bias_ih equals d bias for r, z and n
            assert_close("d bias", cell.bias.grad, g_bih, TOL)
            assert_close("d bias_hn", cell.bias_hn.grad, g_bhh[2 * H :], TOL)
        else:
            assert_close("d bias", cell.bias.grad, g_bih, TOL)
            assert_close("d bias (hh)", cell.bias.grad, g_bhh, TOL)


@pytest.mark.parametrize(("cls", "torch_cls", "kw"), CASES, ids=IDS)
def test_to_torch_round_trip(
    cls: type[Any], torch_cls: type[nn.RNNBase], kw: dict[str, Any]
) -> None:
    torch.manual_seed(1)
    cell = cls(4, 6, heads=2, dtype=torch.float64, **kw)  # block-diagonal exports densely
    mod = cell.to_torch()
    assert isinstance(mod, torch_cls) and mod.batch_first
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    assert_close("y", mod(x)[0], cell(x)[0], TOL)
    back = cls.from_torch(mod)
    assert_close("y again", back(x)[0], cell(x)[0], TOL)


@pytest.mark.parametrize(("cls", "torch_cls", "kw"), CASES, ids=IDS)
@pytest.mark.parametrize(("layers", "bidirectional"), [(1, True), (2, False), (3, True)])
def test_recurrent_stack_matches_torch(
    cls: type[Any],
    torch_cls: type[nn.RNNBase],
    kw: dict[str, Any],
    layers: int,
    bidirectional: bool,
) -> None:
    torch.manual_seed(2)
    ref = torch_cls(
        4, 5, layers, batch_first=True, bidirectional=bidirectional, dtype=torch.float64, **kw
    )
    stack = Recurrent.from_torch(ref)
    x = torch.randn(3, 6, 4, dtype=torch.float64)
    h0 = stack.init_state(3)
    h0 = h0._replace(**{f: torch.randn_like(v) for f, v in zip(h0._fields, h0, strict=True)})
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, f1 = stack(xa, h0)
    y2, f2 = ref(xb, (h0.h, h0.c) if cls is LSTM else h0.h)
    assert y1.shape == (3, 6, 5 * (2 if bidirectional else 1))
    assert_close("y", y1, y2, TOL)
    if cls is LSTM:
        assert_close("h_n", f1.h, f2[0], TOL)
        assert_close("c_n", f1.c, f2[1], TOL)
    else:
        assert_close("h_n", f1.h, f2, TOL)
    dy = torch.randn_like(y1)
    (y1 * dy).sum().backward()
    (y2 * dy).sum().backward()
    assert xa.grad is not None and xb.grad is not None
    assert_close("dx", xa.grad, xb.grad, TOL)


def test_from_torch_rejects_wrong_module() -> None:
    with pytest.raises(TypeError, match=r"expected torch.nn.LSTM, got GRU"):
        LSTM.from_torch(nn.GRU(3, 4))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="proj_size"):
        LSTM.from_torch(nn.LSTM(3, 4, proj_size=2))
    with pytest.raises(ValueError, match="layer must be in"):
        GRU.from_torch(nn.GRU(3, 4), layer=1)
