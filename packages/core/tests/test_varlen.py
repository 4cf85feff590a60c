"""Variable-length batches (``lengths``, ``PackedSequence``), ``Recurrent.step`` and
``Recurrent.to_torch``: exact against running each sequence alone and against torch."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from rnnkit.core import Recurrent
from rnnkit.core.cells import GRU, LSTM, SLSTM, Elman
from rnnkit.core.dispatch import KernelCall
from rnnkit.core.kernel import ANY_CELL, Kernel
from rnnkit.core.reference import reference_forward
from rnnkit.core.testing import assert_close
from rnnkit.core.varlen import reverse_padded, reverse_resets, run_with_lengths

TOL = 1e-12
LENGTHS = [5, 2, 0, 7, 2]  # unsorted, a tie, an empty sequence, a full one (T = 7)


def _inputs(width: int, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(LENGTHS), 7, width, generator=g, dtype=torch.float64)


def _loss(y: Tensor, state: tuple[Tensor, ...], seed: int = 1) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
    for s in state:
        loss = loss + (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum()
    return loss


def _grads(module: nn.Module, x: Tensor, loss: Tensor) -> list[Tensor]:
    params = list(module.parameters())
    return list(torch.autograd.grad(loss, [x, *params]))


#: a kernel that does not handle lengths: dispatch must run it by segments
_PLAIN = Kernel("plain", ANY_CELL, reference_forward)


@pytest.mark.parametrize("cls", [Elman, LSTM, GRU, SLSTM])
@pytest.mark.parametrize("path", ["reference", "segments"])
@pytest.mark.parametrize("with_state", [False, True])
def test_cell_lengths_equal_each_sequence_alone(cls: Any, path: str, with_state: bool) -> None:
    torch.manual_seed(0)
    cell = cls(input_size=3, hidden_size=4).double()
    x = _inputs(3).requires_grad_(True)
    state = None
    if with_state:
        with torch.no_grad():
            _, state = cell(_inputs(3, seed=5)[:, :3])
    resets = torch.rand(x.shape[:2], generator=torch.Generator().manual_seed(2)) < 0.3
    lengths = torch.tensor(LENGTHS)
    if path == "reference":
        y, final = cell(x, state, resets=resets, lengths=lengths, backend="reference")
    else:
        call = KernelCall(cell, x, state, resets, True, lengths)
        y, final = run_with_lengths(call, lambda c: _PLAIN)
    got = _grads(cell, x, _loss(y, final))

    # oracle: one sequence at a time, the same cotangents on its valid part
    g = torch.Generator().manual_seed(1)
    dy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    dstate = [torch.randn(s.shape, generator=g, dtype=s.dtype) for s in final]
    initial = state if state is not None else cell.init_state(len(LENGTHS))
    loss = x.new_zeros(())
    for b, n in enumerate(LENGTHS):
        y_b, f_b = cell(
            x[b : b + 1, :n],
            cell.state_type._make(s[b : b + 1] for s in initial),
            resets=resets[b : b + 1, :n],
            backend="reference",
        )
        assert_close(f"y[{b}]", y[b, :n], y_b[0], TOL)
        assert not y[b, n:].any(), f"y[{b}] is not zero past its length"
        for name, a, w in zip(final._fields, final, f_b, strict=True):
            assert_close(f"final {name}[{b}]", a[b], w[0], TOL)
        loss = loss + (y_b * dy[b : b + 1, :n]).sum()
        loss = loss + sum((s * ds[b : b + 1]).sum() for s, ds in zip(f_b, dstate, strict=True))
    want = _grads(cell, x, loss)
    for k, (a, w) in enumerate(zip(got, want, strict=True)):
        assert_close(f"gradient {k}", a, w, TOL)


def test_segments_run_each_distinct_length_once() -> None:
    runs: list[tuple[int, int]] = []

    def spy(call: KernelCall) -> tuple[Tensor, tuple[Tensor, ...]]:
        assert call.lengths is None
        runs.append((call.x.shape[0], call.x.shape[1]))
        return reference_forward(call)

    cell = LSTM(input_size=3, hidden_size=4).double()
    call = KernelCall(cell, _inputs(3), None, None, False, torch.tensor(LENGTHS))
    run_with_lengths(call, lambda c: Kernel("spy", ANY_CELL, spy))
    # the empty sequence is dropped; then steps 0:2 for 4 rows, 2:5 for 2, 5:7 for 1
    assert runs == [(4, 2), (2, 3), (1, 2)]


def test_full_lengths_are_a_plain_call() -> None:
    seen: list[Tensor | None] = []

    def spy(call: KernelCall) -> tuple[Tensor, tuple[Tensor, ...]]:
        seen.append(call.lengths)
        return reference_forward(call)

    cell = GRU(input_size=3, hidden_size=4).double()
    x = _inputs(3)
    call = KernelCall(cell, x, None, None, False, torch.full((len(LENGTHS),), 7))
    y, _ = run_with_lengths(call, lambda c: Kernel("spy", ANY_CELL, spy, supports_lengths=True))
    assert seen == [None]
    assert torch.equal(y, cell(x, backend="reference")[0])


def test_lengths_are_validated() -> None:
    cell = Elman(input_size=3, hidden_size=4).double()
    x = _inputs(3)
    with pytest.raises(ValueError, match=r"lengths must be in \[0, time\] = \[0, 7\]"):
        cell(x, lengths=[8, 1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"lengths must be in \[0, time\]"):
        cell(x, lengths=[-1, 1, 1, 1, 1])
    with pytest.raises(ValueError, match=r"lengths must have shape \(batch,\) = \(5,\)"):
        cell(x, lengths=[1, 1])
    with pytest.raises(TypeError, match="lengths must be an integer tensor"):
        cell(x, lengths=torch.ones(5))
    with pytest.raises(TypeError, match="lengths must be an integer tensor"):
        cell(x, lengths="12345")


def test_reverse_resets_within_lengths() -> None:
    r = torch.tensor([[False, True, False, True, True], [True, False, True, False, False]])
    # a length-5 sequence reverses as before; a length-3 one reverses inside its own steps
    out = reverse_resets(r, torch.tensor([5, 3]))
    assert out[0].tolist() == reverse_resets(r[:1])[0].tolist()
    # boundary before step 2 (entering 2 from 1) is crossed entering reversed step 3 - 2 = 1
    assert out[1].tolist() == [False, True, False, False, False]
    x = torch.arange(10.0).view(2, 5, 1)
    assert reverse_padded(x, torch.tensor([5, 3]))[:, :, 0].tolist() == [
        [4.0, 3.0, 2.0, 1.0, 0.0],
        [7.0, 6.0, 5.0, 8.0, 9.0],
    ]


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "slstm"])
def test_recurrent_lengths_equal_each_sequence_alone(cell: str, bidirectional: bool) -> None:
    torch.manual_seed(0)
    rec = Recurrent(cell, 3, 4, 2, bidirectional=bidirectional).double()
    x = _inputs(3).requires_grad_(True)
    with torch.no_grad():
        _, state = rec(_inputs(3, seed=7)[:, :2])
    resets = torch.rand(x.shape[:2], generator=torch.Generator().manual_seed(3)) < 0.3
    y, final = rec(x, state, resets=resets, lengths=torch.tensor(LENGTHS))
    got = _grads(rec, x, _loss(y, final))

    g = torch.Generator().manual_seed(1)
    dy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    dstate = [torch.randn(s.shape, generator=g, dtype=s.dtype) for s in final]
    loss = x.new_zeros(())
    for b, n in enumerate(LENGTHS):
        one_state = rec.state_type._make(s[:, b : b + 1] for s in state)
        y_b, f_b = rec(x[b : b + 1, :n], one_state, resets=resets[b : b + 1, :n])
        assert_close(f"y[{b}]", y[b, :n], y_b[0], TOL)
        assert not y[b, n:].any()
        for name, a, w in zip(final._fields, final, f_b, strict=True):
            assert_close(f"final {name}[:, {b}]", a[:, b], w[:, 0], TOL)
        loss = loss + (y_b * dy[b : b + 1, :n]).sum()
        loss = loss + sum((s * ds[:, b : b + 1]).sum() for s, ds in zip(f_b, dstate, strict=True))
    want = _grads(rec, x, loss)
    for k, (a, w) in enumerate(zip(got, want, strict=True)):
        assert_close(f"gradient {k}", a, w, TOL)


@pytest.mark.parametrize("kind", [nn.RNN, nn.LSTM, nn.GRU])
@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_packed_sequence_like_torch(kind: type[nn.RNNBase], enforce_sorted: bool) -> None:
    torch.manual_seed(0)
    ref = kind(3, 4, 2, bidirectional=True, batch_first=True, dtype=torch.float64)
    rec = Recurrent.from_torch(ref)
    lengths = torch.tensor([7, 5, 5, 2, 1] if enforce_sorted else [5, 2, 1, 7, 5])
    x = _inputs(3)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=enforce_sorted)
    h0 = torch.randn(4, len(LENGTHS), 4, dtype=torch.float64)
    hx: Any = (h0, torch.randn_like(h0)) if kind is nn.LSTM else h0
    want_y, want_h = ref(packed, hx)
    state = rec.state_type(*hx) if kind is nn.LSTM else rec.state_type(hx)
    got_y, got_state = rec(packed, state)
    assert isinstance(got_y, PackedSequence)
    assert torch.equal(got_y.batch_sizes, want_y.batch_sizes)
    for a, w in ((got_y.sorted_indices, want_y.sorted_indices),):
        assert (a is None and w is None) or torch.equal(a, w)  # type: ignore[arg-type]
    assert_close("packed y", got_y.data, want_y.data, TOL)
    wants = want_h if kind is nn.LSTM else (want_h,)
    for name, a, w in zip(got_state._fields, got_state, wants, strict=True):
        assert_close(f"h_n {name}", a, w, TOL)
    with pytest.raises(ValueError, match="lengths must be None when x is a PackedSequence"):
        rec(packed, lengths=lengths)


def test_step_matches_forward() -> None:
    torch.manual_seed(0)
    rec = Recurrent("gru", 3, 4, 3).double()
    x = _inputs(3)
    y, final = rec(x)
    state = None
    ys = []
    for x_t in x.unbind(1):
        y_t, state = rec.step(x_t, state)
        ys.append(y_t)
    assert_close("step y", torch.stack(ys, 1), y, TOL)
    for name, a, w in zip(final._fields, state, final, strict=True):
        assert_close(f"step {name}", a, w, TOL)
    with pytest.raises(ValueError, match="step\\(\\) needs a unidirectional stack"):
        Recurrent("gru", 3, 4, bidirectional=True).step(x[:, 0].float())


@pytest.mark.parametrize("cell", ["elman", "lstm", "gru"])
def test_to_torch_round_trip(cell: str) -> None:
    torch.manual_seed(0)
    extra = {"nonlinearity": "relu"} if cell == "elman" else {}
    rec = Recurrent(cell, 3, 4, 2, bidirectional=True, dropout=0.25, **extra).double().eval()
    module = rec.to_torch()
    assert module.num_layers == 2 and module.bidirectional and module.dropout == 0.25
    assert module.batch_first
    x = _inputs(3)
    y, final = rec(x)
    want_y, want_h = module(x)
    assert_close("y", y, want_y, TOL)
    wants = want_h if cell == "lstm" else (want_h,)
    for name, a, w in zip(final._fields, final, wants, strict=True):
        assert_close(name, a, w, TOL)
    back = Recurrent.from_torch(module)
    for (name, a), (_, b) in zip(rec.named_parameters(), back.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_to_torch_refuses_other_cells() -> None:
    with pytest.raises(TypeError, match="this stack's cells are SLSTM, which torch has no"):
        Recurrent("slstm", 3, 4).to_torch()
