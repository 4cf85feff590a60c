"""ParaGRU's Newton-path methods (fused step and Jacobian, analytic vector-Jacobian product)
against autograd through its differentiable ``recur_parallel``, in float64."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from rnnkit.core.testing.numerics import assert_close
from rnnkit.models.cells import ParaGRU

SHAPE = (3, 11)  # (B, T)


def _setup(hidden: int = 7) -> tuple[ParaGRU, Tensor, Tensor]:
    torch.manual_seed(0)
    cell = ParaGRU(5, hidden).double()
    with torch.no_grad():
        cell.recurrent.mul_(1.5)  # gates away from the symmetric point
    px = torch.randn(*SHAPE, 3 * hidden, dtype=torch.float64)
    h = torch.randn(*SHAPE, hidden, dtype=torch.float64)
    return cell, px, h


def _autograd_jacobian(cell: ParaGRU, px: Tensor, h: Tensor) -> Tensor:
    hh = h.clone().requires_grad_(True)
    (jac,) = torch.autograd.grad(cell.recur_parallel(px, hh).sum(), hh)
    return jac  # diagonal Jacobian: each output depends on its own unit only


@pytest.mark.parametrize("with_scratch", [False, True])
def test_step_and_jacobian_match_autograd(with_scratch: bool) -> None:
    cell, px, h = _setup()
    scratch = torch.full((cell.newton_scratch, *h.shape), float("nan"), dtype=torch.float64)
    f, jacobian = cell.recur_parallel_newton(px, h, scratch=scratch if with_scratch else None)
    assert_close("f", f, cell.recur_parallel(px, h), 1e-13)
    f_copy = f.clone()
    f.fill_(float("nan"))  # the kernel overwrites f with the residual: J must not need it
    assert_close("J", jacobian(), _autograd_jacobian(cell, px, h), 1e-13)
    both = cell.recur_parallel_with_jacobian(px, h)
    assert_close("with_jacobian f", both[0], f_copy, 1e-15)
    assert_close("with_jacobian J", both[1], cell.jacobian_diag(px, h), 1e-15)


@pytest.mark.parametrize("with_scratch", [False, True])
def test_vjp_matches_autograd(with_scratch: bool) -> None:
    cell, px, h = _setup()
    lam = torch.randn_like(h)
    seen: list[Tensor] = []

    def adjoint(jac: Tensor) -> Tensor:
        seen.append(jac.clone())
        return lam

    scratch = torch.full((cell.newton_scratch, *h.shape), float("nan"), dtype=torch.float64)
    out = torch.full((SHAPE[0], SHAPE[1] + 4, px.shape[-1]), float("nan"), dtype=torch.float64)
    kwargs = {"scratch": scratch, "out": out[:, 2:-2]} if with_scratch else {}
    dpx, pairs = cell.recur_parallel_vjp(px, h, adjoint, **kwargs)
    if with_scratch:
        assert dpx.data_ptr() == out[:, 2:-2].data_ptr()  # written in place, any strides
        assert not torch.isnan(out[:, 2:-2]).any() and torch.isnan(out[:, :2]).all()
    pxr = px.clone().requires_grad_(True)
    want_px, want_rec = torch.autograd.grad(cell.recur_parallel(pxr, h), (pxr, cell.recurrent), lam)
    assert len(seen) == 1
    assert_close("J passed to adjoint", seen[0], _autograd_jacobian(cell, px, h), 1e-13)
    assert_close("dpx", dpx, want_px, 1e-13)
    ((param, grad),) = pairs
    assert param is cell.recurrent
    assert_close("d recurrent", grad, want_rec, 1e-13)


def test_small_scratch_is_refused() -> None:
    cell, px, h = _setup()
    with pytest.raises(ValueError, match="scratch"):
        cell.recur_parallel_newton(px, h, scratch=torch.empty(2, *h.shape, dtype=torch.float64))
