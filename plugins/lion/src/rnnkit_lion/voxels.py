"""Sparse voxel sets in plain torch: voxelisation, window orders and groups, voxel merging and
voxel generation (LION's operations, with coordinate hashing in place of a sparse library).

A batch of sparse voxels is a :class:`Voxels`: ``coords (V, 4)`` int64 rows ``(b, x, y, z)``
sorted by their linear key (sample first), and ``feats (V, C)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Voxels(NamedTuple):
    """Non-empty voxels of a batch: ``coords (V, 4)`` int64 ``(b, x, y, z)``, ``feats (V, C)``,
    on a grid of ``extent`` cells per axis (coordinates in ``[0, extent)``)."""

    coords: Tensor
    feats: Tensor
    extent: int


def linear_key(coords: Tensor, extent: int) -> Tensor:
    """``(V,)`` int64: ``((b * E + x) * E + y) * E + z`` for ``coords (V, 4)``."""
    b, x, y, z = coords.unbind(1)
    return ((b * extent + x) * extent + y) * extent + z


def decode_key(key: Tensor, extent: int) -> Tensor:
    """The inverse of :func:`linear_key`: ``(V,) -> (V, 4)``."""
    z = key % extent
    y = (key // extent) % extent
    x = (key // extent**2) % extent
    b = key // extent**3
    return torch.stack((b, x, y, z), dim=1)


def scatter_sum(feats: Tensor, coords: Tensor, extent: int) -> Voxels:
    """Sum the features of rows with equal coordinates (duplicates collapse into one voxel).

    Args:
        feats: ``(N, C)``.
        coords: ``(N, 4)`` int64, in ``[0, extent)`` spatially.
        extent: grid size per axis.

    Returns:
        :class:`Voxels` with unique, key-sorted coordinates.
    """
    keys, inverse = torch.unique(linear_key(coords, extent), return_inverse=True)
    out = feats.new_zeros(keys.shape[0], feats.shape[1]).index_add(0, inverse, feats)
    return Voxels(decode_key(keys, extent), out, extent)


def voxelise(points: Tensor, extent: int) -> tuple[Tensor, Tensor, Tensor]:
    """Assign points in ``[0, 1)^3`` to the cells of an ``extent^3`` grid (dynamic voxelisation).

    Args:
        points: ``(B, P, 3)``; coordinates outside ``[0, 1)`` are clamped to the border cells.
        extent: cells per axis.

    Returns:
        ``(coords, inverse, offsets)``: the voxels' ``(V, 4)`` coordinates (key-sorted),
        ``inverse (B*P,)`` the voxel of each point, and ``offsets (B*P, 3)`` each point's
        position inside its cell, in ``[-1/2, 1/2)`` cell units (a VFE's relative feature).
    """
    batch, npts, _ = points.shape
    scaled = points.reshape(-1, 3) * extent
    cell = scaled.floor().long().clamp(0, extent - 1)
    b = torch.arange(batch, device=points.device).repeat_interleave(npts)
    coords = torch.cat((b[:, None], cell), dim=1)
    keys, inverse = torch.unique(linear_key(coords, extent), return_inverse=True)
    offsets = scaled - cell.to(scaled.dtype) - 0.5
    return decode_key(keys, extent), inverse, offsets


def scatter_mean(values: Tensor, inverse: Tensor, size: int) -> Tensor:
    """``(size, C)``: the mean of the rows of ``values (N, C)`` per ``inverse (N,)`` index."""
    total = values.new_zeros(size, values.shape[1]).index_add(0, inverse, values)
    count = torch.zeros(size, device=values.device, dtype=values.dtype)
    count = count.index_add(0, inverse, torch.ones_like(inverse, dtype=values.dtype))
    return total / count.clamp_min(1)[:, None]


def merge(voxels: Voxels, factor: int = 2) -> Voxels:
    """Voxel merging: coordinates ``// factor`` on every axis, features of the voxels that
    land in one cell summed (the reference's ``scatter_add``); the grid shrinks by ``factor``.
    """
    coords = voxels.coords.clone()
    coords[:, 1:] = coords[:, 1:] // factor
    extent = -(-voxels.extent // factor)
    return scatter_sum(voxels.feats, coords, extent)


DIAGONALS = ((1, 1), (1, -1), (-1, 1), (-1, -1))


def generate(voxels: Voxels, ratio: float = 0.2) -> Voxels:
    """Voxel generation: per sample, the ``ceil(ratio * n)`` voxels with the largest mean
    feature are copied to their 4 diagonal neighbours in the ``(x, y)`` plane (clamped to the
    grid) with zero features, and appended; a following :func:`merge` collapses duplicates.

    Returns:
        :class:`Voxels` with the new voxels after the old ones (not key-sorted, may repeat).
    """
    coords, feats = voxels.coords, voxels.feats
    if coords.shape[0] == 0:
        return voxels
    score = feats.mean(1)
    # sort by score descending, then (stably) by sample: ranks within each sample
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(coords[order, 0], stable=True)]
    b = coords[order, 0]
    counts = torch.bincount(b, minlength=int(b.max()) + 1)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(b.shape[0], device=b.device) - starts[b]
    keep = torch.ceil(ratio * counts.to(torch.float64)).long()
    chosen = coords[order[rank < keep[b]]]
    new = []
    for dx, dy in DIAGONALS:
        c = chosen.clone()
        c[:, 1] = (c[:, 1] + dx).clamp(0, voxels.extent - 1)
        c[:, 2] = (c[:, 2] + dy).clamp(0, voxels.extent - 1)
        new.append(c)
    added = torch.cat(new)
    return Voxels(
        torch.cat((coords, added)),
        torch.cat((feats, feats.new_zeros(added.shape[0], feats.shape[1]))),
        voxels.extent,
    )


class Groups(NamedTuple):
    """A window order cut into groups: ``gather (L,)`` indexes voxels into ``L = num_groups *
    group_size`` padded slots; ``scatter (V,)`` the slot of each voxel (its first copy)."""

    gather: Tensor
    scatter: Tensor
    group_size: int


def window_groups(
    coords: Tensor, window: int, group_size: int, *, axis: str = "x", shift: bool = False
) -> Groups:
    """Sort voxels by window, then by position inside it, and cut each sample's sequence into
    groups of ``group_size``, padding the last group by repeating the sample's last voxel.

    Args:
        coords: ``(V, 4)`` int64 voxel coordinates.
        window: window edge in cells (the same on every axis).
        group_size: ``G``, tokens per group.
        axis: ``"x"`` (x-major: x varies slowest, in window index and inside a window) or
            ``"y"`` (y-major).
        shift: shift windows by half a window (the reference's shifted layer).

    Returns:
        :class:`Groups`; ``feats[gather].view(-1, G, C)`` are the groups and
        ``out.view(-1, C)[scatter]`` brings per-slot results back to the voxels.
    """
    if axis not in ("x", "y"):
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    b = coords[:, 0]
    xyz = coords[:, 1:] + (window // 2 if shift else 0)
    win, inner = xyz // window, xyz % window
    major = (0, 1, 2) if axis == "x" else (1, 0, 2)
    span = int(win.max()) + 1 if win.numel() else 1
    key = b
    for a in major:
        key = key * span + win[:, a]
    for a in major:
        key = key * window + inner[:, a]
    order = torch.argsort(key)
    sb = b[order]
    counts = torch.bincount(sb, minlength=int(sb.max()) + 1 if sb.numel() else 0)
    padded = -(-counts // group_size) * group_size
    starts = torch.cumsum(counts, 0) - counts
    pstarts = torch.cumsum(padded, 0) - padded
    sample = torch.repeat_interleave(torch.arange(counts.shape[0], device=b.device), padded)
    slot = torch.arange(int(padded.sum()), device=b.device) - pstarts[sample]
    source = starts[sample] + torch.minimum(slot, counts[sample] - 1)
    gather = order[source]
    rank = torch.arange(sb.shape[0], device=b.device) - starts[sb]
    scatter = torch.empty_like(order)
    scatter[order] = pstarts[sb] + rank
    return Groups(gather, scatter, group_size)
