"""The Newton solver for the diagonal-Jacobian form: options, diagnostics and the tiled solve.

See ``docs/kernels-newton.md``. The cell protocol (duck typed; documented there):
``newton_block`` (1 or 2), ``pack_state``, ``unpack_state``, ``recur_parallel``,
``jacobian_diag``, optionally ``recur_parallel_with_jacobian`` and ``recur_parallel_vjp``, and
``readout_parallel``.

On CPU the time axis is cut into tiles of a few hundred thousand state elements, solved one
after the other from the exact final state of the previous tile (ParaRNN's fused mode walks
its blocks the same way): every temporary of an iteration then stays in cache, where the
elementwise ops run about four times faster than on full ``(B, T, H)`` arrays, and the
allocator reuses the same few buffers instead of faulting in fresh pages for each. On GPUs the
whole sequence is one tile.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rnnkit.kernels.linear.scan import _native as scan_native
from rnnkit.kernels.linear.scan import _torch as scan_torch
from rnnkit.kernels.linear.scan import linear_scan
from rnnkit.kernels.newton._block import block2_scan

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
#: CPU tiles hold about this many state elements (``B * steps * state width``): 2 MiB per
#: fp32 array, so the dozen arrays an iteration touches stay in the last-level cache, while
#: each elementwise op is large enough that its dispatch cost (a few microseconds, more with
#: several threads) is small. ParaGRU at B=8, T=4096, H=256, forward+backward: tiles of
#: 2^17, 2^18, 2^19, 2^20 elements took 1095, 1031, 940, 971 ms with 2 threads (1401 and
#: 1399 ms for 2^17 and 2^19 with 1 thread).
TILE_ELEMENTS = 1 << 19
#: ... but at least this many steps per tile (narrow or single-row batches aside).
MIN_TILE_STEPS = 16


@dataclass(frozen=True)
class SolveInfo:
    """What the last Newton solve did.

    Attributes:
        iterations: Newton updates applied (the most any tile needed).
        residual: ``max |f(z_{t-1}, x_t) - z_t|`` at the last iterate checked, i.e. before the
            final update (which makes it about quadratically smaller), the largest over the
            tiles; ``nan`` if it diverged.
        converged: whether ``residual <= tol`` within ``max_iters`` (in every tile).
        tol: the tolerance used.
        max_iters: the iteration cap used (per tile).
        block: the Jacobian block size (1 diagonal, 2 for 2x2 blocks).
        fell_back: whether the kernel then ran the sequential reference instead.
        tiles: how many tiles the time axis was solved in (1: all steps at once).
    """

    iterations: int
    residual: float
    converged: bool
    tol: float
    max_iters: int
    block: int
    fell_back: bool = False
    tiles: int = 1


_state = threading.local()


def last_solve_info() -> SolveInfo | None:
    """The :class:`SolveInfo` of the most recent Newton solve in this thread (or ``None``)."""
    info: SolveInfo | None = getattr(_state, "info", None)
    return info


def set_info(info: SolveInfo) -> None:
    """Record ``info`` as this thread's last solve."""
    _state.info = info


def options() -> tuple[float | None, int, int | None]:
    """This thread's ``(tol, max_iters, tile)`` set by :func:`newton_options`."""
    return (
        getattr(_state, "tol", None),
        getattr(_state, "max_iters", DEFAULT_MAX_ITERS),
        getattr(_state, "tile", None),
    )


