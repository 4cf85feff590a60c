"""The ``fused`` backend against ``reference``: values and gradients, float64 and float32."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from _gated_helpers import KINDS, TOL, T, compare, make_cell, make_inputs, rel_rms

from rnnkit.core.dispatch import KernelCall, select
from rnnkit.kernels.gated.fused import FUSED_PRIORITY, _common, kernels

HEADS = (1, 2, 3)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """These shapes are tiny: one thread avoids OpenMP fork/join stalls on a loaded machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("resets", [False, True], ids=["noreset", "resets"])
@pytest.mark.parametrize("state", [False, True], ids=["nostate", "state"])
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference(
    kind: str, heads: int, state: bool, resets: bool, dtype: torch.dtype
) -> None:
    cell = make_cell(kind, heads)
    x, st, rs, cot = make_inputs(cell, state=state, resets=resets)
    compare(cell, "fused", dtype, x, st, rs, cot)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("time", [1, 2])
def test_short_sequences(kind: str, time: int) -> None:
    cell = make_cell(kind, 2)
    x, st, rs, cot = make_inputs(cell, time=time, state=True, resets=time > 1)
    compare(cell, "fused", torch.float64, x, st, rs, cot)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("elements", [1, 100])
def test_backward_in_time_chunks(kind: str, elements: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The backward computes its factors per time chunk: chunks of 1 and of uneven length."""
    monkeypatch.setattr(_common, "CHUNK_ELEMENTS", elements)
    assert len(_common.chunks(T, 3 * 6)) > 1
    cell = make_cell(kind, 3)
    x, st, rs, cot = make_inputs(cell, state=True, resets=True)
    compare(cell, "fused", torch.float64, x, st, rs, cot)


@pytest.mark.parametrize("kind", KINDS)
def test_without_bias(kind: str) -> None:
    cell = make_cell(kind, 3, bias=False)
    x, st, rs, cot = make_inputs(cell, state=True, resets=True)
    compare(cell, "fused", torch.float64, x, st, rs, cot)


@pytest.mark.parametrize("kind", KINDS)
def test_strided_input(kind: str) -> None:
    cell = make_cell(kind, 2)
    x, st, rs, cot = make_inputs(cell, time=14, state=True, resets=True)
    # Every other step of a time-major buffer: neither contiguous nor batch-first in memory.
    x_strided = x.transpose(0, 1).contiguous().transpose(0, 1)[:, ::2]
    assert not x_strided.is_contiguous()
    cot = [cot[0][:, ::2], *cot[1:]]
    rs = None if rs is None else rs[:, ::2]
    compare(cell, "fused", torch.float64, x_strided, st, rs, cot)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("heads", [1, 3])
def test_inference_path_matches(kind: str, heads: int) -> None:
    """Without gradients the loop reuses its per-step buffers; results must not change."""
    cell = make_cell(kind, heads)
    x, st, rs, _ = make_inputs(cell, state=True, resets=True)
    with torch.no_grad():
        y, final = cell(x, st, backend="fused", resets=rs)
        y_ref, final_ref = cell(x, st, backend="reference", resets=rs)
    assert rel_rms(y, y_ref) <= 1e-12
    for a, e in zip(final, final_ref, strict=True):
        assert rel_rms(a, e) <= 1e-12


def test_zero_length_sequence() -> None:
    cell = make_cell("lstm", 2)
    x = torch.randn(3, 0, 5, dtype=torch.float64)
    y, final = cell(x, backend="fused")
    assert y.shape == (3, 0, 6)
    assert all(bool((f == 0).all()) for f in final)


def test_final_state_does_not_alias_output() -> None:
    cell = make_cell("gru", 1)
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    y, (h,) = cell(x, backend="fused")
    h.add_(1.0)
    assert rel_rms(y[:, -1], h - 1.0) < 1e-15


def test_registration_and_auto() -> None:
    ks = kernels()
    assert sorted(k.target for k in ks) == ["elman", "gru", "lstm", "slstm"]
    assert all(k.backend == "fused" for k in ks)
    cell = make_cell("slstm", 2)
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    call = KernelCall(cell, x, None, None, needs_grad=True)
    assert all(k.rank(call) == FUSED_PRIORITY for k in ks)
    assert select(call, "auto").backend == "fused"


def test_unsupported_dtype_message() -> None:
    cell = make_cell("lstm", 1)
    x = torch.randn(2, 3, 5, dtype=torch.float64)
    call = KernelCall(cell, x.to(torch.complex128), None, None, needs_grad=False)
    reason = next(k for k in kernels() if k.target == "lstm").supports(call)
    assert reason is not None and "float32" in reason


@pytest.mark.parametrize(
    ("bias", "grads"),
    [(True, "x"), (True, "weight"), (True, "bias"), (True, "all"), (False, "x"), (False, "all")],
)
@pytest.mark.parametrize("heads", [1, 3])
def test_head_major_projection(heads: int, bias: bool, grads: str) -> None:
    """The head-major input projection (bias through a column of ones) against a float64
    ``x W^T + b`` regrouped by head: values and the gradient of each input that asks for one,
    alone or together, from a strided (time-major view of a batch-first) input."""
    torch.manual_seed(4)
    G, D, n_in, B, steps = 4, 5, 7, 3, 6
    x = torch.randn(B, steps, n_in, dtype=torch.float64)
    w = torch.randn(G * heads * D, n_in, dtype=torch.float64)
    b = torch.randn(G * heads * D, dtype=torch.float64) if bias else None
    leaves = {"x": x, "weight": w, "bias": b}
    for name, t in leaves.items():
        if t is not None and grads in (name, "all"):
            t.requires_grad_(True)
    xt = x.transpose(0, 1)
    px = _common.head_major_projection(xt, w, b, heads, G)
    ref = (xt.reshape(steps * B, n_in) @ w.t() + (0 if b is None else b)).view(-1, G, heads, D)
    ref = ref.permute(2, 0, 1, 3).reshape(heads, steps * B, G * D)
    assert px.shape == (heads, steps * B, G * D)
    assert rel_rms(px, ref) < TOL[torch.float64]
    cot = torch.randn_like(px)
    wanted = [t for t in (x, w, b) if t is not None and t.requires_grad]
    got = torch.autograd.grad(px, wanted, cot)
    want = torch.autograd.grad(ref, wanted, cot)
    for g, r in zip(got, want, strict=True):
        assert rel_rms(g, r) < TOL[torch.float64]
