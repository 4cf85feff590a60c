"""The ``newton`` kernel: the solve as an autograd node whose backward is one adjoint scan.

No differentiation through the iterations. At the solution ``Z`` the backward runs, tile by
tile from the end (the tiles of the forward; see :mod:`rnnkit.kernels.newton._solve`),

    lam_t = dL/dz_t + J_{t+1}^T lam_{t+1}        (a reverse scan; ``lam`` carried between tiles)

and then the vector-Jacobian product of the step ``f`` with ``lam`` gives the gradients of the
projected inputs and the parameters (and ``J_t^T lam_t`` summed over the resets, where the
state entering step ``t`` is ``z_init``, gives the gradient of ``z_init``: a learnable initial
state's): the cell's analytic ``recur_parallel_vjp`` when it has
one (it computes ``J`` and the product from one evaluation of its gates), else one
``torch.autograd.grad`` through ``recur_parallel`` per tile.
"""

from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass, replace
from typing import Any, cast

import torch
from torch import Tensor

from rnnkit.core.dispatch import KernelCall
from rnnkit.core.reference import reference_forward
from rnnkit.kernels.newton._solve import (
    SolveInfo,
    TileBuffers,
    compute_dtype,
    newton_solve,
    options,
    reset_mask,
    scan_time_major,
    set_info,
    tile_steps,
    tiles,
)


@dataclass
class _Config:
    """The solve's settings, and where the autograd node leaves its :class:`SolveInfo`."""

    tol: float | None
    max_iters: int
    tile: int | None
    info: SolveInfo | None = None


def _adjoint_scan(jac: Tensor, seed: Tensor, carry: Tensor, block: int, out: Tensor) -> Tensor:
    """``lam_t = seed_t + J_{t+1}^T lam_{t+1}`` over one tile, ``lam_{L-1} = seed_{L-1} + carry``.

    Time-major: ``jac: (L, B, *S[, 2])``, ``seed: (L, B, *S)``, ``carry: (B, *S)`` (``J^T lam``
    of the step after the tile) ``-> lam: (L, B, *S)``, written into ``out``.
    """
    torch.add(seed[-1], carry, out=out[-1])
    if seed.shape[0] > 1:
        gates = jac[1:] if block == 1 else jac[1:].transpose(-1, -2)
        scan_time_major(gates, seed[:-1], out[-1], out[:-1], block=block, reverse=True)
    return out


def _transpose_times(jac: Tensor, lam: Tensor, block: int) -> Tensor:
    """``J^T lam`` at one step: ``(B, *S[, 2]), (B, *S) -> (B, *S)``."""
    if block == 1:
        return jac * lam
    return torch.einsum("...ij,...i->...j", jac, lam)


class _TileAdjoint:
    """The ``adjoint`` callback handed to the cell for one tile: zeroes ``J`` at resets, runs
    the adjoint scan, and keeps ``J`` and ``lam`` for the carry to the previous tile; with
    ``restart_grad``, also the gradient of the state the resets restart from (``z_init``)."""

    def __init__(
        self,
        seed: Tensor,
        carry: Tensor,
        resets: Tensor | None,
        span: tuple[int, int],
        block: int,
        out: Tensor,
        restart_grad: bool = False,
    ) -> None:
        self.seed, self.carry, self.resets, self.span = seed, carry, resets, span
        self.block, self.out = block, out
        self.jac: Tensor | None = None
        self.lam: Tensor | None = None
        self.want_restart = restart_grad and resets is not None
        self.restart: Tensor | None = None

    def __call__(self, jac: Tensor) -> Tensor:
        mask = reset_mask(self.resets, self.span, jac.dim())
        self.jac = jac if mask is None else jac.masked_fill(mask, 0)
        self.lam = _adjoint_scan(self.jac, self.seed, self.carry, self.block, self.out)
        if self.want_restart:
            # J_t^T lam_t is the gradient of the state entering step t: z_init where reset
            into = _transpose_times(jac, self.lam, self.block)
            where = reset_mask(self.resets, self.span, into.dim())
            assert where is not None
            self.restart = torch.where(where, into, 0.0).sum(0)
        return self.lam

    def carry_out(self) -> Tensor:
        """``J_start^T lam_start``: the carry into the tile before (``dL/dz0`` for the first)."""
        assert self.jac is not None and self.lam is not None, "the cell never called adjoint"
        return _transpose_times(self.jac[0], self.lam[0], self.block)