@contextmanager
def newton_options(
    *, tol: float | None = None, max_iters: int | None = None, tile: int | None = None
) -> Iterator[None]:
    """Set the Newton tolerance, iteration cap and tile length for the calls made inside.

    Args:
        tol: absolute tolerance on the residual (``None``: :data:`DEFAULT_TOL` per dtype).
        max_iters: the most Newton updates per tile before giving up (default 30).
        tile: steps per tile (``None``: automatic, about :data:`TILE_ELEMENTS` state elements
            on CPU and the whole sequence on GPUs; ``>= T``: one tile).
    """
    if tol is not None and not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a finite number > 0, got {tol}")
    if max_iters is not None and max_iters < 1:
        raise ValueError(f"max_iters must be >= 1, got {max_iters}")
    if tile is not None and tile < 1:
        raise ValueError(f"tile must be >= 1 (steps per tile), got {tile}")
    old = options()
    _state.tol = tol
    _state.max_iters = max_iters if max_iters is not None else old[1]
    _state.tile = tile
    try:
        yield
    finally:
        _state.tol, _state.max_iters, _state.tile = old


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays; float32, float16 and bfloat16 solve in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def tile_steps(tile: int | None, z: Tensor) -> int:
    """Steps per tile for states ``z: (B, T, *S)``: ``tile``, else automatic (see module)."""
    time = z.shape[1]
    if tile is not None:
        return max(1, min(tile, time))
    if z.device.type != "cpu" or time == 0:
        return max(1, time)
    per_step = max(1, z[:, 0].numel())
    return max(1, min(time, max(MIN_TILE_STEPS, TILE_ELEMENTS // per_step)))


def tiles(time: int, steps: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(time)`` in tiles of ``steps``."""
    return [(s, min(time, s + steps)) for s in range(0, time, steps)]


def reset_mask(resets: Tensor | None, span: tuple[int, int], dims: int) -> Tensor | None:
    """``resets[:, start:stop]`` time-major, ``(L, B, 1, ...)`` with ``dims`` dimensions."""
    if resets is None:
        return None
    r = resets[:, span[0] : span[1]].t()
    return r.reshape(*r.shape, *([1] * (dims - 2)))


def scratch_for(cell: Any, z: Tensor) -> Tensor | None:
    """A ``(cell.newton_scratch, *z.shape)`` buffer for the cell's scratch-taking methods
    (``recur_parallel_newton``, ``recur_parallel_vjp``), or ``None`` when it has none."""
    count = int(getattr(cell, "newton_scratch", 0) or 0)
    if count <= 0 or getattr(cell, "recur_parallel_newton", None) is None:
        return None
    return torch.empty((count, *z.shape), dtype=z.dtype, device=z.device)


def evaluate(
    cell: Any, px: Tensor, zp: Tensor, scratch: Tensor | None = None
) -> tuple[Tensor, Callable[[], Tensor]]:
    """``f(zp)`` now and ``J(zp)`` on demand, with the cell's fused methods when it has them.

    With ``scratch`` (see :func:`scratch_for`) both live in it, valid until its next use, and
    ``f`` may be overwritten.
    """
    lazy = getattr(cell, "recur_parallel_newton", None)
    if lazy is not None:
        out: tuple[Tensor, Callable[[], Tensor]] = (
            lazy(px, zp) if scratch is None else lazy(px, zp, scratch=scratch)
        )
        return out
    both = getattr(cell, "recur_parallel_with_jacobian", None)
    if both is not None:
        f, jac = both(px, zp)
        return f, lambda: jac
    return cell.recur_parallel(px, zp), lambda: cell.jacobian_diag(px, zp)


def scan_diag(
    a: Tensor, b: Tensor, h0: Tensor | None, *, reverse: bool = False, out: Tensor | None = None
) -> Tensor:
    """``h_t = a_t h_{t-1} + b_t`` (or from the end when ``reverse``): ``(B, L, W)`` each.

    On CPU straight into the native scan (one streaming pass, lanes in parallel) when it
    builds, else the chunked torch scan (either way no validation and no autograd node per
    tile); elsewhere through :func:`linear_scan` (its Triton kernels on CUDA).
    """
    batch, _, width = b.shape
    if h0 is None:
        h0 = torch.zeros((), dtype=b.dtype, device=b.device).expand(batch, width)
    if b.device.type == "cpu":
        if out is None:
            out = torch.empty_like(b)
        if scan_native.usable(b.device, b.dtype):
            scan_native.scan_into(a, b, h0, out, reverse=reverse)
        else:
            scan_torch.chunked_scan_into(a, b, h0, out, reverse=reverse)
        return out
    if reverse:
        h, _ = linear_scan(a.flip(1), b.flip(1), h0)
        h = h.flip(1)
    else:
        h, _ = linear_scan(a, b, h0)
    if out is None:
        return h
    return out.copy_(h)


def scan_time_major(
    a: Tensor, b: Tensor, h0: Tensor | None, out: Tensor, *, block: int, reverse: bool = False
) -> Tensor:
    """``h_t = A_t h_{t-1} + b_t`` over the leading (time) axis of ``(L, B, *S)`` tensors, into
    ``out``; ``A`` diagonal (``a: (L, B, *S)``) or 2x2 blocks (``a: (L, B, H, 2, 2)``).

    Time-major tiles give the scan contiguous ``(B, *S)`` slabs per step (whole cache lines
    over the batch) where batch-major ones give it one short row per batch element.
    """
    steps, batch = b.shape[0], b.shape[1]
    if block == 1:
        width = math.prod(b.shape[2:])  # explicit: an empty batch leaves -1 undetermined
        flat = out.view(steps, batch, width).transpose(0, 1)
        scan_diag(
            a.reshape(steps, batch, width).transpose(0, 1),
            b.reshape(steps, batch, width).transpose(0, 1),
            None if h0 is None else h0.reshape(batch, width),
            reverse=reverse,
            out=flat,
        )
        return out
    a_bm, b_bm = a.transpose(0, 1), b.transpose(0, 1)
    if reverse:
        h = block2_scan(a_bm.flip(1), b_bm.flip(1), h0).flip(1)
    else:
        h = block2_scan(a_bm, b_bm, h0)
    return out.copy_(h.transpose(0, 1))


def _max_abs(t: Tensor) -> float:
    """``max |t|`` in one pass with no temporary (``nan`` if ``t`` has a NaN)."""
    if t.numel() == 0:
        return 0.0
    lo, hi = torch.aminmax(t)
    return float(torch.maximum(hi, lo.neg()).item())


class TileBuffers:
    """Time-major buffers a solve (or a backward) reuses across its tiles of ``steps`` steps.

    ``px: (steps, B, P)`` the tile's projected inputs; ``states: (steps + 1, B, *S)``, whose
    row ``i`` holds ``z_{start + i - 1}`` (row 0 the state before the tile), so the tile's
    states and their previous states are the views ``states[1:]`` and ``states[:-1]``;
    ``work: (steps, B, *S)``; ``scratch``: the cell's (see :func:`scratch_for`).
    """

    def __init__(self, cell: Any, px: Tensor, z0: Tensor, steps: int) -> None:
        batch, state = px.shape[0], tuple(z0.shape[1:])
        self.px = px.new_empty((steps, batch, px.shape[2]))
        self.states = px.new_empty((steps + 1, batch, *state))
        self.work = px.new_empty((steps, batch, *state))
        self.scratch = scratch_for(cell, self.work)

    def load(self, px: Tensor, span: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor | None]:
        """Copy the tile's ``px`` in; return it, ``work`` and ``scratch`` cut to the tile."""
        steps = span[1] - span[0]
        pt = self.px[:steps]
        pt.copy_(px[:, span[0] : span[1]].transpose(0, 1))
        scratch = self.scratch[:, :steps] if self.scratch is not None else None
        return pt, self.work[:steps], scratch


def _prev(states: Tensor, mask: Tensor | None, z_init: Tensor | None) -> Tensor:
    """The previous states ``states[:-1]``, ``z_init`` where ``mask`` (resets) is true."""
    zp = states[:-1]
    if mask is not None and z_init is not None:
        zp = torch.where(mask, z_init, zp)
    return zp


def _solve_tile(
    cell: Any,
    px: Tensor,
    z: Tensor,
    span: tuple[int, int],
    carry: Tensor,
    resets: Tensor | None,
    z_init: Tensor | None,
    tol: float,
    max_iters: int,
    buffers: TileBuffers,
) -> tuple[int, float, bool]:
    """Newton on the tile ``[start, stop)`` from the exact state ``carry: (B, *S)`` before it;
    the solution is written into ``z[:, start:stop]``.

    Returns ``(updates, residual, converged)``; ``residual`` is ``nan`` on NaN or inf.
    """
    start, stop = span
    block = int(getattr(cell, "newton_block", 1))
    pt, work, scratch = buffers.load(px, span)
    states = buffers.states[: stop - start + 1]
    states[0] = carry
    zt = states[1:]
    mask = reset_mask(resets, span, states.dim())
    # initial guess: one step from a zero state (from the exact state at the tile's first step)
    work.zero_()
    work[0] = carry
    guess = torch.where(mask, z_init, work) if mask is not None and z_init is not None else work
    if scratch is None:
        zt.copy_(cell.recur_parallel(pt, guess))
    else:
        zt.copy_(evaluate(cell, pt, guess, scratch)[0])
    residual = float("inf")
    stale: Tensor | None = None
    for it in range(max_iters):
        fz, jacobian = evaluate(cell, pt, _prev(states, mask, z_init), scratch)
        # the fused results live in the scratch and may be overwritten; the cell's own may not
        rhs = torch.sub(fz, zt, out=fz if scratch is not None else None)
        residual = _max_abs(rhs)
        if residual != residual or residual == float("inf"):
            return it, float("nan"), False
        done = residual <= tol
        # The last update is a correction of about tol: the previous iterate's Jacobian is
        # accurate enough for it (the error it adds is the product of this update and the
        # previous one), so this iterate's Jacobian is not computed.
        if done and stale is not None:
            jac = stale
        else:
            jac = jacobian()
            jmask = reset_mask(resets, span, jac.dim())
            if jmask is not None:  # in place only on the scratch, never on the cell's tensors
                jac = (
                    jac.masked_fill_(jmask, 0) if scratch is not None else jac.masked_fill(jmask, 0)
                )
        zt.add_(scan_time_major(jac, rhs, None, work, block=block))
        if done:
            z[:, start:stop] = zt.transpose(0, 1)
            return it + 1, residual, True
        stale = jac
    return max_iters, residual, False


def newton_solve(
    cell: Any,
    px: Tensor,
    z0: Tensor,
    *,
    resets: Tensor | None = None,
    z_init: Tensor | None = None,
    tol: float | None = None,
    max_iters: int = DEFAULT_MAX_ITERS,
    tile: int | None = None,
) -> tuple[Tensor, SolveInfo]:
    """All states of ``z_t = f(z_{t-1}, x_t)`` by Newton's method (no autograd).

    Args:
        cell: a cell with the diagonal-Jacobian protocol.
        px: ``(B, T, P)`` projected inputs (the solve runs in ``px``'s dtype).
        z0: ``(B, *S)`` packed initial state.
        resets: bool ``(B, T)``: the state entering step ``t`` is ``z_init``.
        z_init: ``(B, *S)`` packed ``init_state`` (needed with ``resets``).
        tol: absolute tolerance on ``max |f(z_{t-1}) - z_t|``.
        max_iters: the most Newton updates per tile.
        tile: steps per tile (``None``: automatic, see :func:`tile_steps`).

    Returns:
        ``z: (B, T, *S)`` and the :class:`SolveInfo`. Tile by tile, from the exact state
        before the tile: the initial guess is ``z_t = f(0, x_t)`` (``f(z_{start-1}, x_start)``
        at the tile's first step); each iteration solves ``d_t = J_t d_{t-1} + (f(z_{t-1},
        x_t) - z_t)`` by one scan and sets ``z += d``, until ``max |f(z_{t-1}) - z_t| <= tol``
        (that iteration's update is still applied). On failure ``z`` is partly solved and
        ``info.converged`` is false.
    """
    block = int(getattr(cell, "newton_block", 1))
    if tol is None:
        tol = DEFAULT_TOL.get(px.dtype, 1e-4)
    batch, time = px.shape[0], px.shape[1]
    z = torch.empty((batch, time, *z0.shape[1:]), dtype=px.dtype, device=px.device)
    steps = tile_steps(tile, z)
    spans = tiles(time, steps)
    most, worst = 0, 0.0
    with torch.no_grad():
        buffers = TileBuffers(cell, px, z0, steps)
        carry = z0
        for span in spans:
            its, res, ok = _solve_tile(
                cell, px, z, span, carry, resets, z_init, tol, max_iters, buffers
            )
            most, worst = max(most, its), max(worst, res)
            if not ok:
                return z, SolveInfo(its, res, False, tol, max_iters, block, tiles=len(spans))
            carry = z[:, span[1] - 1]
    return z, SolveInfo(most, worst, True, tol, max_iters, block, tiles=len(spans))
