"""LION (Liu et al. 2024): linear group RNNs over window-sorted voxel groups, as a point-cloud
classifier whose operator is any diagonal-linear cell of the registry."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from rnnkit.core import Recurrent, get_cell_class
from rnnkit.core.forms import Form
from rnnkit.core.validation import check_positive_int
from rnnkit_lion.voxels import Voxels, generate, merge, scatter_mean, voxelise, window_groups


class LIONLayer(nn.Module):
    """One LION layer: the operator on x-major groups, then on y-major groups, each time
    ``x + LN(Op(x))`` scattered back to the voxels. ``Op`` runs a cell over each group, and
    (``bidirectional``) a second cell over the reversed group, outputs summed, then a linear
    map back to ``channels``.

    Shapes: ``feats (V, channels)`` -> ``(V, channels)``.
    """

    def __init__(
        self,
        cell: str,
        channels: int,
        *,
        window: int,
        group_size: int,
        shift: bool,
        bidirectional: bool,
        cell_kwargs: dict[str, Any],
    ) -> None:
        super().__init__()
        self.window, self.group_size, self.shift = window, group_size, shift
        # ops[k][d]: the cell stack for axis k ("x", "y") and direction d (forward, reversed)
        self.ops: list[list[Recurrent]] = [
            [
                Recurrent(cell, channels, channels, **cell_kwargs)
                for _ in range(2 if bidirectional else 1)
            ]
            for _ in ("x", "y")
        ]
        self.stacks = nn.ModuleList(r for axis in self.ops for r in axis)  # registers them
        width = self.ops[0][0].cell(0).output_size
        self.out = nn.ModuleList(nn.Linear(width, channels) for _ in ("x", "y"))
        self.norm = nn.ModuleList(nn.LayerNorm(channels) for _ in ("x", "y"))

    def forward(self, coords: Tensor, feats: Tensor, *, backend: str = "auto") -> Tensor:
        for k, axis in enumerate(("x", "y")):
            groups = window_groups(
                coords, self.window, self.group_size, axis=axis, shift=self.shift
            )
            seq = feats[groups.gather].view(-1, self.group_size, feats.shape[1])
            y: Tensor | None = None
            for d, rnn in enumerate(self.ops[k]):
                run = seq.flip(1) if d == 1 else seq
                out, _ = rnn(run, backend=backend)
                out = out.flip(1) if d == 1 else out
                y = out if y is None else y + out
            assert y is not None
            y = self.out[k](y).reshape(-1, feats.shape[1])[groups.scatter]
            feats = feats + self.norm[k](y)
        return feats


class LION(nn.Module):
    """A LION point-cloud classifier: points ``(B, P, 3)`` in ``[0, 1)^3`` -> logits
    ``(B, output_size)``.

    Pipeline: dynamic voxelisation on a ``grid^3`` grid with a point MLP (each point's offset
    in its voxel and its position) averaged per voxel; ``blocks`` LION blocks, each a learned
    position embedding (an MLP of the voxel centres scaled to ``[-pi, pi]``) and two LION
    layers (the second with half-window-shifted windows); between blocks, voxel generation
    (``generation``: the top ``generation_ratio`` voxels of each sample by mean feature copied
    to their 4 diagonal ``(x, y)`` neighbours with zero features) then voxel merging
    (coordinates halved, features summed, LayerNorm); then mean and max pooling per sample and
    a linear head.

    Args:
        input_size: must be 3 (``x, y, z``).
        output_size: classes.
        hidden_size: channels ``C`` (the operator cell's width).
        num_layers: LION blocks (``>= 1``).
        cell: a registered cell with the diagonal linear form (``lru``, ``s4d``, ``s5``,
            ``mingru``, ...).
        grid: voxels per axis in the first block (halved by each merge).
        window: window edge in voxels.
        group_size: ``G``, voxels per group.
        generation: voxel generation before each merge.
        generation_ratio: fraction of each sample's voxels that seed new ones.
        bidirectional: a reversed pass in each operator.
        cell_kwargs: extra constructor keywords of ``cell``.
    """

    def __init__(
        self,
        input_size: int = 3,
        output_size: int = 4,
        hidden_size: int = 32,
        num_layers: int = 2,
        *,
        cell: str = "lru",
        grid: int = 16,
        window: int = 4,
        group_size: int = 32,
        generation: bool = True,
        generation_ratio: float = 0.2,
        bidirectional: bool = True,
        cell_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if input_size != 3:
            raise ValueError(f"input_size must be 3 (point coordinates x, y, z), got {input_size}")
        check_positive_int("output_size", output_size)
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("num_layers", num_layers)
        check_positive_int("grid", grid)
        check_positive_int("window", window)
        check_positive_int("group_size", group_size)
        if not 0.0 < generation_ratio <= 1.0:
            raise ValueError(f"generation_ratio must be in (0, 1], got {generation_ratio!r}")
        if grid < 2 ** (num_layers - 1):
            raise ValueError(
                f"grid must be at least 2**(num_layers - 1) = {2 ** (num_layers - 1)} (each "
                f"block after the first halves it), got {grid}"
            )
        cls = get_cell_class(cell)
        if Form.DIAGONAL_LINEAR not in cls.forms:
            raise ValueError(
                f"cell must be a registered cell with the diagonal linear form, got {cell!r} "
                f"(forms: {sorted(f.value for f in cls.forms)})"
            )
        self.grid, self.generation, self.generation_ratio = grid, generation, generation_ratio
        c = hidden_size
        self.point_mlp = nn.Sequential(nn.Linear(6, c), nn.LayerNorm(c), nn.GELU(), nn.Linear(c, c))
        self.pos = nn.ModuleList(
            nn.Sequential(nn.Linear(3, c), nn.GELU(), nn.Linear(c, c)) for _ in range(num_layers)
        )
        self.layers: list[list[LIONLayer]] = [
            [
                LIONLayer(
                    cell,
                    c,
                    window=window,
                    group_size=group_size,
                    shift=shift,
                    bidirectional=bidirectional,
                    cell_kwargs=dict(cell_kwargs or {}),
                )
                for shift in (False, True)
            ]
            for _ in range(num_layers)
        ]
        self.blocks = nn.ModuleList(layer for block in self.layers for layer in block)
        self.merge_norm = nn.ModuleList(nn.LayerNorm(c) for _ in range(num_layers - 1))
        self.head = nn.Linear(2 * c, output_size)

    def forward(self, x: Tensor, *, backend: str = "auto") -> Tensor:
        if x.dim() != 3 or x.shape[-1] != 3:
            raise ValueError(f"x must be (B, P, 3) points, got shape {tuple(x.shape)}")
        batch = x.shape[0]
        coords, inverse, offsets = voxelise(x, self.grid)
        point_feats = torch.cat((offsets, x.reshape(-1, 3)), dim=1)
        feats = scatter_mean(self.point_mlp(point_feats), inverse, coords.shape[0])
        vox = Voxels(coords, feats, self.grid)
        for i, block in enumerate(self.layers):
            if i > 0:
                if self.generation:
                    vox = generate(vox, self.generation_ratio)
                vox = merge(vox)
                vox = Voxels(vox.coords, self.merge_norm[i - 1](vox.feats), vox.extent)
            centre = (vox.coords[:, 1:].to(x.dtype) + 0.5) / vox.extent
            feats = vox.feats + self.pos[i](centre * 2 * math.pi - math.pi)
            for layer in block:
                feats = layer(vox.coords, feats, backend=backend)
            vox = Voxels(vox.coords, feats, vox.extent)
        b = vox.coords[:, 0]
        mean = scatter_mean(vox.feats, b, batch)
        top = vox.feats.new_full((batch, vox.feats.shape[1]), -torch.inf)
        top = top.scatter_reduce(0, b[:, None].expand_as(vox.feats), vox.feats, "amax")
        logits: Tensor = self.head(torch.cat((mean, top), dim=1))
        return logits


def lion_classifier(
    input_size: int = 3,
    output_size: int = 4,
    hidden_size: int = 32,
    num_layers: int = 2,
    cell: str = "lru",
    grid: int = 16,
    window: int = 4,
    group_size: int = 32,
    generation: bool = True,
    generation_ratio: float = 0.2,
    bidirectional: bool = True,
) -> LION:
    """Build a :class:`LION` classifier (``num_layers`` LION blocks of width ``hidden_size``)."""
    return LION(
        input_size,
        output_size,
        hidden_size,
        num_layers,
        cell=cell,
        grid=grid,
        window=window,
        group_size=group_size,
        generation=generation,
        generation_ratio=generation_ratio,
        bidirectional=bidirectional,
    )