class _NewtonSolve(torch.autograd.Function):
    """``(z: (B, T, *S), z_last: (B, *S))`` from ``px: (B, T, P)`` and ``z0: (B, *S)``."""

    @staticmethod
    def forward(
        ctx: Any,
        px: Tensor,
        z0: Tensor,
        cell: Any,
        resets: Tensor | None,
        z_init: Tensor | None,
        config: _Config,
        *params: Tensor,
    ) -> tuple[Tensor, Tensor]:
        z, info = newton_solve(
            cell,
            px,
            z0,
            resets=resets,
            z_init=z_init,
            tol=config.tol,
            max_iters=config.max_iters,
            tile=config.tile,
        )
        config.info = info
        ctx.save_for_backward(z, px, z0)
        ctx.cell, ctx.resets, ctx.z_init, ctx.params = cell, resets, z_init, params
        ctx.steps = tile_steps(config.tile, z)
        return z, z[:, -1].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dz: Tensor, dz_last: Tensor) -> tuple[Tensor | None, ...]:
        z, px, z0 = ctx.saved_tensors
        cell, resets, z_init, params = ctx.cell, ctx.resets, ctx.z_init, ctx.params
        block = int(getattr(cell, "newton_block", 1))
        need_px, need_z0 = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_init = ctx.needs_input_grad[4]
        d_init: Tensor | None = None
        need_params = ctx.needs_input_grad[6:]
        dz, carry = dz.to(z.dtype), dz_last.to(z.dtype)
        dpx = torch.empty_like(px) if need_px else None
        grads: list[Tensor | None] = [None] * len(params)
        index = {id(p): i for i, p in enumerate(params)}
        vjp = getattr(cell, "recur_parallel_vjp", None)
        steps = ctx.steps
        buffers = TileBuffers(cell, px, z0, steps)
        scratch_all = buffers.scratch if vjp is not None else None
        lam_all = torch.empty_like(buffers.work)
        for start, stop in reversed(tiles(z.shape[1], steps)):
            span = (start, stop)
            pt, seed, scratch = buffers.load(px, span)
            scratch = scratch if scratch_all is not None else None
            seed.copy_(dz[:, start:stop].transpose(0, 1))
            states = buffers.states[: stop - start + 1]
            states[0] = z0 if start == 0 else z[:, start - 1]
            states[1:] = z[:, start:stop].transpose(0, 1)
            mask = reset_mask(resets, span, states.dim())
            zp = torch.where(mask, z_init, states[:-1]) if mask is not None else states[:-1]
            adjoint = _TileAdjoint(
                seed, carry, resets, span, block, lam_all[: stop - start], need_init
            )
            with torch.no_grad():
                dpx_t: Tensor | None
                out = dpx[:, start:stop].transpose(0, 1) if dpx is not None else None
                if vjp is not None:
                    if scratch is None:
                        dpx_t, pairs = vjp(pt, zp, adjoint)
                    else:
                        dpx_t, pairs = vjp(pt, zp, adjoint, scratch=scratch, out=out)
                    found = [(index.get(id(p)), g) for p, g in pairs]
                else:
                    dpx_t, found = _autograd_vjp(cell, pt, zp, adjoint, params, need_px)
                for i, g in found:
                    if i is not None and need_params[i]:
                        grads[i] = g if grads[i] is None else grads[i] + g
                if out is not None and dpx_t is not None and dpx_t.data_ptr() != out.data_ptr():
                    out.copy_(dpx_t)
                carry = adjoint.carry_out()
                if adjoint.restart is not None:
                    d_init = adjoint.restart if d_init is None else d_init + adjoint.restart
        out_params = [
            g.to(p.dtype) if g is not None else None for g, p in zip(grads, params, strict=True)
        ]
        if d_init is not None:
            d_init = d_init.to(z_init.dtype)
        return (dpx, carry if need_z0 else None, None, None, d_init, None, *out_params)


