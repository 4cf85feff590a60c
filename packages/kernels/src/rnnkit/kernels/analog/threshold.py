"""Exact conversion against per-column sorted thresholds with a fixed number of passes:
``D = #{k : T_k <= v}``.

A ramp ADC's code is the number of its (non-decreasing) ramp levels at or below the input.
``torch.searchsorted`` per column, or counting all ``K`` comparisons, costs ``O(log K)`` to
``O(K)`` passes over the data; a simulator converts ``B x C`` values every time step, so this
module trades a little memory for a small, fixed number of elementwise passes and gathers:

1. Each column's threshold range (padded) is cut into ``G`` uniform **cells**. A value's cell
   is one multiply-add, ``v / w + offset``, clamped to the grid and truncated.
2. A cell knows the code of a value just below it and the (at most ``R``) *distinct*
   thresholds inside it, each with the code (and output value) reached once it is passed. The
   result is that of the last threshold ``<= v``, or the cell's base if none is: a chain of
   ``R`` ``where`` in the records layout; in the compact layout an index into the column's
   sorted list advanced once per threshold reached (``i += v >= T[i]``, ``R`` times), then
   one gather. ``G`` is chosen so that ``R = 1`` where the memory allows.
3. Cells cover their interval widened by a quarter cell on each side, so a cell index that
   float rounding moved by less than a quarter cell (ensured by computing positions in
   float64 when float32 could err by more) still gives the exact code.
4. Cells with more than ``R`` thresholds (a noisy ramp's clustered levels) finish with a few
   rounds of "compare with the next distinct threshold" on the values that need them.

Two layouts of the same information, picked by size: **records** (every cell stores its
thresholds, codes and values: no indirection, for small tables such as an ideal ramp bank,
whose identical columns share one set of cells) and **compact** (a cell stores one small
integer, the index of its first threshold in the column's list of distinct thresholds, codes
and values: one more gather, but about six times less memory, so a table of a thousand noisy
columns stays in cache next to the weights). A compact table whose outputs are exactly affine
in the list index (:func:`_affine_slots`) computes them instead of gathering them.

Equal thresholds (a flat, noisy ramp: the running maximum of its levels) are stored once with
the combined code jump. Conversions are exact in the input's dtype: thresholds are compared
with ``>=`` after being rounded to that dtype, as a comparator of that resolution would. NaN
converts to code 0 (``v >= T`` is false), ``+inf`` to the top code.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["ThresholdTable"]

#: half-width of the extra margin each cell covers on either side, in cells.
GUARD = 0.25
#: largest magnitude (in cells) of the terms of ``v / w + offset`` for which float32 errs by at
#: most ``4 * 2^-24 * F32_SAFE = GUARD / 2`` (roundings of ``1/w``, the offset, the product and
#: the sum); beyond it positions are computed in float64.
F32_SAFE = 2.0**19
#: cap on ``unique columns x cells``.
MAX_CELLS = 2**21
#: the most thresholds a cell resolves by itself; more finish with overflow rounds.
MAX_DEPTH = 2
#: the largest records layout (bytes); larger tables use the compact layout.
RECORDS_BYTES = 256 * 1024
#: the largest compact cell index (bytes).
COMPACT_BYTES = 1024 * 1024
LAYOUTS = ("records", "compact")


def _distinct(th: Tensor) -> tuple[Tensor, Tensor]:
    """Per row of ``th (U, K)`` (non-decreasing), its distinct values in order, padded with
    ``+inf`` ``(U, K)``, and the code once each is passed (``#{k : T_k <= d}``, int64)."""
    U, K = th.shape
    k = torch.arange(K, device=th.device)
    last = torch.ones(U, K, dtype=torch.bool, device=th.device)
    last[:, :-1] = th[:, 1:] != th[:, :-1]  # the last index of each run of equal values
    key = torch.where(last, k, K + k).sort(dim=1).values  # run ends first, in order
    n = last.sum(1, keepdim=True)
    valid = k[None, :] < n
    pos = key.clamp_max(K - 1)
    d = torch.where(valid, th.gather(1, pos), torch.full_like(th, math.inf))
    return d, torch.where(valid, pos + 1, torch.full_like(pos, K))


def _affine_slots(
    vu: Tensor, grid: _Grid, inverse: Tensor, stride: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor] | None:
    """Per column ``(a, b)`` ``(C,)`` in ``dtype`` such that the output at flat list index
    ``i`` is exactly ``a + i b`` for every index a conversion can reach, or ``None``.

    That holds for a ramp ADC's outputs ``y_min + (D + 1/2) Δy`` (affine in the code ``D``)
    when no two of a row's thresholds are equal (list position = code) and the arithmetic is
    exact in ``dtype``: ``Δy`` a power of two and every term (``a``, ``i b``, the outputs) an
    integer multiple of ``Δy / 2`` below ``2^p`` of them (``p`` the dtype's significand bits),
    so ``a + i b`` is computed without rounding, fused multiply-add or not.

    Args:
        vu: ``(U, K + 1)`` the output of each code per unique row, in ``dtype``.
        grid: the rows' grid (distinct thresholds and the code after each).
        inverse: ``(C,)`` each column's unique row; its list starts at ``inverse * stride``.
    """
    f64 = torch.float64
    v = vu.to(f64)
    lsb = v[:, 1] - v[:, 0]  # (U,)
    mant, _ = torch.frexp(lsb)
    if not bool(((lsb > 0) & (mant == 0.5)).all()):
        return None
    # slot m holds the output after m distinct thresholds (slots 0..n are reachable): affine
    # in m iff that output is the one of code m for every reachable slot.
    n = (~torch.isnan(grid.dist)).sum(1)
    m = torch.arange(grid.after.shape[1])
    reach = m[None, :] <= n[:, None]
    slots = v.gather(1, grid.after.clamp_max(v.shape[1] - 1))
    if not bool(torch.where(reach, slots == v[:, :1] + m * lsb[:, None], True).all()):
        return None
    q = lsb / 2  # the unit every term must be an integer multiple of
    v0 = v[:, 0] / q
    if not bool((v0 == v0.round()).all()):
        return None
    start = (inverse * stride).to(f64)  # (C,)
    a_units = v0[inverse] - 2 * start  # a / q per column
    last = start + n[inverse].to(f64)  # the largest reachable index per column
    bits = 1 - math.log2(torch.finfo(dtype).eps)  # significand bits
    big = torch.stack([a_units.abs(), 2 * last, v.abs().amax(1)[inverse] / q[inverse]])
    if not bool((big < 2.0**bits).all()):
        return None
    return (a_units * q[inverse]).to(dtype), lsb[inverse].to(dtype)


def _index_dtype(levels: int) -> torch.dtype:
    """The smallest integer dtype holding ``0 .. levels``."""
    if levels < 256:
        return torch.uint8
    return torch.int16 if levels < 2**15 else torch.int32


class _Grid:
    """``G`` cells per row of ``th (U, K)`` (float64, non-decreasing).

    Attributes:
        lo, width: ``(U,)`` the grid of each row (cell ``g`` spans
            ``[lo + g w, lo + (g + 1) w)``, widened by :data:`GUARD` cells each side).
        first: ``(U, G)`` int64, the number of distinct thresholds below each widened cell.
        depth: ``R``, the thresholds a cell resolves itself (at most ``cap``).
        overflow: whether some widened cell holds more than ``R`` distinct thresholds.
        dist, after: ``(U, K + 1 + R)`` per row its distinct thresholds (NaN-padded, so that
            ``first + R`` stays in the row and never passes) and the code once ``m`` of them
            are passed (``after[:, 0] = 0``; the padding repeats the top code).
    """

    def __init__(self, th: Tensor, G: int, cap: int) -> None:
        U, K = th.shape
        lo_t, hi_t = th[:, 0], th[:, -1]
        pad = 0.05 * (hi_t - lo_t) + 1e-3 * (1.0 + torch.maximum(lo_t.abs(), hi_t.abs()))
        self.lo = lo_t - pad
        self.width = (hi_t + pad - self.lo) / G
        g = torch.arange(G, dtype=th.dtype, device=th.device)
        a = (self.lo[:, None] + (g - GUARD) * self.width[:, None]).contiguous()
        b = (self.lo[:, None] + (g + 1 + GUARD) * self.width[:, None]).contiguous()
        d, after = _distinct(th)
        self.first = torch.searchsorted(d, a, right=False)
        most = int((torch.searchsorted(d, b, right=True) - self.first).max())
        self.depth = min(most, cap)
        self.overflow = most > self.depth
        self.cells, self.rows, self.levels = G, U, K
        R = self.depth
        nan = torch.full((U, 1 + R), math.nan, dtype=th.dtype, device=th.device)
        self.dist = torch.cat([torch.where(torch.isinf(d), math.nan, d), nan], 1)
        top = after.new_full((U, R), K)
        self.after = torch.cat([after.new_zeros(U, 1), after, top], 1)

    def nbytes(self, layout: str, itemsize: int) -> int:
        """Memory of the per-cell data in ``layout``."""
        n = self.rows * self.cells
        if layout == "records":
            return n * (2 * self.depth + 1) * itemsize
        return n * _index_dtype(self.levels).itemsize


class ThresholdTable:
    """Per-column non-decreasing thresholds, converted exactly with a fixed number of passes.

    Args:
        thresholds: ``(C, K)`` non-decreasing along ``K``, finite (any float dtype; rounded to
            ``dtype``, the precision conversions compare in).
        values: ``(C, K + 1)`` the output of each code (``None``: :meth:`lookup` unavailable).
        dtype, device: of the inputs to convert.
        cells: grid cells per column (default: chosen at build time, see the module docs).
        layout: ``"records"`` or ``"compact"`` (default: by size, see the module docs).

    Raises:
        ValueError: on a bad shape, non-finite or decreasing thresholds, a bad ``cells`` or
            ``layout``.
    """

    def __init__(
        self,
        thresholds: Tensor,
        values: Tensor | None = None,
        *,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
        cells: int | None = None,
        layout: str | None = None,
    ) -> None:
        if thresholds.dim() != 2 or thresholds.shape[1] < 1:
            raise ValueError(
                f"thresholds must be (C, K) with K >= 1, got {tuple(thresholds.shape)}"
            )
        C, K = thresholds.shape
        if values is not None and tuple(values.shape) != (C, K + 1):
            raise ValueError(f"values must be (C, K + 1) = {(C, K + 1)}, got {tuple(values.shape)}")
        if cells is not None and int(cells) < 1:
            raise ValueError(f"cells must be >= 1, got {cells}")
        if layout is not None and layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        f64, i32 = torch.float64, torch.int32
        # compare in dtype: thresholds as that dtype holds them (exactly representable in f64).
        th = thresholds.detach().to(dtype).to(f64).cpu()
        if not bool(torch.isfinite(th).all()):
            raise ValueError("thresholds must be finite")
        if K > 1 and bool((th.diff(dim=1) < 0).any()):
            raise ValueError("thresholds must be non-decreasing along each row")
        vals = None if values is None else values.detach().to(dtype).cpu()
        # columns with identical thresholds (and values) share cells.
        key = th if vals is None else torch.cat([th, vals.to(f64)], 1)
        uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
        th_u = uniq[:, :K].contiguous()
        U = th_u.shape[0]
        item = torch.finfo(dtype).bits // 8
        grid, self.layout = self._choose(th_u, cells, layout, item)
        G, R = grid.cells, grid.depth
        self.columns, self.levels, self.cells, self.depth = C, K, G, R
        self.overflow = grid.overflow
        # position in cells: v * inv_w + off, the row's base either folded into off (when
        # float32 keeps it exact enough) or added as an integer.
        inv_w = 1.0 / grid.width
        off = -grid.lo * inv_w
        reach = float((off.abs() + (th_u.abs().amax(1) + grid.width * G) * inv_w).max())
        self._gdtype = f64 if (dtype == f64 or reach > F32_SAFE) else torch.float32
        self._fold_base = self._gdtype == f64 or reach + U * G <= F32_SAFE
        gd = self._gdtype
        base = inverse * G
        self._inv_w = inv_w[inverse].to(device=device, dtype=gd)
        if self._fold_base:
            self._off = (off[inverse] + base).to(device=device, dtype=gd)
            self._first = base.to(device=device, dtype=gd)  # first and last cell of the row
            self._last = (base + G - 1).to(device=device, dtype=gd)
        else:
            self._off = off[inverse].to(device=device, dtype=gd)
            self._base = base.to(device=device, dtype=i32)
        # per-row lists, flat (row u starts at u S); shifted views [j:] give entry index + j.
        vu = None if vals is None else uniq[:, K:].to(dtype)  # (U, K + 1)
        S = grid.dist.shape[1]

        def shifts(t: Tensor) -> list[Tensor]:
            flat = t.reshape(-1).to(device)
            return [flat[j:] for j in range(R + 1)]

        self._dist = shifts(grid.dist.to(dtype))
        self._after = shifts(grid.after.to(i32))
        self._vals_after = None if vu is None else shifts(vu.gather(1, grid.after.clamp_max(K)))
        self._affine: tuple[Tensor, Tensor] | None = None
        if self.layout == "compact":
            self._lut = grid.first.reshape(-1).to(device=device, dtype=_index_dtype(K))
            self._row_start = (inverse * S).to(device=device, dtype=i32)
            if vu is not None:
                aff = _affine_slots(vu, grid, inverse, S, dtype)
                if aff is not None:
                    self._affine = (aff[0].to(device), aff[1].to(device))
            return
        # records: the level-j threshold, code and value of every cell (level 0: the base).
        firsts = (torch.arange(U)[:, None] * S + grid.first).reshape(-1).to(device)
        self._rec_thr = [self._dist[j].index_select(0, firsts) for j in range(R)]
        self._rec_codes = [self._after[j].index_select(0, firsts) for j in range(R + 1)]
        self._rec_vals = (
            None
            if self._vals_after is None
            else [self._vals_after[j].index_select(0, firsts) for j in range(R + 1)]
        )
        self._rec_next = (firsts + R).to(i32)

    @staticmethod
    def _choose(th: Tensor, cells: int | None, layout: str | None, item: int) -> tuple[_Grid, str]:
        """The grid and layout: the coarsest grid resolving one threshold per cell (else the
        fewest), records if they fit :data:`RECORDS_BYTES`, else compact."""
        U, K = th.shape
        if cells is not None:
            grid = _Grid(th, cells, MAX_DEPTH)
            auto = "records" if grid.nbytes("records", item) <= RECORDS_BYTES else "compact"
            return grid, layout or auto
        grids: list[_Grid] = []
        for mult in (2, 4, 8, 16, 32):
            G = mult * (K + 1)
            too_big = U * G > MAX_CELLS or U * G * _index_dtype(K).itemsize > COMPACT_BYTES
            if grids and too_big:
                break  # no layout could use it
            grids.append(_Grid(th, G, MAX_DEPTH))
            if grids[-1].depth <= 1 and not grids[-1].overflow:
                break

        def best(fits: list[_Grid]) -> _Grid | None:
            return min(fits, key=lambda g: (g.overflow, g.depth, g.cells), default=None)

        for name, cap in (("records", RECORDS_BYTES), ("compact", COMPACT_BYTES)):
            if layout in (None, name):
                pick = best([g for g in grids if g.nbytes(name, item) <= cap])
                if pick is not None:
                    return pick, name
        # nothing fits the caps: the smallest grid.
        return grids[0], layout or "compact"

    def _index(self, u: Tensor) -> Tensor:
        """Flat cell indices (int32, ``u``'s shape) of ``u: (..., C)``."""
        if u.shape[-1] != self.columns:
            raise ValueError(f"last dim must be columns={self.columns}, got {tuple(u.shape)}")
        g = u if u.dtype == self._gdtype else u.to(self._gdtype)
        pos = torch.addcmul(self._off, g, self._inv_w).nan_to_num_(0.0)
        if self._fold_base:
            return pos.clamp_(self._first, self._last).to(torch.int32)
        return pos.clamp_(0, self.cells - 1).to(torch.int32).add_(self._base)

    def _select(self, u: Tensor, codes: bool) -> Tensor:
        """The value (or code, int32) of the last threshold ``<= u`` for ``u: (..., C)``."""
        shape = u.shape
        cell = self._index(u)
        uf = u.reshape(-1)
        table = self._after if codes else self._vals_after
        assert table is not None
        dist = self._dist
        if self.layout == "compact":
            # the cell's first distinct threshold, as a flat index into the row lists (uint8
            # plus int32 promotes to int32 in the same pass).
            i = torch.add(self._lut.index_select(0, cell.view(-1)).view(shape), self._row_start)
            i = i.view(-1)
            # the thresholds are sorted: advance the index past each one the value reaches.
            # A value that fails a round fails every later one (it meets the same threshold
            # again), so after R rounds ``i`` is the first threshold not passed, and the
            # result is one gather (two fewer passes than selecting between candidates).
            for _ in range(self.depth):
                i.add_(uf >= dist[0].index_select(0, i))
            if not codes and self._affine is not None and not self.overflow:
                # outputs affine in the index (see _affine_slots): two elementwise passes
                # instead of a gather from a table that a simulator's GEMMs push out of cache.
                a, b = self._affine
                return torch.addcmul(a, i.view(shape).to(a.dtype), b)
            out = table[0].index_select(0, i)
            nxt = i
        else:
            c = cell.view(-1)
            levels = self._rec_codes if codes else self._rec_vals
            assert levels is not None
            out = levels[0].index_select(0, c)
            for j, thr in enumerate(self._rec_thr):
                passed = uf >= thr.index_select(0, c)
                out = torch.where(passed, levels[j + 1].index_select(0, c), out)
            nxt = self._rec_next.index_select(0, c) if self.overflow else c
        if self.overflow:
            # cells with more thresholds than they resolve: step along the row's list, for
            # the (few) values that passed the cell's last resolved threshold only.
            up = dist[0].index_select(0, nxt) <= uf  # NaN (none left, NaN input): False
            act = up.nonzero().squeeze(1)
            if act.numel():
                k = nxt.index_select(0, act).add_(1)
                ua = uf.index_select(0, act)
                while True:
                    more = dist[0].index_select(0, k) <= ua
                    if not bool(more.any()):
                        break
                    k.add_(more)
                out = out.index_copy(0, act, table[0].index_select(0, k))
        return out.view(shape)

    def codes(self, u: Tensor) -> Tensor:
        """Codes ``D`` in ``[0, K]`` (int64) for ``u: (..., C)``."""
        return self._select(u, codes=True).long()

    def lookup(self, u: Tensor) -> Tensor:
        """The output value of each converted ``u: (..., C)`` (in the table's dtype)."""
        if self._vals_after is None:
            raise ValueError("this ThresholdTable was built without values")
        return self._select(u, codes=False)
