"""The matrix-state form: every backend against the plain recurrence, on odd shapes.

``delta_rule_chunked`` (the ``chunked`` backend's op) is compared with
:func:`memory_recurrence` (the form's reference) on raw inputs, with and without a decay
``alpha`` (random, close to 0, exactly 1); the registered kernel runs a small
:class:`MatrixStateCell` defined here (with and without a decay) against the generic
``reference`` loop over ``recur``, values and gradients, in float64 and float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

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

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        heads: int = 1,
        rule: str = "delta",
        decay: bool = False,
    ):
        super().__init__()
        self.input_size, self.hidden_size, self.output_size = input_size, hidden_size, hidden_size
        self.heads, self.head_dim, self.rule = heads, hidden_size // heads, rule
        self.decay = decay
        self.projected_size = 3 * hidden_size + heads * (2 if decay else 1)
        self.weight = nn.Parameter(torch.randn(self.projected_size, input_size) / input_size)

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("S", (self.heads, self.head_dim, self.head_dim)),)

    def project(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight)

    def _parts(self, px: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
        """``px: (..., P)`` -> q, k, v ``(..., heads, d)``, beta and log alpha ``(..., heads)``
        (``log alpha = logsigmoid(. + 2)``, or ``None`` without a decay)."""
        H, n, shape = self.hidden_size, self.heads, (*px.shape[:-1], self.heads, self.head_dim)
        q, k, v = (px[..., i * H : (i + 1) * H].reshape(shape) for i in range(3))
        beta = torch.sigmoid(px[..., 3 * H : 3 * H + n])
        log_alpha = F.logsigmoid(px[..., 3 * H + n :] + 2.0) if self.decay else None
        return q, F.normalize(k, dim=-1), v, beta, log_alpha

    def recur(self, px_t: Tensor, state: MemState) -> tuple[Tensor, MemState]:
        q, k, v, beta, log_alpha = self._parts(px_t)
        S, b = state.S, beta[..., None, None]
        if log_alpha is not None:
            S = torch.exp(log_alpha)[..., None, None] * S
        if self.rule == "delta":
            v = v - (S @ k.unsqueeze(-1)).squeeze(-1)
        S = S + b * v.unsqueeze(-1) * k.unsqueeze(-2)
        return (S @ q.unsqueeze(-1)).squeeze(-1).flatten(-2), MemState(S)

    def memory_inputs(
        self, x: Tensor, state: MemState | None, resets: Tensor | None
    ) -> MemoryInputs:
        B = x.shape[0]
        S0 = (state or self.init_state(B, device=x.device, dtype=x.dtype)).S
        q, k, v, beta, log_alpha = self._parts(self.project(x))
        heads_first = [t.transpose(1, 2) for t in (q, k, v, beta)]
        la = None if log_alpha is None else log_alpha.transpose(1, 2)
        return MemoryInputs(*heads_first, S0, (), la)

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


def _log_alpha(kind: str | None, shape: tuple[int, ...], seed: int) -> Tensor | None:
    """Log decays ``(B, n, T)`` of one kind: ``None`` (no decay), ``"random"`` (alpha in
    ``(e^-2, 1)``), ``"tiny"`` (alpha from ``e^-300`` to ``e^-20``, far below float32's
    smallest normal number in a chunk's products), ``"mixed"`` (random, with a tenth of the
    steps tiny), ``"one"`` (exactly 1), ``"zero"`` (exactly 0, ``-inf``), ``"holes"`` (random,
    exactly 0 at every fourth step: a full forget that is not a reset)."""
    if kind is None:
        return None
    g = torch.Generator().manual_seed(seed + 1000)
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    if kind == "random":
        return -2.0 * u
    if kind == "tiny":
        return -20.0 - 280.0 * u
    if kind == "mixed":
        tiny = torch.rand(shape, generator=g) < 0.1
        return torch.where(tiny, -50.0 - 50.0 * u, -2.0 * u)
    if kind == "one":
        return torch.zeros(shape, dtype=torch.float64)
    if kind == "holes":
        holes = torch.arange(shape[-1]) % 4 == 3
        return torch.where(holes, float("-inf"), -2.0 * u)
    assert kind == "zero"
    return torch.full(shape, float("-inf"), dtype=torch.float64)


DECAYS = [None, "random", "tiny", "mixed", "one", "zero", "holes"]


@pytest.mark.parametrize("rule", ["delta", "linear"])
@pytest.mark.parametrize(("T", "chunk"), [(1, 3), (10, 3), (7, 7), (13, 4)])
@pytest.mark.parametrize("with_resets", [False, True])
@pytest.mark.parametrize("decay", DECAYS)
def test_chunked_op_equals_the_recurrence(
    rule: str, T: int, chunk: int, with_resets: bool, decay: str | None
) -> None:
    """Raw inputs (beta up to 1, ``d_k != d_v``), one short chunk, padded last chunks, resets,
    every kind of decay (alpha random, near 0, exactly 1, exactly 0)."""
    q, k, v, beta, S0, resets = _raw(2, 3, T, 3, 5, seed=T + chunk)
    la = _log_alpha(decay, (2, 3, T), seed=T)
    rs = resets if with_resets else None
    want_o, want_S = REFERENCE(q, k, v, beta, S0, log_alpha=la, rule=rule, resets=rs)
    o, S = delta_rule_chunked(q, k, v, beta, S0, log_alpha=la, rule=rule, resets=rs, chunk=chunk)
    assert rel_rms(o, want_o) < 1e-12 and rel_rms(S, want_S) < 1e-12


@pytest.mark.parametrize("rule", ["delta", "linear"])
@pytest.mark.parametrize("decay", [None, "random", "mixed", "one", "holes"])
def test_chunked_op_gradients_equal_the_recurrence(rule: str, decay: str | None) -> None:
    """Gradients of every input (the log decays included) through the chunked op against the
    recurrence, float64, with resets and a padded last chunk."""
    raw = _raw(2, 2, 9, 4, 3, seed=5)
    resets = raw[5]
    la = _log_alpha(decay, (2, 2, 9), seed=5)
    inputs = [t.clone().requires_grad_() for t in (*raw[:5], *([] if la is None else [la]))]
    weights = [torch.randn(2, 2, 9, 3, dtype=torch.float64), torch.randn(2, 2, 3, 4).double()]

    def grads(fn: object) -> list[Tensor]:
        la = inputs[5] if len(inputs) > 5 else None
        o, S = fn(*inputs[:5], log_alpha=la, rule=rule, resets=resets)  # type: ignore[operator]
        loss = (o * weights[0]).sum() + (S * weights[1]).sum()
        return list(torch.autograd.grad(loss, inputs))

    want = grads(REFERENCE)
    got = grads(lambda *a, **kw: delta_rule_chunked(*a, chunk=4, **kw))
    for name, a, b in zip(["q", "k", "v", "beta", "S0", "log_alpha"], got, want, strict=False):
        assert rel_rms(a, b) < 1e-10, name


@pytest.mark.parametrize("rule", ["delta", "linear"])
@pytest.mark.parametrize("decay", ["random", "mixed", "tiny"])
def test_float32_decays_match_the_float64_recurrence(rule: str, decay: str) -> None:
    """In float32, with 8 heads of 16 over 3 chunks of 32, values and the gradients of every
    input stay within float32's tolerance of the float64 recurrence, alpha near 0 included
    (the decay products of a chunk reach ``e^-9000``: they must underflow to 0 cleanly, never
    meet as ``0 * inf`` or a difference of two huge prefix sums)."""
    B, n, T, d = 2, 8, 90, 16
    q, k, v, beta, S0, resets = _raw(B, n, T, d, d, seed=11)
    la = _log_alpha(decay, (B, n, T), seed=11)
    assert la is not None
    w_o, w_S = torch.randn(B, n, T, d, dtype=torch.float64), torch.randn(B, n, d, d).double()

    def run(fn: object, dtype: torch.dtype) -> list[Tensor]:
        ins = [t.to(dtype).requires_grad_() for t in (q, k, v, beta, S0, la)]
        o, S = fn(*ins[:5], log_alpha=ins[5], rule=rule, resets=resets)  # type: ignore[operator]
        loss = (o.double() * w_o).sum() + (S.double() * w_S).sum()
        return [o.double(), S.double(), *(g.double() for g in torch.autograd.grad(loss, ins))]

    want = run(REFERENCE, torch.float64)
    got = run(lambda *a, **kw: delta_rule_chunked(*a, chunk=32, **kw), torch.float32)
    names = ["o", "S", "q", "k", "v", "beta", "S0", "log_alpha"]
    errs = {name: rel_rms(a, b) for name, a, b in zip(names, got, want, strict=True)}
    assert all(torch.isfinite(t).all() for t in got)
    assert not {k: e for k, e in errs.items() if not e <= tolerance(torch.float32)}, errs


def test_alpha_exactly_one_is_no_decay() -> None:
    """``log_alpha = 0`` takes the decay path and gives what ``log_alpha=None`` gives."""
    q, k, v, beta, S0, resets = _raw(2, 3, 11, 4, 4, seed=2)
    zero = torch.zeros(2, 3, 11, dtype=torch.float64)
    for rule in ("delta", "linear"):
        a = delta_rule_chunked(q, k, v, beta, S0, rule=rule, resets=resets, chunk=4)
        b = delta_rule_chunked(q, k, v, beta, S0, log_alpha=zero, rule=rule, resets=resets, chunk=4)
        assert rel_rms(a[0], b[0]) < 1e-14 and rel_rms(a[1], b[1]) < 1e-14


def test_mamba2_ssd_is_the_linear_rule_with_a_decay() -> None:
    """Mamba-2's scalar-decay SSD, ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T``,
    ``y_t = h_t C_t``, is the form's linear rule with ``alpha_t = exp(dt_t A)``,
    ``beta_t = dt_t``, ``v = x``, ``k = B``, ``q = C``: checked against SSD's quadratic
    (attention-like) form ``y = (L o C B^T) (dt x) + decay(0..t) h_0 C``, computed here."""
    Bsz, n, T, N, P = 2, 3, 21, 5, 4
    g = torch.Generator().manual_seed(4)
    f64 = torch.float64
    x = torch.randn(Bsz, n, T, P, generator=g, dtype=f64)
    Bm = torch.randn(Bsz, n, T, N, generator=g, dtype=f64)
    Cm = torch.randn(Bsz, n, T, N, generator=g, dtype=f64)
    dt = F.softplus(torch.randn(Bsz, n, T, generator=g, dtype=f64))
    A = -torch.rand(n, generator=g, dtype=f64) * 4.0
    h0 = torch.randn(Bsz, n, P, N, generator=g, dtype=f64)
    la = dt * A[:, None]
    cum = torch.cumsum(la, -1)
    L = torch.exp(cum[..., :, None] - cum[..., None, :]).tril()  # (B, n, T, T)
    y_want = (L * (Cm @ Bm.transpose(-1, -2))) @ (dt[..., None] * x)
    y_want = y_want + torch.exp(cum)[..., None] * (Cm @ h0.transpose(-1, -2))
    for fn in (REFERENCE, lambda *a, **kw: delta_rule_chunked(*a, chunk=8, **kw)):
        y, _ = fn(Cm, Bm, x, dt, h0, log_alpha=la, rule="linear")
        assert rel_rms(y, y_want) < 1e-12


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize(
    ("rule", "heads", "decay"),
    [
        ("delta", 1, False),
        ("delta", 3, False),
        ("linear", 2, False),
        ("delta", 1, True),
        ("delta", 3, True),
        ("linear", 3, True),
    ],
)
@pytest.mark.parametrize("time", [1, 5, 11])
def test_kernel_equals_reference_loop(
    monkeypatch: pytest.MonkeyPatch,
    dtype: torch.dtype,
    rule: str,
    heads: int,
    decay: bool,
    time: int,
) -> None:
    """The registered ``chunked`` kernel on a test cell of the form (with and without a
    decay), chunks of 4 tokens, against the float64 loop over ``recur``: outputs, final
    state and every gradient."""
    monkeypatch.setattr(matrix_state.chunked, "CHUNK", 4)
    torch.manual_seed(time + heads)
    cell = TinyMemory(5, 6, heads=heads, rule=rule, decay=decay).double()
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
@pytest.mark.parametrize(
    ("where", "decay"),
    [
        ("k", None),
        ("v", None),
        ("q", None),
        ("beta", None),
        ("S0", None),
        ("k", "random"),
        ("v", "mixed"),
        ("S0", "random"),
        ("log_alpha", "random"),
        ("log_alpha+inf", "random"),
    ],
)
@pytest.mark.parametrize("with_resets", [False, True])
def test_non_finite_inputs_spoil_what_the_recurrence_spoils(
    rule: str, where: str, decay: str | None, with_resets: bool
) -> None:
    """A NaN (or inf) goes forward in time only, row by row as in the step recurrence: never
    back to the start of its chunk (the chunked products multiply it by masked zeros). A NaN
    or ``+inf`` log decay spoils the whole memory until the next reset."""
    q, k, v, beta, S0, resets = _raw(2, 2, 11, 3, 4, seed=3)
    la = _log_alpha(decay, (2, 2, 11), seed=3)
    resets[:, 7] = True
    rs = resets if with_resets else None
    resets[1, :7] = False  # sequence 1: no reset before step 7, where the memory starts over
    if where == "S0":
        S0[1, 1, 2, 0] = float("nan")
    elif where == "beta":
        beta[1, 1, 5] = float("inf")
    elif where.startswith("log_alpha"):
        assert la is not None
        la[1, 1, 5] = float("inf") if where.endswith("+inf") else float("nan")
    else:
        {"k": k, "v": v, "q": q}[where][1, 1, 5, 1] = float("nan")
    want_o, want_S = REFERENCE(q, k, v, beta, S0, log_alpha=la, rule=rule, resets=rs)
    o, S = delta_rule_chunked(q, k, v, beta, S0, log_alpha=la, rule=rule, resets=rs, chunk=4)
    assert torch.equal(~torch.isfinite(o), ~torch.isfinite(want_o))
    assert torch.equal(~torch.isfinite(S), ~torch.isfinite(want_S))
    assert (~torch.isfinite(o)).any()
    ok = torch.isfinite(want_o)
    assert rel_rms(o[ok], want_o[ok]) < 1e-12


# --- the written backward ---------------------------------------------------------------------


def _graph_names(t: Tensor) -> set[str]:
    """The names of the autograd nodes ``t`` was computed through."""
    names: set[str] = set()
    todo = [t.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node.name() in names:
            continue
        names.add(node.name())
        todo.extend(n for n, _ in node.next_functions)
    return names


@pytest.mark.parametrize("rule", ["delta", "linear"])
@pytest.mark.parametrize("decay", [None, "random", "holes", "tiny"])
def test_written_backward_across_blocks_equals_the_recurrence(
    monkeypatch: pytest.MonkeyPatch, rule: str, decay: str | None
) -> None:
    """The hand-written backward on an odd shape (3 heads, ``d_k != d_v``, 23 steps in chunks
    of 4: a padded last chunk) with blocks of 4 chunks (a full block and a short one, so the
    memory's gradient crosses a block boundary), resets at step 0, at a chunk boundary and
    inside chunks: the gradients of every input against the float64 recurrence."""
    monkeypatch.setattr(matrix_state.chunked, "BLOCK", 4)
    B, n, T = 2, 3, 23
    q, k, v, beta, S0, resets = _raw(B, n, T, 4, 3, seed=8)
    resets[0, 0] = resets[1, 8] = True
    resets[1, :8] = False  # sequence 1's first two chunks carry S0 into the second block
    la = _log_alpha(decay, (B, n, T), seed=8)
    leaves = (q, k, v, beta, S0, *([] if la is None else [la]))
    inputs = [t.clone().requires_grad_() for t in leaves]
    g = torch.Generator().manual_seed(9)
    w_o = torch.randn(B, n, T, 3, generator=g, dtype=torch.float64)
    w_S = torch.randn(B, n, 3, 4, generator=g, dtype=torch.float64)

    def grads(fn: object) -> list[Tensor]:
        la = inputs[5] if len(inputs) > 5 else None
        o, S = fn(*inputs[:5], log_alpha=la, rule=rule, resets=resets)  # type: ignore[operator]
        if fn is not REFERENCE:
            assert "_ChunkedMemoryBackward" in _graph_names(o)
        return list(torch.autograd.grad((o * w_o).sum() + (S * w_S).sum(), inputs))

    want = grads(REFERENCE)
    got = grads(lambda *a, **kw: delta_rule_chunked(*a, chunk=4, **kw))
    names = ["q", "k", "v", "beta", "S0", "log_alpha"]
    errs = {name: rel_rms(a, b) for name, a, b in zip(names, got, want, strict=False)}
    assert not {k: e for k, e in errs.items() if not e < 1e-10}, errs


@pytest.mark.parametrize("rule", ["delta", "linear"])
def test_traced_path_equals_the_recurrence(monkeypatch: pytest.MonkeyPatch, rule: str) -> None:
    """Under ``torch.compile``/``torch.export`` the op runs its forward in one block under
    autograd (no written backward): values and gradients still match the recurrence."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    q, k, v, beta, S0, resets = _raw(2, 2, 11, 3, 4, seed=6)
    la = _log_alpha("random", (2, 2, 11), seed=6)
    assert la is not None
    inputs = [t.clone().requires_grad_() for t in (q, k, v, beta, S0, la)]

    def run(fn: object) -> list[Tensor]:
        o, S = fn(*inputs[:5], log_alpha=inputs[5], rule=rule, resets=resets)  # type: ignore[operator]
        return [o, S, *torch.autograd.grad(o.square().sum() + S.square().sum(), inputs)]

    got = run(lambda *a, **kw: delta_rule_chunked(*a, chunk=4, **kw))
    want = run(REFERENCE)
    assert all(rel_rms(a, b) < 1e-10 for a, b in zip(got, want, strict=True))


def _kept_by(fn: Callable[[], object]) -> int:
    """Bytes allocated and not freed while ``fn`` runs (what it keeps), from torch's profiler."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(e.self_cpu_memory_usage for e in prof.events())


@pytest.mark.parametrize("rule", ["delta", "linear"])
@pytest.mark.parametrize("decay", [False, True])
def test_forward_keeps_no_chunk_blocks(
    monkeypatch: pytest.MonkeyPatch, rule: str, decay: bool
) -> None:
    """What a forward with gradients keeps (its outputs, the inputs' finite copies, what the
    backward needs) is linear in ``T`` without the chunk's factor: at most the inputs twice,
    the outputs and the memory entering each chunk, ``O(T d + T / C d_k d_v)`` per head. Plain
    autograd through the chunked operations keeps the ``C x C`` blocks (``O(T C)`` per head)
    and exceeds that bound (checked on the traced path, so the measurement is shown to see
    them)."""
    B, n, T, d, C = 1, 2, 512, 8, 64
    q, k, v, beta, S0, resets = _raw(B, n, T, d, d, seed=4)
    la = _log_alpha("random" if decay else None, (B, n, T), seed=4)
    leaves = [t.float() for t in (q, k, v, beta, S0, *([] if la is None else [la]))]
    leaves_bytes = sum(t.numel() * 4 for t in leaves)
    memories = (T // C) * B * n * d * d * 4
    bound = 2 * leaves_bytes + (B * n * T * d + B * n * d * d) * 4 + memories
    assert bound < 2 * B * n * T * C * 4  # two C x C blocks per chunk exceed the bound
    out: list[Tensor] = []

    def forward() -> None:
        ins = [t.detach().requires_grad_() for t in leaves]
        la = ins[5] if decay else None
        o, S = delta_rule_chunked(*ins[:5], log_alpha=la, rule=rule, resets=resets, chunk=C)
        out[:] = [o, S]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        kept = _kept_by(forward)
        out.clear()  # frees the graph before the next measurement
        with monkeypatch.context() as m:
            m.setattr(torch.compiler, "is_compiling", lambda: True)
            kept_autograd = _kept_by(forward)
        out.clear()
    finally:
        torch.set_num_threads(threads)
    assert kept_autograd > bound, "the measurement does not see what plain autograd keeps"
    assert 0 < kept <= bound, (kept, bound, kept_autograd)


def _masks_made(fn: Callable[[], object]) -> int:
    """The most entries one ``torch.isfinite`` call that ``fn`` runs tests (0 if none), from
    torch's profiler."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    sizes = [e.input_shapes[0] for e in prof.events() if e.name == "aten::isfinite"]
    return max((int(torch.Size(s).numel()) for s in sizes), default=0)


@pytest.mark.parametrize("rule", ["delta", "linear"])
def test_finite_inputs_skip_the_non_finite_masks(rule: str) -> None:
    """On finite inputs (``-inf`` log decays, alpha = 0, are finite input) the op decides
    from one sum per input and tests no input entry by entry (``torch.isfinite`` allocates a
    mask and temporaries of every input's size); a NaN still takes the masked
    path; and finite inputs whose sum overflows take it too, with the recurrence's results."""
    q, k, v, beta, S0, _ = (t.float() for t in _raw(2, 2, 11, 3, 4, seed=11))
    la = _log_alpha("holes", (2, 2, 11), seed=11)
    assert la is not None and torch.isneginf(la).any()
    la = la.float()

    def run(v: Tensor) -> Callable[[], object]:
        return lambda: delta_rule_chunked(q, k, v, beta, S0, log_alpha=la, rule=rule, chunk=4)

    entries = v.numel()
    assert _masks_made(run(v)) < 8  # at most the few sums

    v_nan = v.clone()
    v_nan[1, 0, 6, 2] = float("nan")
    assert _masks_made(run(v_nan)) >= entries
    # finite queries whose float32 sum overflows (66 x 1e37, the outputs stay finite): the
    # exact masks decide (all false), with the recurrence's results
    q_big = q.clone()
    q_big[0] = 1e37
    assert torch.isinf(q_big.sum())

    def run_big() -> tuple[Tensor, Tensor]:
        return delta_rule_chunked(q_big, k, v, beta, S0, log_alpha=la, rule=rule, chunk=4)

    assert _masks_made(run_big) >= entries
    f64 = [t.double() for t in (q_big, k, v, beta, S0)]
    o, S = run_big()
    want_o, want_S = REFERENCE(*f64, log_alpha=la.double(), rule=rule)
    assert torch.isfinite(o).all() and torch.isfinite(S).all()
    assert rel_rms(o.double(), want_o) < 1e-5 and rel_rms(S.double(), want_S) < 1e-5


def test_blocks_stay_within_the_element_budget() -> None:
    """Many heads: one chunk's ``C x C`` decays over all heads (``B n C C`` float64 entries)
    fill the block budget, so the forward and the written backward run a block per chunk and
    no operation allocates more than that (the sequence's two chunks in one block would
    allocate twice as much). Large blocks made the CPU allocator map fresh pages for
    every block's temporaries, which dominated the backward's time."""
    B, n, T, C, d = 2, 64, 128, 64, 2
    q, k, v, beta, S0, _ = (t.float() for t in _raw(B, n, T, d, d, seed=12))
    la = _log_alpha("random", (B, n, T), seed=12)
    assert la is not None
    inputs = [t.requires_grad_() for t in (q, k, v, beta, S0, la.float())]

    def fwd_bwd() -> None:
        o, S = delta_rule_chunked(*inputs[:5], log_alpha=inputs[5], rule="delta", chunk=C)
        (o.square().sum() + S.square().sum()).backward()

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fwd_bwd()
    finally:
        torch.set_num_threads(threads)
    largest = max(e.self_cpu_memory_usage for e in prof.events())
    assert 0 < largest <= B * n * C * C * 8, largest


@pytest.mark.parametrize("rule", ["delta", "linear"])
@pytest.mark.parametrize("decay", [None, "random"])
def test_each_block_of_the_keys_and_queries_is_copied_once_per_pass(
    monkeypatch: pytest.MonkeyPatch, rule: str, decay: str | None
) -> None:
    """Several blocks: a block's slice of ``q`` or ``k`` is strided across the heads, and
    every batched product reading it used to copy it again (several copies per block and
    pass, a large part of the CPU time at long ``T``); the kernel copies each once per block
    in the forward and once in the backward. Counted as copies (``aten.clone``) of the shape
    of a block of keys, which no other tensor has here (``d_k`` differs from ``d_v`` and
    ``C``)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    B, n, T, dk, dv, C, block = 2, 3, 24, 3, 5, 4, 2
    monkeypatch.setattr(matrix_state.chunked, "BLOCK", block)
    q, k, v, beta, S0, _ = (t.float() for t in _raw(B, n, T, dk, dv, seed=13))
    la = _log_alpha(decay, (B, n, T), seed=13)
    leaves = [t.requires_grad_() for t in (q, k, v, beta, S0)]
    log_alpha = None if la is None else la.float().requires_grad_()
    key_block = (B, n, block, C, dk)
    copies: list[tuple[int, ...]] = []  # the shapes of the copies of a block of keys

    class CountCopies(TorchDispatchMode):
        def __torch_dispatch__(
            self,
            func: Any,
            types: Any,
            args: tuple[Any, ...] = (),
            kwargs: dict[str, Any] | None = None,
        ) -> Any:
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten.clone.default and tuple(out.shape) == key_block:
                copies.append(tuple(out.shape))
            return out

    with CountCopies():
        o, S = delta_rule_chunked(*leaves, log_alpha=log_alpha, rule=rule, chunk=C)
        (o.square().sum() + S.square().sum()).backward()
    blocks = T // C // block
    # q and k of each block, once in the forward and once in the backward
    assert len(copies) == 2 * 2 * blocks, len(copies)
    want_o, want_S = REFERENCE(*leaves, log_alpha=log_alpha, rule=rule)
    assert rel_rms(o, want_o) < 1e-5 and rel_rms(S, want_S) < 1e-5


@pytest.mark.parametrize("rule", ["delta", "linear"])
@pytest.mark.parametrize("where", ["v", "k", "beta", "log_alpha"])
def test_a_non_finite_input_at_a_reset_or_the_last_step_spoils_as_the_recurrence(
    rule: str, where: str
) -> None:
    """A non-finite input at the very step of a reset (the memory restarts from zero entering
    it, then takes the bad write) spoils that step and what follows, as the step recurrence
    does; one at the last step spoils the final memory (the masks of both ends of a
    segment)."""
    q, k, v, beta, S0, resets = _raw(2, 2, 10, 3, 4, seed=6)
    la = _log_alpha("random", (2, 2, 10), seed=6)
    assert la is not None
    resets[:] = False
    resets[:, 6] = True
    for t in (6, 9):  # at the reset (example 0) and at the last step (example 1)
        b = 0 if t == 6 else 1
        if where == "beta":
            beta[b, 1, t] = float("nan")
        elif where == "log_alpha":
            la[b, 1, t] = float("nan")
        else:
            {"k": k, "v": v}[where][b, 1, t, 2] = float("nan")
    want_o, want_S = REFERENCE(q, k, v, beta, S0, log_alpha=la, rule=rule, resets=resets)
    o, S = delta_rule_chunked(q, k, v, beta, S0, log_alpha=la, rule=rule, resets=resets, chunk=4)
    assert (~torch.isfinite(want_o[0, 1, 6:])).any() and (~torch.isfinite(want_S[1])).any()
    assert torch.isfinite(want_o[0, :, :6]).all()
    assert torch.equal(~torch.isfinite(o), ~torch.isfinite(want_o))
    assert torch.equal(~torch.isfinite(S), ~torch.isfinite(want_S))
    ok = torch.isfinite(want_o)
    assert rel_rms(o[ok], want_o[ok]) < 1e-12
