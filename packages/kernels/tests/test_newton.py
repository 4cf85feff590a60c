"""The ``newton`` backend: values and gradients vs the sequential loop, solve info, fallback,
and the 2x2 block scan."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
import torch
from torch import Tensor, nn

from rnnkit.core.cell import Cell
from rnnkit.core.dispatch import KernelCall, select
from rnnkit.core.forms import Form
from rnnkit.core.kernel import Priority
from rnnkit.core.state import StateField
from rnnkit.core.testing.numerics import assert_close
from rnnkit.kernels.newton import (
    auto_work,
    block2_scan,
    block2_scan_sequential,
    failed_before,
    forget_failures,
    iterations_before,
    last_solve_info,
    newton_options,
)


class DiagState(NamedTuple):
    h: Tensor


class PairState(NamedTuple):
    h: Tensor
    c: Tensor


class TanhDiag(Cell[DiagState]):
    """``h_t = tanh(w * h_{t-1} + x_t)`` (diagonal Jacobian), implemented here so the kernel's
    tests do not depend on rnnkit-models."""

    forms = frozenset({Form.DIAGONAL_JACOBIAN})
    state_type = DiagState
    newton_block = 1

    def __init__(self, input_size: int, hidden_size: int, scale: float = 0.9) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = self.output_size = hidden_size
        self.projected_size = hidden_size
        self.lin = nn.Linear(input_size, hidden_size)
        self.w = nn.Parameter(scale * (2 * torch.rand(hidden_size) - 1))

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("h", (self.hidden_size,)),)

    def project(self, x: Tensor) -> Tensor:
        return self.lin(x)

    def recur(self, px_t: Tensor, state: DiagState) -> tuple[Tensor, DiagState]:
        h = self.recur_parallel(px_t, state.h)
        return h, DiagState(h)

    def pack_state(self, state: DiagState) -> Tensor:
        return state.h

    def unpack_state(self, z: Tensor) -> DiagState:
        return DiagState(z)

    def recur_parallel(self, px: Tensor, z: Tensor) -> Tensor:
        return torch.tanh(self.w * z + px)

    def jacobian_diag(self, px: Tensor, z: Tensor) -> Tensor:
        return (1 - torch.tanh(self.w * z + px) ** 2) * self.w

    def readout_parallel(self, px: Tensor, z: Tensor) -> Tensor:
        return z


class TanhDiagFused(TanhDiag):
    """``TanhDiag`` with the optional fast path: ``newton_scratch``, ``recur_parallel_newton``
    (``f`` now, ``J`` on demand) and the analytic ``recur_parallel_vjp``."""

    newton_scratch = 3

    def recur_parallel_newton(
        self, px: Tensor, z: Tensor, *, scratch: Tensor | None = None
    ) -> tuple[Tensor, Callable[[], Tensor]]:
        buf = list(scratch.unbind(0)) if scratch is not None else [None] * 3
        with torch.no_grad():
            w = self.w.detach()
            f = torch.addcmul(px, w, z, out=buf[0]).tanh_()
            kept = torch.mul(f, 1.0, out=buf[1])  # the caller may overwrite f

        def jacobian() -> Tensor:
            with torch.no_grad():
                return torch.addcmul(torch.ones(()), kept, kept, value=-1, out=buf[2]).mul_(w)

        return f, jacobian

    def recur_parallel_vjp(
        self,
        px: Tensor,
        z: Tensor,
        adjoint: Callable[[Tensor], Tensor],
        *,
        scratch: Tensor | None = None,
        out: Tensor | None = None,
    ) -> tuple[Tensor, tuple[tuple[Tensor, Tensor], ...]]:
        with torch.no_grad():
            d = 1 - torch.tanh(self.w * z + px) ** 2  # df/dpx
            lam = adjoint(d * self.w)
            dpx = torch.mul(d, lam, out=out)
            grad_w = (dpx * z).sum(tuple(range(z.dim() - 1)))
        return dpx, ((self.w, grad_w),)


class Rotor(Cell[PairState]):
    """A 2x2-block cell: ``(h, c)_t = tanh(M (h, c)_{t-1} + px)`` with one 2x2 ``M`` per unit."""

    forms = frozenset({Form.DIAGONAL_JACOBIAN})
    state_type = PairState
    newton_block = 2

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = self.output_size = hidden_size
        self.projected_size = 2 * hidden_size
        self.lin = nn.Linear(input_size, 2 * hidden_size)
        self.m = nn.Parameter(0.6 * torch.randn(hidden_size, 2, 2))

    def state_spec(self) -> tuple[StateField, ...]:
        return (StateField("h", (self.hidden_size,)), StateField("c", (self.hidden_size,)))

    def project(self, x: Tensor) -> Tensor:
        return self.lin(x)

    def recur(self, px_t: Tensor, state: PairState) -> tuple[Tensor, PairState]:
        z = self.recur_parallel(px_t, self.pack_state(state))
        return z[..., 0], self.unpack_state(z)

    def pack_state(self, state: PairState) -> Tensor:
        return torch.stack((state.h, state.c), -1)

    def unpack_state(self, z: Tensor) -> PairState:
        return PairState(z[..., 0], z[..., 1])

    def _pre(self, px: Tensor, z: Tensor) -> Tensor:
        return (self.m * z.unsqueeze(-2)).sum(-1) + px.unflatten(-1, (self.hidden_size, 2))

    def recur_parallel(self, px: Tensor, z: Tensor) -> Tensor:
        return torch.tanh(self._pre(px, z))

    def jacobian_diag(self, px: Tensor, z: Tensor) -> Tensor:
        d = 1 - torch.tanh(self._pre(px, z)) ** 2
        return d.unsqueeze(-1) * self.m

    def readout_parallel(self, px: Tensor, z: Tensor) -> Tensor:
        return z[..., 0]


def _run(
    cell: Cell[Any], x: Tensor, state: Any, resets: Tensor | None, backend: str
) -> list[Tensor]:
    cell = copy.deepcopy(cell)
    x = x.detach().clone().requires_grad_(True)
    leaves = [s.detach().clone().requires_grad_(True) for s in state]
    y, final = cell(x, cell.state_type._make(leaves), backend=backend, resets=resets)
    gen = torch.Generator().manual_seed(7)
    loss = (y.double() * torch.randn(y.shape, generator=gen, dtype=torch.float64)).sum()
    for s in final:
        loss = loss + (s.double() * torch.randn(s.shape, generator=gen, dtype=torch.float64)).sum()
    loss.backward()
    grads = [x.grad, *(s.grad for s in leaves), *(p.grad for p in cell.parameters())]
    return [y.detach(), *(s.detach() for s in final), *(g for g in grads if g is not None)]


def _cells() -> list[Cell[Any]]:
    torch.manual_seed(0)
    return [TanhDiag(3, 5), Rotor(3, 4), TanhDiagFused(3, 5)]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["diagonal", "block2", "diagonal-fused"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("use_resets", [False, True], ids=["", "resets"])
@pytest.mark.parametrize("tile", [None, 16], ids=["one-tile", "tiles"])
def test_newton_matches_sequential(
    index: int, dtype: torch.dtype, use_resets: bool, tile: int | None
) -> None:
    cell = _cells()[index].double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 67, 3, generator=gen, dtype=torch.float64)
    state = [
        0.5 * torch.randn(3, cell.hidden_size, generator=gen, dtype=torch.float64)
        for _ in cell.state_spec()
    ]
    resets = (torch.rand(3, 67, generator=gen) < 0.1) if use_resets else None
    if use_resets:
        assert resets is not None
        resets[:, 16] = resets[:, 0] = True  # at a tile's first step, and the sequence's
    want = _run(cell, x, state, resets, "reference")
    with newton_options(tile=tile):
        got = _run(cell.to(dtype), x.to(dtype), [s.to(dtype) for s in state], resets, "newton")
    info = last_solve_info()
    assert info is not None and info.converged and not info.fell_back
    assert info.iterations >= 1 and info.residual <= info.tol
    assert info.block == cell.newton_block  # type: ignore[attr-defined]
    assert info.tiles == (5 if tile else 1)  # 67 steps: four of 16 and one of 3
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_close(f"newton vs reference [{i}]", g, w, tol)


def test_fused_cell_uses_its_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel lends the scratch, asks for the Jacobian only when it needs one (not for
    the initial guess nor the last update), and differentiates with the analytic product."""
    cell = _cells()[2].double()
    calls: list[str] = []
    newton = TanhDiagFused.recur_parallel_newton
    vjp = TanhDiagFused.recur_parallel_vjp

    def spy_newton(self: Any, px: Tensor, z: Tensor, *, scratch: Tensor | None = None) -> Any:
        assert scratch is not None and scratch.shape[0] == 3
        f, jacobian = newton(self, px, z, scratch=scratch)

        def spy_jacobian() -> Tensor:
            calls.append("J")
            return jacobian()

        calls.append("f")
        return f, spy_jacobian

    def spy_vjp(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append("vjp")
        return vjp(self, *args, **kwargs)

    monkeypatch.setattr(TanhDiagFused, "recur_parallel_newton", spy_newton)
    monkeypatch.setattr(TanhDiagFused, "recur_parallel_vjp", spy_vjp)
    slow = TanhDiagFused.recur_parallel

    def spy_slow(self: Any, px: Tensor, z: Tensor) -> Tensor:
        calls.append("slow")
        return slow(self, px, z)

    monkeypatch.setattr(TanhDiagFused, "recur_parallel", spy_slow)
    x = torch.randn(2, 40, 3, dtype=torch.float64, requires_grad=True)
    y, _ = cell(x, backend="newton")
    info = last_solve_info()
    assert info is not None and info.converged and info.iterations >= 2
    # the guess, then one evaluation per update; a Jacobian for every update but the last
    assert calls.count("f") == 1 + info.iterations
    assert calls.count("J") == info.iterations - 1
    y.sum().backward()
    assert calls[-1] == "vjp" and x.grad is not None and "slow" not in calls


def test_tile_option_is_checked() -> None:
    with pytest.raises(ValueError, match="tile"), newton_options(tile=0):
        pass


@pytest.mark.parametrize("tol", [-1.0, 0.0, float("nan"), float("inf")])
def test_tolerance_option_is_checked(tol: float) -> None:
    with pytest.raises(ValueError, match="tol must be"), newton_options(tol=tol):
        pass


def test_auto_remembers_a_cell_that_does_not_converge() -> None:
    """After a solve fails for a cell and shape, ``auto`` runs that cell and shape on the loop
    (no 30 iterations plus a fallback on every call); other shapes and cells keep Newton."""
    forget_failures()
    cell = TanhDiag(3, 5, scale=3.0).double()
    other = TanhDiag(3, 5, scale=3.0).double()
    x = 2 * torch.randn(2, 200, 3, dtype=torch.float64)
    call = KernelCall(cell, x, None, None, needs_grad=False)
    assert select(call).backend == "newton"
    with newton_options(max_iters=1), pytest.warns(RuntimeWarning, match="from now on"):
        cell(x)
    assert failed_before(call)
    assert select(call).backend == "reference"
    longer = KernelCall(cell, torch.randn(2, 300, 3, dtype=torch.float64), None, None, False)
    assert select(longer).backend == "newton"
    assert select(KernelCall(other, x, None, None, False)).backend == "newton"
    forget_failures()
    assert select(call).backend == "newton"


def test_auto_weighs_the_lanes_by_the_iterations_a_solve_needed() -> None:
    """On CPU ``auto`` keeps Newton while ``lanes * iterations`` fits the cell's work budget
    (``newton_auto_work``, default 8192): before any solve it assumes 4 iterations; after a
    solve it uses the iterations that solve needed, so a cell that converges slowly at a shape
    (IndRNN with recurrent weights near 1) goes back to the loop there."""
    forget_failures()
    torch.manual_seed(0)
    cell = TanhDiag(3, 5, scale=1.5).double()  # converges in 8 updates from this seed
    x = 2 * torch.randn(2, 200, 3, dtype=torch.float64)
    call = KernelCall(cell, x, None, None, needs_grad=False)
    assert auto_work(cell) == 8192 and iterations_before(call) is None
    cell.newton_auto_work = 2 * 5 * 4  # type: ignore[attr-defined]  # lanes 10, 4 iterations
    assert select(call).backend == "newton"
    with torch.no_grad():
        cell(x)
    info = last_solve_info()
    assert info is not None and info.converged and info.iterations > 4
    assert iterations_before(call) == info.iterations
    assert select(call).backend == "reference"
    other_shape = KernelCall(cell, x[:1], None, None, needs_grad=False)
    assert select(other_shape).backend == "newton"
    cell.newton_auto_work = 10 * info.iterations  # type: ignore[attr-defined]
    assert select(call).backend == "newton"
    forget_failures()
    assert iterations_before(call) is None
    # the default budget keeps the measured lane rule: 2048 lanes yes, 4096 no
    plain = TanhDiag(3, 256)
    wide = KernelCall(plain, torch.randn(8, 256, 3), None, None, needs_grad=True)
    wider = KernelCall(plain, torch.randn(16, 256, 3), None, None, needs_grad=True)
    assert select(wide).backend == "newton" and select(wider).backend == "reference"


def test_a_cell_can_keep_auto_off_a_backend() -> None:
    cell = _cells()[0]
    call = KernelCall(cell, torch.randn(1, 4096, 3), None, None, needs_grad=True)
    assert select(call).backend == "newton"
    cell.set_backend_priority("newton", Priority.BELOW_REFERENCE)
    assert select(call).backend == "reference"
    assert copy.deepcopy(cell).backend_priority == {"newton": Priority.BELOW_REFERENCE}
    with torch.no_grad():  # a named backend still runs: Newton's solve reports itself
        cell(call.x, backend="newton")
    info = last_solve_info()
    assert info is not None and info.converged and not info.fell_back
    cell.set_backend_priority("newton", None)
    assert select(call).backend == "newton"


def test_solve_info_reports_iterations() -> None:
    cell = _cells()[0].double()
    x = torch.randn(2, 200, 3, dtype=torch.float64)
    with torch.no_grad():
        cell(x, backend="newton")
    info = last_solve_info()
    assert info is not None
    assert info.converged and 1 <= info.iterations < info.max_iters
    with newton_options(tol=1e-14), torch.no_grad():
        cell(x, backend="newton")
    tighter = last_solve_info()
    assert tighter is not None and tighter.tol == 1e-14
    assert tighter.iterations >= info.iterations


def test_nonconvergence_warns_and_falls_back() -> None:
    cell = TanhDiag(3, 5, scale=3.0).double()  # strongly nonlinear: one Newton step is not enough
    x = 2 * torch.randn(2, 50, 3, dtype=torch.float64)
    want, _ = cell(x, backend="reference")
    with newton_options(max_iters=1), pytest.warns(RuntimeWarning, match="no convergence"):
        got, _ = cell(x, backend="newton")
    info = last_solve_info()
    assert info is not None and info.fell_back and not info.converged
    assert info.iterations == 1 and info.residual > info.tol
    assert_close("fallback equals the reference", got, want, 1e-12)


def test_auto_picks_newton_only_for_long_sequences() -> None:
    cell = _cells()[0]
    short = KernelCall(cell, torch.randn(1, 8, 3), None, None, needs_grad=True)
    long = KernelCall(cell, torch.randn(1, 4096, 3), None, None, needs_grad=True)
    assert select(short).backend == "reference"
    assert select(long).backend == "newton"


@pytest.mark.parametrize("time", [1, 5, 17, 100, 1000])
def test_block2_scan_matches_sequential(time: int) -> None:
    gen = torch.Generator().manual_seed(time)
    a = 0.7 * torch.randn(2, time, 3, 2, 2, generator=gen, dtype=torch.float64)
    b = torch.randn(2, time, 3, 2, generator=gen, dtype=torch.float64)
    h0 = torch.randn(2, 3, 2, generator=gen, dtype=torch.float64)
    for init in (None, h0):
        want = block2_scan_sequential(a, b, init)
        for chunk in (None, 3):
            got = block2_scan(a, b, init, chunk=chunk)
            assert_close(f"block2 scan T={time}", got, want, 1e-12)


def test_block2_scan_long_fp32() -> None:
    gen = torch.Generator().manual_seed(0)
    a = 0.7 * torch.randn(1, 20000, 2, 2, 2, generator=gen, dtype=torch.float64)
    b = torch.randn(1, 20000, 2, 2, generator=gen, dtype=torch.float64)
    want = block2_scan_sequential(a, b)
    got = block2_scan(a.float(), b.float())
    assert_close("block2 scan fp32 long", got, want, 1e-5)


def test_unsupported_cell_is_reported() -> None:
    from rnnkit.core.errors import BackendUnavailableError

    class NoProtocol(TanhDiag):
        jacobian_diag = None  # type: ignore[assignment]

    with pytest.raises(BackendUnavailableError, match="jacobian_diag"):
        NoProtocol(3, 4)(torch.randn(1, 3, 3), backend="newton")


def test_no_warning_when_converged() -> None:
    cell = _cells()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cell(torch.randn(2, 30, 3), backend="newton")
