"""The Newton solver for the diagonal-Jacobian form, its adjoint backward and the kernel.

See ``docs/kernels-newton.md``. The cell protocol (duck typed; documented there):
``newton_block`` (1 or 2), ``pack_state``, ``unpack_state``, ``recur_parallel``,
``jacobian_diag``, optionally ``recur_parallel_with_jacobian``, and ``readout_parallel``.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, cast

import torch
from torch import Tensor

from rnnkit.core.dispatch import KernelCall
from rnnkit.core.reference import reference_forward
from rnnkit.kernels.newton._block import block2_scan
from rnnkit.kernels.scan import linear_scan

PROTOCOL: tuple[str, ...] = (
    "pack_state",
    "unpack_state",
    "recur_parallel",
    "jacobian_diag",
    "readout_parallel",
)

#: default absolute tolerance on ``max |f(z_{t-1}, x_t) - z_t|`` per compute dtype.
DEFAULT_TOL: dict[torch.dtype, float] = {torch.float64: 1e-9, torch.float32: 1e-4}
DEFAULT_MAX_ITERS = 30


@dataclass(frozen=True)
class SolveInfo:
    """What the last Newton solve did.

    Attributes:
        iterations: Newton updates applied.
        residual: ``max |f(z_{t-1}, x_t) - z_t|`` at the last iterate checked, i.e. before the
            final update (which makes it about quadratically smaller); ``nan`` if it diverged.
        converged: whether ``residual <= tol`` within ``max_iters``.
        tol: the tolerance used.
        max_iters: the iteration cap used.
        block: the Jacobian block size (1 diagonal, 2 for 2x2 blocks).
        fell_back: whether the kernel then ran the sequential reference instead.
    """

    iterations: int
    residual: float
    converged: bool
    tol: float
    max_iters: int
    block: int
    fell_back: bool = False


_state = threading.local()


def last_solve_info() -> SolveInfo | None:
    """The :class:`SolveInfo` of the most recent Newton solve in this thread (or ``None``)."""
    info: SolveInfo | None = getattr(_state, "info", None)
    return info


def _set_info(info: SolveInfo) -> None:
    _state.info = info


def _options() -> tuple[float | None, int]:
    return getattr(_state, "tol", None), getattr(_state, "max_iters", DEFAULT_MAX_ITERS)


@contextmanager
def newton_options(*, tol: float | None = None, max_iters: int | None = None) -> Iterator[None]:
    """Set the Newton tolerance and iteration cap for the calls made inside the block.

    Args:
        tol: absolute tolerance on the residual (``None``: :data:`DEFAULT_TOL` per dtype).
        max_iters: the most Newton updates before giving up (default 30).
    """
    if max_iters is not None and max_iters < 1:
        raise ValueError(f"max_iters must be >= 1, got {max_iters}")
    old = _options()
    _state.tol = tol
    _state.max_iters = max_iters if max_iters is not None else old[1]
    try:
        yield
    finally:
        _state.tol, _state.max_iters = old


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays; float32, float16 and bfloat16 solve in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _shift(z: Tensor, z0: Tensor, resets: Tensor | None, z_init: Tensor | None) -> Tensor:
    """The previous states ``z_{t-1}``: ``(B, T, *S)`` from ``z: (B, T, *S)``, ``z0: (B, *S)``;
    where ``resets`` is true, ``z_init``."""
    zp = torch.cat((z0.unsqueeze(1), z[:, :-1]), 1)
    if resets is not None and z_init is not None:
        mask = resets.view(*resets.shape, *([1] * (zp.dim() - 2)))
        zp = torch.where(mask, z_init.unsqueeze(1), zp)
    return zp


def _zero_at_resets(jac: Tensor, resets: Tensor | None) -> Tensor:
    if resets is None:
        return jac
    mask = resets.view(*resets.shape, *([1] * (jac.dim() - 2)))
    return jac.masked_fill(mask, 0.0)


def _recur_and_jacobian(cell: Any, px: Tensor, zp: Tensor) -> tuple[Tensor, Tensor]:
    both = getattr(cell, "recur_parallel_with_jacobian", None)
    if both is not None:
        out: tuple[Tensor, Tensor] = both(px, zp)
        return out
    return cell.recur_parallel(px, zp), cell.jacobian_diag(px, zp)


def _linear_solve(jac: Tensor, rhs: Tensor, block: int) -> Tensor:
    """``d_t = J_t d_{t-1} + rhs_t`` from ``d_{-1} = 0``: diagonal or 2x2 blocks."""
    if block == 1:
        batch, time = rhs.shape[0], rhs.shape[1]
        d, _ = linear_scan(jac.reshape(batch, time, -1), rhs.reshape(batch, time, -1))
        return d.reshape(rhs.shape)
    return block2_scan(jac, rhs)


def newton_solve(
    cell: Any,
    px: Tensor,
    z0: Tensor,
    *,
    resets: Tensor | None = None,
    z_init: Tensor | None = None,
    tol: float | None = None,
    max_iters: int = DEFAULT_MAX_ITERS,
) -> tuple[Tensor, SolveInfo]:
    """All states of ``z_t = f(z_{t-1}, x_t)`` by Newton's method (no autograd).

    Args:
        cell: a cell with the diagonal-Jacobian protocol.
        px: ``(B, T, P)`` projected inputs (the solve runs in ``px``'s dtype).
        z0: ``(B, *S)`` packed initial state.
        resets: bool ``(B, T)``: the state entering step ``t`` is ``z_init``.
        z_init: ``(B, *S)`` packed ``init_state`` (needed with ``resets``).
        tol: absolute tolerance on ``max |f(z_{t-1}) - z_t|``.
        max_iters: the most Newton updates.

    Returns:
        ``z: (B, T, *S)`` and the :class:`SolveInfo`. Each iteration solves
        ``d_t = J_t d_{t-1} + (f(z_{t-1}, x_t) - z_t)`` by one scan and sets ``z += d``;
        the initial guess is ``z_t = f(0, x_t)`` (``f(z0, x_0)`` at ``t = 0``).
    """
    block = int(getattr(cell, "newton_block", 1))
    if tol is None:
        tol = DEFAULT_TOL.get(px.dtype, 1e-4)
    with torch.no_grad():
        zp = torch.zeros((*px.shape[:2], *z0.shape[1:]), dtype=px.dtype, device=px.device)
        zp[:, 0] = z0
        if resets is not None and z_init is not None:
            zp = torch.where(
                resets.view(*resets.shape, *([1] * (zp.dim() - 2))), z_init.unsqueeze(1), zp
            )
        z = cell.recur_parallel(px, zp)
        residual = float("inf")
        iterations = 0
        converged = False
        while iterations < max_iters:
            zp = _shift(z, z0, resets, z_init)
            fz, jac = _recur_and_jacobian(cell, px, zp)
            rhs = fz - z
            residual = rhs.abs().max().item() if rhs.numel() else 0.0
            if residual != residual or residual == float("inf"):
                residual = float("nan")
                break
            z = z + _linear_solve(_zero_at_resets(jac, resets), rhs, block)
            iterations += 1
            if residual <= tol:
                converged = True
                break
    return z, SolveInfo(iterations, residual, converged, tol, max_iters, block)


class _NewtonAdjoint(torch.autograd.Function):
    """Identity on the solution ``z`` whose backward is the adjoint of the recurrence."""

    @staticmethod
    def forward(
        ctx: Any,
        z: Tensor,
        px: Tensor,
        z0: Tensor,
        cell: Any,
        resets: Tensor | None,
        z_init: Tensor | None,
        *params: Tensor,
    ) -> Tensor:
        ctx.save_for_backward(z, px, z0)
        ctx.cell, ctx.resets, ctx.z_init, ctx.params = cell, resets, z_init, params
        return z.clone()

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        (dz,) = grads
        z, px, z0 = ctx.saved_tensors
        cell, resets, z_init, params = ctx.cell, ctx.resets, ctx.z_init, ctx.params
        block = int(getattr(cell, "newton_block", 1))
        needs = ctx.needs_input_grad
        with torch.no_grad():
            jac = _zero_at_resets(cell.jacobian_diag(px, _shift(z, z0, resets, z_init)), resets)
            # adjoint: lam_t = dz_t + J_{t+1}^T lam_{t+1}, a scan in reversed time
            shifted = torch.cat((jac[:, 1:], torch.zeros_like(jac[:, :1])), 1)
            if block == 2:
                shifted = shifted.transpose(-1, -2)
            lam = _linear_solve(shifted.flip(1), dz.to(z.dtype).flip(1), block).flip(1)
        with torch.enable_grad():
            px_ = px.detach().requires_grad_(needs[1])
            z0_ = z0.detach().requires_grad_(needs[2])
            out = cell.recur_parallel(px_, _shift(z.detach(), z0_, resets, z_init))
            wrt = [px_, z0_, *params]
            mask = [needs[1], needs[2], *needs[6:]]
            inputs = [t for t, m in zip(wrt, mask, strict=True) if m]
            got = list(torch.autograd.grad(out, inputs, lam, allow_unused=True)) if inputs else []
        result: list[Tensor | None] = [None]
        for t, m in zip(wrt, mask, strict=True):
            g = got.pop(0) if m else None
            if m and g is None:
                g = torch.zeros_like(t)
            result.append(g)
            if len(result) == 3:
                result += [None, None, None]
        return tuple(result)


def newton_forward(call: KernelCall) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The ``newton`` kernel: solve by Newton, differentiate by one adjoint scan.

    Falls back to the sequential reference with a warning when the solve does not converge.
    """
    cell: Any = call.cell
    x = call.x
    batch, time = x.shape[0], x.shape[1]
    state: Any = call.state
    if state is None:
        state = cell.init_state(batch, device=x.device, dtype=x.dtype)
    if time == 0:
        return x.new_empty(batch, 0, cell.output_size), state
    cd = compute_dtype(x.dtype)
    px = cell.project(x).to(cd)
    z0 = cell.pack_state(state).to(cd)
    z_init = None
    if call.resets is not None:
        z_init = cell.pack_state(cell.init_state(batch, device=x.device, dtype=cd)).to(cd)
    tol, max_iters = _options()
    z, info = newton_solve(
        cell,
        px.detach(),
        z0.detach(),
        resets=call.resets,
        z_init=z_init,
        tol=tol,
        max_iters=max_iters,
    )
    if not info.converged:
        _set_info(replace(info, fell_back=True))
        warnings.warn(
            f"newton: no convergence for {type(cell).__name__} (B={batch}, T={time}) after "
            f"{info.iterations} iterations, residual {info.residual:.3e} > tol {info.tol:.1e}; "
            "running the sequential reference instead",
            RuntimeWarning,
            stacklevel=2,
        )
        return reference_forward(call)
    _set_info(info)
    if call.needs_grad:
        params = tuple(p for p in cell.parameters() if p.requires_grad)
        z = cast(Any, _NewtonAdjoint).apply(z, px, z0, cell, call.resets, z_init, *params)
    y = cell.readout_parallel(px, z).to(x.dtype)
    final = cell.unpack_state(z[:, -1])
    return y, type(final)._make(f.to(s.dtype) for f, s in zip(final, state, strict=True))
