"""The matrix-state form: every backend against the plain recurrence, on odd shapes.

``delta_rule_chunked`` (the ``chunked`` backend's op) is compared with
:func:`memory_recurrence` (the form's reference) on raw inputs; the registered kernel runs a
small :class:`MatrixStateCell` defined here against the generic ``reference`` loop over
``recur``, values and gradients, in float64 and float32.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.dispatch import KernelCall, select
from rnnkit.core.matrix_state import MatrixStateCell, MemoryInputs
from rnnkit.core.state import StateField
from rnnkit.core.testing.checks import make_problem, run_cell
from rnnkit.core.testing.numerics import rel_rms, tolerance
from rnnkit.kernels import matrix_state
from rnnkit.kernels.matrix_state import REFERENCE, delta_rule_chunked


class MemState(NamedTuple):
    S: Tensor


class TinyMemory(MatrixStateCell[MemState]):
    """The smallest matrix-state cell: linear ``q, k, v``, unit keys, ``beta = sigmoid``."""

    kind = "tiny_memory"
    state_type = MemState

    def __init__(self, input_size: int, hidden_size: int, *, heads: int = 1, rule: str = "delta"):
        super().__init__()
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, hidden_size
        self.heads, self.head_dim, self.rule = heads, hidden_size // heads, rule
        self.projected_size = 3 * hidden_size + heads
        self.weight = nn.Parameter(torch.randn(self.projected_size, input_size) / input_size)

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("S", (self.heads, self.head_dim, self.head_dim)),)

    def project(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)

    def _parts(self, px: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``px: (..., P)`` -> q, k, v ``(..., heads, d)`` and beta ``(..., heads)``."""
        H, shape = self.hidden_size, (*px.shape[:-1], self.heads, self.head_dim)
        q, k, v = (px[..., i * H : (i + 1) * H].reshape(shape) for i in range(3))
        return q, F.normalize(k, dim=-1), v, torch.sigmoid(px[..., 3 * H :])

    def recur(self, px_t: Tensor, state: MemState) -> tuple[Tensor, MemState]:
        q, k, v, beta = self._parts(px_t)
        S, b = state.S, beta[..., None, None]
        if self.rule == "delta":
            v = v - (S @ k.unsqueeze(-1)).squeeze(-1)
        S = S + b * v.unsqueeze(-1) * k.unsqueeze(-2)
        return (S @ q.unsqueeze(-1)).squeeze(-1).flatten(-2), MemState(S)

    def memory_inputs(
        self, x: Tensor, state: MemState | None, resets: Tensor | None
    ) -> MemoryInputs:
        B = x.shape[0]
        S0 = (state or self.init_state(B, device=x.device, dtype=x.dtype)).S
        q, k, v, beta = self._parts(self.project(x))
        heads_first = [t.transpose(1, 2) for t in (q, k, v, beta)]
        return MemoryInputs(*heads_first, S0, ())

    def memory_outputs(self, o: Tensor, S: Tensor, inputs: MemoryInputs) -> tuple[Tensor, MemState]:
        return o.transpose(1, 2).flatten(-2), MemState(S)


def _raw(B: int, n: int, T: int, dk: int, dv: int, seed: int) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    q = torch.randn(B, n, T, dk, generator=g, dtype=f64)
    k = F.normalize(torch.randn(B, n, T, dk, generator=g, dtype=f64), dim=-1)
    v = torch.randn(B, n, T, dv, generator=g, dtype=f64)
    beta = torch.rand(B, n, T, generator=g, dtype=f64)
    S0 = torch.randn(B, n, dv, dk, generator=g, dtype=f64)
    resets = torch.rand(B, T, generator=g) < 0.3
    return q, k, v, beta, S0, resets


@pytest.mark.parametrize("rule", ["delta", "linear"])
@pytest.mark.parametrize(("T", "chunk"), [(1, 3), (10, 3), (7, 7), (13, 4)])
@pytest.mark.parametrize("with_resets", [False, True])
def test_chunked_op_equals_the_recurrence(rule: str, T: int, chunk: int, with_resets: bool) -> None:
    """Raw inputs (beta up to 1, ``d_k != d_v``), one short chunk, padded last chunks, resets."""
    q, k, v, beta, S0, resets = _raw(2, 3, T, 3, 5, seed=T + chunk)
    rs = resets if with_resets else None
    want_o, want_S = REFERENCE(q, k, v, beta, S0, rule=rule, resets=rs)
    o, S = delta_rule_chunked(q, k, v, beta, S0, rule=rule, resets=rs, chunk=chunk)
    assert rel_rms(o, want_o) < 1e-12 and rel_rms(S, want_S) < 1e-12