def _autograd_vjp(
    cell: Any,
    px: Tensor,
    zp: Tensor,
    adjoint: _TileAdjoint,
    params: tuple[Tensor, ...],
    need_px: bool,
) -> tuple[Tensor | None, list[tuple[int | None, Tensor]]]:
    """The generic vector-Jacobian product: ``J`` from ``jacobian_diag``, ``lam`` from the
    adjoint scan, then one ``autograd.grad`` through ``recur_parallel`` over the tile."""
    lam = adjoint(cell.jacobian_diag(px, zp))
    with torch.enable_grad():
        px_ = px.detach().requires_grad_(need_px)
        out = cell.recur_parallel(px_, zp.detach())
        wrt = ([px_] if need_px else []) + list(params)
        if not out.requires_grad:
            return None, []
        # allow_unused: None for a parameter the step does not use (e.g. the projection's)
        got: list[Tensor | None] = list(torch.autograd.grad(out, wrt, lam, allow_unused=True))
    dpx = got[0] if need_px else None
    rest = got[1:] if need_px else got
    return dpx, [(i, g) for i, g in enumerate(rest) if g is not None]


#: Call shapes ``(B, T, dtype, device type)`` per cell on which a solve did not converge:
#: ``auto`` runs those on the sequential loop afterwards instead of failing again each call.
_NOT_CONVERGED: weakref.WeakKeyDictionary[Any, set[tuple[int, int, torch.dtype, str]]] = (
    weakref.WeakKeyDictionary()
)


#: The Newton updates the last converged solve of a cell at a call shape needed: ``auto``
#: weighs them against the lanes (``B * hidden_size``) to judge whether Newton pays there.
_ITERATIONS: weakref.WeakKeyDictionary[Any, dict[tuple[int, int, torch.dtype, str], int]] = (
    weakref.WeakKeyDictionary()
)


def _shape_key(call: KernelCall) -> tuple[int, int, torch.dtype, str]:
    x = call.x
    return int(x.shape[0]), int(x.shape[1]), x.dtype, x.device.type


def failed_before(call: KernelCall) -> bool:
    """Whether a Newton solve of this cell at this call's shape, dtype and device did not
    converge earlier in this process."""
    return _shape_key(call) in _NOT_CONVERGED.get(call.cell, set())


def iterations_before(call: KernelCall) -> int | None:
    """The Newton updates the last converged solve of this cell at this call's shape, dtype and
    device needed in this process (``None`` if there was none)."""
    return _ITERATIONS.get(call.cell, {}).get(_shape_key(call))


def forget_failures() -> None:
    """Forget every recorded non-convergence and iteration count (``auto`` goes back to its
    prior estimate and tries Newton again)."""
    _NOT_CONVERGED.clear()
    _ITERATIONS.clear()


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
    tol, max_iters, tile = options()
    config = _Config(tol, max_iters, tile)
    if call.needs_grad:
        params = tuple(p for p in cell.parameters() if p.requires_grad)
        solve = cast(Any, _NewtonSolve).apply
        z, z_last = solve(px, z0, cell, call.resets, z_init, config, *params)
        info = config.info
        assert info is not None
    else:
        with torch.no_grad():
            z, info = newton_solve(
                cell,
                px,
                z0,
                resets=call.resets,
                z_init=z_init,
                tol=tol,
                max_iters=max_iters,
                tile=tile,
            )
        z_last = z[:, -1]
    if not info.converged:
        set_info(replace(info, fell_back=True))
        _NOT_CONVERGED.setdefault(cell, set()).add(_shape_key(call))
        warnings.warn(
            f"newton: no convergence for {type(cell).__name__} (B={batch}, T={time}) after "
            f"{info.iterations} iterations, residual {info.residual:.3e} > tol {info.tol:.1e}; "
            "running the sequential reference instead (backend='auto' uses it for this cell "
            "and shape from now on; rnnkit.kernels.newton.forget_failures() resets that)",
            RuntimeWarning,
            stacklevel=2,
        )
        return reference_forward(call)
    set_info(info)
    _ITERATIONS.setdefault(cell, {})[_shape_key(call)] = info.iterations
    y = cell.readout_parallel(px, z).to(x.dtype)
    final = cell.unpack_state(z_last)
    return y, type(final)._make(f.to(s.dtype) for f, s in zip(final, state, strict=True))
