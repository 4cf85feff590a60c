"""The gated cells under ``torch.compile(fullgraph=True)`` on their default backend (``auto``).

Every gated cell (Elman, LSTM, GRU, sLSTM) compiled with ``aot_eager`` (dynamo and AOTAutograd,
no code generation), in float32 and float64, one head without resets and three heads with
resets and an initial state:
the outputs, the final state and the gradients of the input, the initial state and every
parameter equal eager mode's within the dtype's relative RMS tolerance
(:data:`rnnkit.core.testing.TOLERANCES`). One case runs with inductor, and one with the native
library switched off (``auto`` then compiles ``reference`` or ``torch``).

The ``fused`` loops write with ``out=`` into slices of their buffers, which dynamo refuses
("Attempted to call op with non-contiguous out= tensor"): before ``auto`` ranked ``fused``
below ``reference`` under compile, float64 GRU and sLSTM calls and every float64 call with
resets failed here. ``tests/test_compile_inductor.py`` compiles every registered cell with
inductor (one configuration each); the conformance kit's ``compile`` check compiles every
registered cell with ``aot_eager``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from _gated_helpers import make_cell
from torch import Tensor

from rnnkit.core.dispatch import KernelCall, Priority, select
from rnnkit.core.plugins import get_host
from rnnkit.core.testing.numerics import TOLERANCES, rel_rms
from rnnkit.kernels.gated import fused, fused_cpp

KINDS = ("elman", "lstm", "gru", "slstm")
DTYPES = (torch.float32, torch.float64)
B, T = 2, 5


def _native() -> str | None:
    """Why ``fused_cpp`` cannot run here (``None`` when it can)."""
    return fused_cpp.available()


def _inputs(
    cell: Any, dtype: torch.dtype, resets: bool
) -> tuple[Tensor, tuple[Tensor, ...] | None, Tensor | None]:
    """``x``, an initial state (with resets) or ``None``, and resets (one at step 0), for a
    float64 ``cell``, in ``dtype``."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, cell.input_size, generator=g, dtype=torch.float64)
    if not resets:
        return x.to(dtype), None, None
    prefix = torch.randn(B, 3, cell.input_size, generator=g, dtype=torch.float64)
    with torch.no_grad():  # a state the cell reaches (an arbitrary one may be invalid: sLSTM n)
        _, state = cell(prefix, backend="reference")
    r = torch.rand(B, T, generator=g) < 0.3
    r[0, 0] = True
    return x.to(dtype), tuple(s.to(dtype) for s in state), r


def _run(
    fn: Callable[..., Any], cell: Any, x: Tensor, state: tuple[Tensor, ...] | None, r: Any
) -> list[Tensor]:
    """Outputs, final state fields and the gradients of ``x``, the state and the parameters."""
    x = x.detach().clone().requires_grad_(True)
    leaves = [x]
    if state is not None:
        state = cell.state_type(*(s.detach().clone().requires_grad_(True) for s in state))
        leaves += list(state)
    y, final = fn(x, state, resets=r)
    leaves += list(cell.parameters())
    g = torch.Generator().manual_seed(2)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in (y, *final))
    grads = torch.autograd.grad(loss, leaves)
    return [y.detach(), *(f.detach() for f in final), *grads]


def _check(kind: str, dtype: torch.dtype, resets: bool, compiler: str) -> None:
    get_host()  # the plugin host loads outside the traced code
    cell = make_cell(kind, 3 if resets else 1)  # float64
    x, state, r = _inputs(cell, dtype, resets)
    cell = cell.to(dtype)
    want = _run(cell, cell, x, state, r)
    torch._dynamo.reset()  # each case compiles afresh
    got = _run(torch.compile(cell, backend=compiler, fullgraph=True), cell, x, state, r)
    tol = TOLERANCES[dtype]
    for i, (a, e) in enumerate(zip(got, want, strict=True)):
        assert a.dtype == e.dtype and a.shape == e.shape, i
        assert rel_rms(a, e) <= tol, (i, rel_rms(a, e))


@pytest.mark.parametrize("resets", [False, True], ids=["plain", "heads3+resets+state"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("kind", KINDS)
def test_compiled_auto_matches_eager(kind: str, dtype: torch.dtype, resets: bool) -> None:
    _check(kind, dtype, resets, "aot_eager")


@pytest.mark.slow
def test_inductor() -> None:
    """Inductor's code generation on the float64 three-head GRU with resets and an initial
    state."""
    _check("gru", torch.float64, True, "inductor")


@pytest.mark.parametrize("kind", ["lstm", "slstm"])
def test_without_the_native_library(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """``RNNKIT_FUSED_CPP=0`` (as without a compiler): ``auto`` still compiles the float64 call
    with resets, on ``reference``."""
    monkeypatch.setenv("RNNKIT_FUSED_CPP", "0")
    _check(kind, torch.float64, True, "aot_eager")


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_compiled_auto_ranks_fused_below_reference(dtype: torch.dtype) -> None:
    """Under compile ``fused`` ranks below ``reference``; ``auto`` keeps the opaque native
    loop where the library is available (compiled speed: one op per call, not a loop unrolled
    over time). Recorded inside the traced function, compared outside it."""
    get_host()
    cell = make_cell("gru", 1).to(dtype)
    r = torch.zeros(B, T, dtype=torch.bool)
    seen: list[tuple[int, str]] = []

    def probe(x: Tensor) -> Tensor:
        call = KernelCall(cell, x, None, r, True)
        seen.append((fused.priority(call), select(call).backend))
        return x + 1

    x = torch.randn(B, T, cell.input_size, dtype=dtype)
    torch._dynamo.reset()
    torch.compile(probe, backend="eager", fullgraph=True)(x)
    eager = select(KernelCall(cell, x, None, r, True)).backend
    assert seen == [(fused.COMPILE_PRIORITY, "reference" if _native() else "fused_cpp")]
    assert fused.COMPILE_PRIORITY < Priority.REFERENCE
    assert eager == ("fused_cpp" if dtype == torch.float32 and _native() is None else "fused")