@pytest.mark.parametrize("rule", ["delta", "linear"])
def test_chunked_op_gradients_equal_the_recurrence(rule: str) -> None:
    """Gradients of every input through the chunked op against the recurrence, float64."""
    raw = _raw(2, 2, 9, 4, 3, seed=5)
    resets = raw[5]
    inputs = [t.clone().requires_grad_() for t in raw[:5]]
    weights = [torch.randn(2, 2, 9, 3, dtype=torch.float64), torch.randn(2, 2, 3, 4).double()]

    def grads(fn: object) -> list[Tensor]:
        o, S = fn(*inputs, rule=rule, resets=resets)  # type: ignore[operator]
        loss = (o * weights[0]).sum() + (S * weights[1]).sum()
        return list(torch.autograd.grad(loss, inputs))

    want = grads(REFERENCE)
    got = grads(lambda *a, **kw: delta_rule_chunked(*a, chunk=4, **kw))
    for name, a, b in zip(["q", "k", "v", "beta", "S0"], got, want, strict=True):
        assert rel_rms(a, b) < 1e-10, name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(("rule", "heads"), [("delta", 1), ("delta", 3), ("linear", 2)])
@pytest.mark.parametrize("time", [1, 5, 11])
def test_kernel_equals_reference_loop(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, rule: str, heads: int, time: int
) -> None:
    """The registered ``chunked`` kernel on a test cell of the form, chunks of 4 tokens, against
    the float64 loop over ``recur``: outputs, final state and every gradient."""
    monkeypatch.setattr(matrix_state.chunked, "CHUNK", 4)
    torch.manual_seed(time + heads)
    cell = TinyMemory(5, 6, heads=heads, rule=rule).double()
    p = make_problem(cell, batch=3, time=time, seed=time)
    for use_state in (False, True):
        for use_resets in (False, True):
            kw = {"use_state": use_state, "use_resets": use_resets}
            want = run_cell(cell, p, backend="reference", dtype=torch.float64, **kw)
            got = run_cell(cell, p, backend="chunked", dtype=dtype, **kw)
            errs = {"y": rel_rms(got.y, want.y), "S": rel_rms(got.state[0], want.state[0])}
            assert got.grads.keys() == want.grads.keys() and "x" in want.grads
            errs.update({k: rel_rms(got.grads[k], want.grads[k]) for k in want.grads})
            bad = {k: e for k, e in errs.items() if not e <= tolerance(dtype)}
            assert not bad, (kw, bad)


def test_auto_picks_chunked_for_the_form() -> None:
    call = KernelCall(TinyMemory(3, 4), torch.randn(2, 5, 3), None, None, needs_grad=True)
    assert select(call).backend == "chunked"


def test_empty_sequence_keeps_the_state() -> None:
    cell = TinyMemory(3, 4, heads=2)
    S0 = torch.randn(2, 2, 2, 2)
    y, (S,) = cell(torch.randn(2, 0, 3), MemState(S0), backend="chunked")
    assert y.shape == (2, 0, 4) and torch.equal(S, S0)


def test_nan_in_gives_nan_out() -> None:
    cell = TinyMemory(3, 4)
    x = torch.randn(2, 6, 3)
    x[1, 2, 0] = float("nan")
    y, _ = cell(x, backend="chunked")
    assert torch.isnan(y[1, 2:]).all() and torch.isfinite(y[0]).all()


def test_bad_rule() -> None:
    z = torch.zeros(1, 1, 2, 2)
    for fn in (delta_rule_chunked, REFERENCE):
        with pytest.raises(ValueError, match="rule must be"):
            fn(z, z, z, z[..., 0], torch.zeros(1, 1, 2, 2), rule="gated")


@pytest.mark.parametrize("rule", ["delta", "linear"])
@pytest.mark.parametrize("where", ["k", "v", "q", "beta", "S0"])
@pytest.mark.parametrize("with_resets", [False, True])
def test_non_finite_inputs_spoil_what_the_recurrence_spoils(
    rule: str, where: str, with_resets: bool
) -> None:
    """A NaN (or inf) goes forward in time only, row by row as in the step recurrence: never
    back to the start of its chunk (the chunked products multiply it by masked zeros)."""
    q, k, v, beta, S0, resets = _raw(2, 2, 11, 3, 4, seed=3)
    resets[:, 7] = True
    rs = resets if with_resets else None
    bad = {"k": k, "v": v, "q": q, "beta": beta, "S0": S0}[where]
    resets[1, :7] = False  # sequence 1: no reset before step 7, where the memory starts over
    if where == "S0":
        bad[1, 1, 2, 0] = float("nan")
    elif where == "beta":
        bad[1, 1, 5] = float("inf")
    else:
        bad[1, 1, 5, 1] = float("nan")
    want_o, want_S = REFERENCE(q, k, v, beta, S0, rule=rule, resets=rs)
    o, S = delta_rule_chunked(q, k, v, beta, S0, rule=rule, resets=rs, chunk=4)
    assert torch.equal(~torch.isfinite(o), ~torch.isfinite(want_o))
    assert torch.equal(~torch.isfinite(S), ~torch.isfinite(want_S))
    assert (~torch.isfinite(o)).any()
    ok = torch.isfinite(want_o)
    assert rel_rms(o[ok], want_o[ok]) < 1e-12
