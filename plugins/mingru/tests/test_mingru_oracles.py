"""minGRU and minLSTM against float64 loops written from the plugin's README (Feng et al. 2024),
one example and one step at a time, never through the cells' ``project``/``recur``/
``coefficients``: outputs, final state and the gradients of the input, the initial state and
every parameter at 1e-10 relative RMS, from zero, from a given state and with resets, on
``reference`` and (with rnnkit-kernels) ``scan``. test_mingru.py compares the outputs of whole
batches without gradients or resets.

The plugin is tested with rnnkit-core alone, so the comparison is written out here rather than
shared with rnnkit-models' oracle tests."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from rnnkit.core.linear import DiagonalLinearCell
from rnnkit.core.testing.numerics import rel_rms
from rnnkit_mingru import MinGRU, MinLSTM

F64 = torch.float64
B, T, N_IN, H = 3, 7, 4, 5
BACKENDS = (
    ("reference", "scan")
    if importlib.util.find_spec("rnnkit.kernels") is not None
    else ("reference",)
)
Oracle = Callable[[dict[str, Tensor], Tensor, Tensor | None, Tensor | None], tuple[Tensor, Tensor]]


def _loop(
    x: Tensor,
    h0: Tensor | None,
    resets: Tensor | None,
    coef: Callable[[Tensor], tuple[Tensor, Tensor]],
) -> tuple[Tensor, Tensor]:
    """``h_t = a_t h + b_t`` with ``(a_t, b_t) = coef(x_t)``, from ``h0`` (or zero), zero at a
    reset. Returns ``(y, final h)``."""
    ys, finals = [], []
    for e in range(x.shape[0]):
        h = torch.zeros(H, dtype=F64) if h0 is None else h0[e]
        row = []
        for t in range(x.shape[1]):
            if resets is not None and bool(resets[e, t]):
                h = torch.zeros(H, dtype=F64)
            a, b = coef(x[e, t])
            h = a * h + b
            row.append(h)
        ys.append(torch.stack(row))
        finals.append(h)
    return torch.stack(ys), torch.stack(finals)


def _mingru(
    p: dict[str, Tensor], x: Tensor, h0: Tensor | None, r: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``z = sigmoid(W_z x + b_z)``, ``h~ = W_h x + b_h``, ``h_t = (1 - z) h + z h~``."""

    def coef(x_t: Tensor) -> tuple[Tensor, Tensor]:
        pre = p["weight"] @ x_t + p["bias"]
        z = 1 / (1 + torch.exp(-pre[:H]))
        return 1 - z, z * pre[H:]

    return _loop(x, h0, r, coef)


def _minlstm(candidate: str) -> Oracle:
    """``f, i = sigmoid(W_f x + b_f), sigmoid(W_i x + b_i)``, ``h~ = g(W_h x + b_h)`` (``g(u)
    = u + 1/2`` for ``u >= 0``, ``sigmoid(u)`` below) or linear, ``h_t = f/(f + i) h + i/(f +
    i) h~``."""

    def oracle(
        p: dict[str, Tensor], x: Tensor, h0: Tensor | None, r: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        def coef(x_t: Tensor) -> tuple[Tensor, Tensor]:
            pre = p["weight"] @ x_t + p["bias"]
            f = 1 / (1 + torch.exp(-pre[:H]))
            i = 1 / (1 + torch.exp(-pre[H : 2 * H]))
            k = pre[2 * H :]
            cand = torch.where(k >= 0, k + 0.5, 1 / (1 + torch.exp(-k))) if candidate == "g" else k
            return f / (f + i), i / (f + i) * cand

        return _loop(x, h0, r, coef)

    return oracle


def _check(cell: DiagonalLinearCell, oracle: Oracle, backend: str, start: str) -> None:
    gen = torch.Generator().manual_seed(4)
    x = 1.5 * torch.randn(B, T, N_IN, generator=gen, dtype=F64)
    h0 = torch.rand(B, H, generator=gen, dtype=F64) if start != "zero" else None
    resets = None
    if start == "resets":
        resets = torch.zeros(B, T, dtype=torch.bool)
        resets[0, 3] = resets[1, 0] = resets[2, 5] = resets[2, 6] = True
    params = {n: p.detach().clone().requires_grad_(True) for n, p in cell.named_parameters()}
    x_c, x_o = (x.clone().requires_grad_(True) for _ in range(2))
    s_c, s_o = ((h0.clone().requires_grad_(True) if h0 is not None else None) for _ in range(2))
    y, last = cell(x_c, (s_c,) if s_c is not None else None, backend=backend, resets=resets)
    want_y, want_h = oracle(params, x_o, s_o, resets)
    w_y = torch.randn(y.shape, generator=gen, dtype=F64)
    w_h = torch.randn(want_h.shape, generator=gen, dtype=F64)
    leaves_c = [x_c, *([s_c] if s_c is not None else []), *cell.parameters()]
    leaves_o = [x_o, *([s_o] if s_o is not None else []), *params.values()]
    got = torch.autograd.grad((y * w_y).sum() + (last.h * w_h).sum(), leaves_c)
    want = torch.autograd.grad((want_y * w_y).sum() + (want_h * w_h).sum(), leaves_o)
    errs = {"y": rel_rms(y, want_y), "h": rel_rms(last.h, want_h)}
    labels = ["x", *(["h0"] if s_c is not None else []), *params]
    errs.update({f"d/d{n}": rel_rms(g, w) for n, g, w in zip(labels, got, want, strict=True)})
    assert all(bool(w.abs().sum() > 0) for w in want)
    bad = {k: f"{e:.2e}" for k, e in errs.items() if not e <= 1e-10}
    assert not bad, f"{cell.kind} ({backend}, {start}) vs its oracle: {bad}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("start", ["zero", "given", "resets"])
def test_mingru_equals_its_equations(backend: str, start: str) -> None:
    torch.manual_seed(0)
    _check(MinGRU(N_IN, H).double(), _mingru, backend, start)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("start", ["zero", "given", "resets"])
@pytest.mark.parametrize("candidate", ["g", "linear"])
def test_minlstm_equals_its_equations(backend: str, start: str, candidate: str) -> None:
    torch.manual_seed(1)
    cell = MinLSTM(N_IN, H, candidate=candidate).double()
    with torch.no_grad():  # logits on both sides of g's switch and of the gates' saturation
        cell.weight.mul_(3)
    _check(cell, _minlstm(candidate), backend, start)
