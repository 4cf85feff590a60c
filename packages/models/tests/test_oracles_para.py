"""ParaGRU and ParaLSTM against float64 loops written from ParaRNN's equations (Danieli et al.
2025; docs/models.md, /work/shared/reference/parallel-recurrences.md section 2), one example
and one step at a time, never through the cells' ``project``/``recur``/Newton methods: outputs,
final state and every gradient, from zero and from a given state, with resets, on ``reference``
and on ``newton``."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from _oracle_check import F64, check
from conftest import backend_params
from torch import Tensor

from rnnkit.models.cells import ParaGRU, ParaLSTM

B, T, N_IN, H = 3, 7, 4, 5


def _sigmoid(u: Tensor) -> Tensor:
    return 1 / (1 + torch.exp(-u))


def _inputs() -> tuple[Tensor, Tensor, list[Tensor]]:
    gen = torch.Generator().manual_seed(11)
    x = 1.5 * torch.randn(B, T, N_IN, generator=gen, dtype=F64)
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[0, 3] = resets[1, 0] = resets[2, 5] = resets[2, 6] = True
    initial = [0.8 * torch.randn(B, H, generator=gen, dtype=F64) for _ in range(2)]
    return x, resets, initial


def _paragru(
    p: dict[str, Tensor], x: Tensor, initial: Sequence[Tensor] | None, resets: Tensor | None
) -> tuple[Tensor, list[Tensor]]:
    """``z = sigmoid(a_z h + p_z)``, ``r = sigmoid(a_r h + p_r)``, ``n = tanh(a_h (h r) +
    p_h)``, ``h_t = z n + (1 - z) h`` with ``(p_z, p_r, p_h) = W x_t + b`` (rows in that
    order) and ``(a_z, a_r, a_h)`` the rows of ``recurrent``; a reset starts from zero."""
    W, b, a = p["weight_ih"], p["bias"], p["recurrent"]
    ys, finals = [], []
    for e in range(x.shape[0]):
        h = torch.zeros(H, dtype=F64) if initial is None else initial[0][e]
        row = []
        for t in range(x.shape[1]):
            if resets is not None and bool(resets[e, t]):
                h = torch.zeros(H, dtype=F64)
            pre = W @ x[e, t] + b
            z = _sigmoid(a[0] * h + pre[:H])
            r = _sigmoid(a[1] * h + pre[H : 2 * H])
            n = torch.tanh(a[2] * (h * r) + pre[2 * H :])
            h = z * n + (1 - z) * h
            row.append(h)
        ys.append(torch.stack(row))
        finals.append(h)
    return torch.stack(ys), [torch.stack(finals)]


def _paralstm(
    p: dict[str, Tensor], x: Tensor, initial: Sequence[Tensor] | None, resets: Tensor | None
) -> tuple[Tensor, list[Tensor]]:
    """The CIFG LSTM with peepholes: ``f = sigmoid(a_f h + p_f + w_f c)``, ``c~ = tanh(a_c h +
    p_c)``, ``c_t = f c + (1 - f) c~``, ``o = sigmoid(a_o h + p_o + w_o c_t)``, ``h_t = o
    tanh(c_t)``; without peepholes ``w_f = w_o = 0``. State ``(h, c)``, zero at a reset."""
    W, b, a = p["weight_ih"], p["bias"], p["recurrent"]
    peep = p.get("peephole")
    w_f, w_o = (peep[0], peep[1]) if peep is not None else (0.0, 0.0)
    ys, hs, cs = [], [], []
    for e in range(x.shape[0]):
        zero = torch.zeros(H, dtype=F64)
        h, c = (zero, zero) if initial is None else (initial[0][e], initial[1][e])
        row = []
        for t in range(x.shape[1]):
            if resets is not None and bool(resets[e, t]):
                h, c = zero, zero
            pre = W @ x[e, t] + b
            f = _sigmoid(a[0] * h + pre[:H] + w_f * c)
            cand = torch.tanh(a[1] * h + pre[H : 2 * H])
            c = f * c + (1 - f) * cand
            o = _sigmoid(a[2] * h + pre[2 * H :] + w_o * c)
            h = o * torch.tanh(c)
            row.append(h)
        ys.append(torch.stack(row))
        hs.append(h)
        cs.append(c)
    return torch.stack(ys), [torch.stack(hs), torch.stack(cs)]


@pytest.mark.parametrize("backend", backend_params("reference", "newton"))
@pytest.mark.parametrize("start", ["zero", "given", "resets"])
def test_paragru_equals_its_equations(backend: str, start: str) -> None:
    torch.manual_seed(0)
    cell = ParaGRU(N_IN, H).double()
    x, resets, initial = _inputs()
    check(
        cell,
        _paragru,
        x,
        backend=backend,
        initial=initial[:1] if start != "zero" else None,
        resets=resets if start == "resets" else None,
    )


@pytest.mark.parametrize("backend", backend_params("reference", "newton"))
@pytest.mark.parametrize("start", ["zero", "given", "resets"])
@pytest.mark.parametrize("peepholes", [True, False])
def test_paralstm_equals_its_equations(backend: str, start: str, peepholes: bool) -> None:
    torch.manual_seed(0)
    cell = ParaLSTM(N_IN, H, peepholes=peepholes).double()
    x, resets, initial = _inputs()
    check(
        cell,
        _paralstm,
        x,
        backend=backend,
        initial=initial if start != "zero" else None,
        resets=resets if start == "resets" else None,
    )
