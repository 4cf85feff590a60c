"""pLSTM over 2D grids (Pöppel et al. 2025): the grid operator, its P- and D-mode gates, a
layer and the ``plstm_vision`` classifier.

On an ``H x W`` grid every node ``(i, j)`` (row ``i``, column ``j``) has two incoming edges,
from the left (``l``: the memory ``C^r`` leaving ``(i, j-1)`` to the right) and from above
(``u``: the memory ``C^d`` leaving ``(i-1, j)`` downwards), and two outgoing edges, right
(``r``) and down (``d``). Per head, with ``d_k`` the key width::

    C^r_ij = T^rl C^r_{i,j-1} + T^ru C^d_{i-1,j} + S^r k v^T
    C^d_ij = T^dl C^r_{i,j-1} + T^du C^d_{i-1,j} + S^d k v^T
    y_ij   = (q^T (M^l C^r_{i,j-1} + M^u C^d_{i-1,j}) + D (q . k) v) / sqrt(d_k)

(every gate and ``q, k, v`` taken at node ``(i, j)``; memories from outside the grid are
zero). :func:`plstm2d_reference` computes it by explicit recursion over the nodes in raster
order (dynamic programming over the DAG); :func:`plstm2d_wavefront` computes the same numbers
one anti-diagonal at a time (``H + W - 1`` vectorised steps instead of ``H W``).

The two stabilisations of the paper differ only in how the nine gates are made
(:func:`pmode_gates`, :func:`dmode_gates`): P-mode (propagation) splits what arrives on each
edge between the two outgoing edges, so the outgoing transitions of an edge sum to one;
D-mode (diffusion) prunes one cross transition so that the edge graph is a multitree (one path
between any two edges) and bounds each transition by one instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.core.validation import check_heads, check_positive_int

#: The stabilisation modes of :class:`PLSTM2D`: propagation and diffusion.
MODES: tuple[str, ...] = ("P", "D")
#: Which cross transition D-mode keeps: ``"L"`` keeps ``T^ru`` (down, then right), ``"R"``
#: keeps ``T^dl`` (right, then down).
CHIRALITIES: tuple[str, ...] = ("L", "R")
#: Backends of the grid operator.
GRID_BACKENDS: tuple[str, ...] = ("reference", "wavefront")
#: Scan directions a layer may average over (1, 2 or 4 of the grid's corners as origin).
DIRECTIONS: tuple[int, ...] = (1, 2, 4)
#: The flips ``(rows, columns)`` of each direction count: ``directions=2`` runs from the
#: top-left and the bottom-right corner, ``4`` from all four.
_FLIPS: dict[int, tuple[tuple[bool, bool], ...]] = {
    1: ((False, False),),
    2: ((False, False), (True, True)),
    4: ((False, False), (True, False), (False, True), (True, True)),
}


class GridGates(NamedTuple):
    """The nine gates of the grid operator, each ``(B, heads, H, W)``: sources into the right
    and down edges, the four transitions ``T^{out,in}`` (``rl``: from the left edge into the
    right edge, ``ru``: from above into the right edge, ...), the marks of the two incoming
    edges and the direct gate."""

    source_r: Tensor
    source_d: Tensor
    t_rl: Tensor
    t_ru: Tensor
    t_dl: Tensor
    t_du: Tensor
    mark_l: Tensor
    mark_u: Tensor
    direct: Tensor


def _check_operands(q: Tensor, k: Tensor, v: Tensor, gates: GridGates) -> None:
    if q.dim() != 5 or k.shape != q.shape:
        raise ValueError(
            f"q and k must both be (B, heads, H, W, d_k), got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if v.dim() != 5 or v.shape[:4] != q.shape[:4]:
        raise ValueError(f"v must be (B, heads, H, W, d_v) with q's first four dims, got "
                         f"{tuple(v.shape)} for q {tuple(q.shape)}")  # fmt: skip
    for name, g in zip(GridGates._fields, gates, strict=True):
        if g.shape != q.shape[:4]:
            raise ValueError(f"gates.{name} must be (B, heads, H, W) = {tuple(q.shape[:4])}, "
                             f"got {tuple(g.shape)}")  # fmt: skip


def plstm2d_reference(q: Tensor, k: Tensor, v: Tensor, gates: GridGates) -> Tensor:
    """The grid operator (module docstring) by explicit recursion, node by node in raster
    order: the oracle :func:`plstm2d_wavefront` is tested against.

    Args:
        q, k: ``(B, heads, H, W, d_k)``.
        v: ``(B, heads, H, W, d_v)``.
        gates: :class:`GridGates`, each ``(B, heads, H, W)``.

    Returns:
        ``y: (B, heads, H, W, d_v)``.
    """
    _check_operands(q, k, v, gates)
    H, W = q.shape[2], q.shape[3]
    scale = 1.0 / math.sqrt(q.shape[-1])
    right: list[list[Tensor]] = []  # right[i][j]: C^r leaving (i, j), (B, heads, d_k, d_v)
    down: list[list[Tensor]] = []
    rows: list[Tensor] = []
    for i in range(H):
        right.append([])
        down.append([])
        row: list[Tensor] = []
        for j in range(W):
            g = [t[:, :, i, j, None, None] for t in gates]  # (B, heads, 1, 1) each
            s_r, s_d, t_rl, t_ru, t_dl, t_du, m_l, m_u, dg = g
            qn, kn, vn = q[:, :, i, j], k[:, :, i, j], v[:, :, i, j]
            kv = kn.unsqueeze(-1) * vn.unsqueeze(-2)  # (B, heads, d_k, d_v)
            y = dg[..., 0] * (qn * kn).sum(-1, keepdim=True) * vn
            c_r = s_r * kv
            c_d = s_d * kv
            if j > 0:
                left = right[i][j - 1]
                y = y + m_l[..., 0] * (qn.unsqueeze(-2) @ left).squeeze(-2)
                c_r = c_r + t_rl * left
                c_d = c_d + t_dl * left
            if i > 0:
                up = down[i - 1][j]
                y = y + m_u[..., 0] * (qn.unsqueeze(-2) @ up).squeeze(-2)
                c_r = c_r + t_ru * up
                c_d = c_d + t_du * up
            right[i].append(c_r)
            down[i].append(c_d)
            row.append(y * scale)
        rows.append(torch.stack(row, 2))  # (B, heads, W, d_v)
    return torch.stack(rows, 2)


def plstm2d_wavefront(q: Tensor, k: Tensor, v: Tensor, gates: GridGates) -> Tensor:
    """The grid operator (module docstring) one anti-diagonal ``i + j = const`` at a time: the
    nodes of a diagonal depend only on the previous diagonal, so each of the ``H + W - 1``
    steps updates all of its nodes at once. Same arguments and result as
    :func:`plstm2d_reference`.

    The grid is skewed to ``(diagonal, row)`` coordinates; slots outside the grid are masked
    with ``where`` (not multiplied by zero), so a NaN there cannot leak into the grid.
    """
    _check_operands(q, k, v, gates)
    B, nh, H, W, dk = q.shape
    dv = v.shape[-1]
    n_diag = H + W - 1
    scale = 1.0 / math.sqrt(dk)
    dev = q.device
    row = torch.arange(H, device=dev)
    col = torch.arange(n_diag, device=dev)[:, None] - row[None, :]  # (n_diag, H): j = d - i
    inside = (col >= 0) & (col < W)
    col = col.clamp(0, W - 1)

    def skew(t: Tensor) -> Tensor:
        """``(B, heads, H, W, ...) -> (B, heads, n_diag, H, ...)``."""
        return t[:, :, row[None, :].expand(n_diag, H), col]

    qs, ks, vs = skew(q), skew(k), skew(v)
    gs = GridGates(*(skew(g) for g in gates))
    zero = q.new_zeros(())
    c_r = q.new_zeros(B, nh, H, dk, dv)  # the previous diagonal's right-going memories
    c_d = q.new_zeros(B, nh, H, dk, dv)
    ys: list[Tensor] = []
    for d in range(n_diag):
        ok = inside[d][:, None, None]  # (H, 1, 1)
        g = [t[:, :, d, :, None, None] for t in gs]  # (B, heads, H, 1, 1) each
        s_r, s_d, t_rl, t_ru, t_dl, t_du, m_l, m_u, dg = g
        qn, kn, vn = qs[:, :, d], ks[:, :, d], vs[:, :, d]  # (B, heads, H, d)
        left = c_r  # row i of diagonal d - 1 is (i, j - 1)
        up = torch.cat((torch.zeros_like(c_d[:, :, :1]), c_d[:, :, :-1]), 2)  # (i - 1, j)
        kv = kn.unsqueeze(-1) * vn.unsqueeze(-2)
        y = (
            dg[..., 0] * (qn * kn).sum(-1, keepdim=True) * vn
            + m_l[..., 0] * (qn.unsqueeze(-2) @ left).squeeze(-2)
            + m_u[..., 0] * (qn.unsqueeze(-2) @ up).squeeze(-2)
        )
        c_r = torch.where(ok, t_rl * left + t_ru * up + s_r * kv, zero)
        c_d = torch.where(ok, t_dl * left + t_du * up + s_d * kv, zero)
        ys.append(y * scale)
    y_skew = torch.stack(ys, 2)  # (B, heads, n_diag, H, d_v)
    diag = row[:, None] + torch.arange(W, device=dev)[None, :]  # (H, W): i + j
    return y_skew[:, :, diag, row[:, None].expand(H, W)]


def plstm2d(
    q: Tensor, k: Tensor, v: Tensor, gates: GridGates, *, backend: str = "wavefront"
) -> Tensor:
    """The grid operator on ``backend`` (one of :data:`GRID_BACKENDS`); see
    :func:`plstm2d_reference` for shapes."""
    if backend == "wavefront":
        return plstm2d_wavefront(q, k, v, gates)
    if backend == "reference":
        return plstm2d_reference(q, k, v, gates)
    raise ValueError(f"backend must be one of {GRID_BACKENDS}, got {backend!r}")


#: Gate pre-activations per head and direction in each mode (the columns of
#: :meth:`PLSTM2D.project`, in this order).
MODE_GATES: dict[str, tuple[str, ...]] = {
    "P": ("source", "transition", "orientation", "mark", "direct"),
    "D": ("source_r", "source_d", "t_rl", "t_du", "t_cross", "mark_l", "mark_u", "direct"),
}


def pmode_gates(pre: Tensor, transition_scale: float = 5.0) -> GridGates:
    """P-mode gates from pre-activations ``pre: (B, heads, H, W, 5)`` in
    ``MODE_GATES["P"]`` order. With ``S, tau, o, M, D`` the sigmoids of the five (``tau``
    of ``transition_scale`` times its pre-activation):

    ``S^r = o S``, ``S^d = 1 - o S``, ``T^rl = T^ru = o tau``, ``T^dl = T^du = 1 - o tau``,
    ``M^l = M^u = M``, ``D``.

    Each incoming edge hands ``o tau`` of its memory on to the right and the rest downwards:
    both in ``[0, 1]``, summing to one, so the P-mode bound (the outgoing transitions of each
    edge sum to at most one in absolute value) holds for every input.
    """
    act = torch.sigmoid(pre)
    source, orient, mark, direct = act[..., 0], act[..., 2], act[..., 3], act[..., 4]
    tau = torch.sigmoid(transition_scale * pre[..., 1])
    s_r = orient * source
    t_r = orient * tau
    t_d = 1.0 - t_r
    return GridGates(s_r, 1.0 - s_r, t_r, t_r, t_d, t_d, mark, mark, direct)


def dmode_gates(pre: Tensor, chirality: str = "L", transition_scale: float = 5.0) -> GridGates:
    """D-mode gates from pre-activations ``pre: (B, heads, H, W, 8)`` in
    ``MODE_GATES["D"]`` order: sigmoid sources ``S^r, S^d``, marks ``M^l, M^u`` and direct
    gate, ``tanh(transition_scale * .)`` transitions ``T^rl``, ``T^du`` and one cross
    transition, used as ``T^ru`` (``chirality="L"``; ``T^dl = 0``) or as ``T^dl`` (``"R"``;
    ``T^ru = 0``). With one cross transition pruned there is exactly one path between any two
    edges, so ``|T| < 1`` on each bounds every path's product."""
    if chirality not in CHIRALITIES:
        raise ValueError(f"chirality must be one of {CHIRALITIES}, got {chirality!r}")
    sig = torch.sigmoid(pre)
    t = torch.tanh(transition_scale * pre[..., 2:5])
    t_rl, t_du, t_cross = t[..., 0], t[..., 1], t[..., 2]
    none = torch.zeros_like(t_cross)
    t_ru, t_dl = (t_cross, none) if chirality == "L" else (none, t_cross)
    return GridGates(sig[..., 0], sig[..., 1], t_rl, t_ru, t_dl, t_du, sig[..., 5], sig[..., 6],
                     sig[..., 7])  # fmt: skip


def _check_choice(name: str, value: object, choices: Sequence[object]) -> None:
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


class PLSTM2D(nn.Module):
    """A pLSTM layer over a grid: ``(B, H, W, input_size) -> (B, H, W, hidden_size)``.

    ``q, k, v`` are linear maps of the input (``heads`` heads of ``d = hidden_size / heads``),
    shared by the scan directions; each direction has its own gates (:func:`pmode_gates` or
    :func:`dmode_gates` of a linear map of the input), runs the grid operator on the grid
    flipped so that its corner is the origin (all directions in one batch), and the
    directions' outputs (flipped back) are averaged. Gate weights start at zero; the source,
    mark and direct biases at ``gate_bias``, the transition biases at ``transition_bias``;
    P-mode's orientation biases are spread over ``[-2, 2]`` across heads (one head: 0), as in
    the reference code.

    Args:
        input_size: width of the input at each node.
        hidden_size: ``q/k/v`` width and output width.
        heads: number of heads; must divide ``hidden_size``.
        mode: ``"P"`` (propagation) or ``"D"`` (diffusion), see :data:`MODES`.
        chirality: D-mode's kept cross transition, ``"L"`` or ``"R"``.
        directions: 1, 2 or 4 scan directions (see :data:`DIRECTIONS`).
        backend: ``"wavefront"`` (default) or ``"reference"``.
        gate_bias, transition_bias, transition_scale: gate initialisation and scale.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        heads: int = 1,
        mode: str = "P",
        chirality: str = "L",
        directions: int = 4,
        backend: str = "wavefront",
        gate_bias: float = 0.0,
        transition_bias: float = 1.0,
        transition_scale: float = 5.0,
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        check_heads(hidden_size, heads)
        _check_choice("mode", mode, MODES)
        _check_choice("chirality", chirality, CHIRALITIES)
        _check_choice("directions", directions, DIRECTIONS)
        _check_choice("backend", backend, GRID_BACKENDS)
        if not transition_scale > 0:
            raise ValueError(f"transition_scale must be positive, got {transition_scale!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.heads = heads
        self.head_dim = hidden_size // heads
        self.mode = mode
        self.chirality = chirality
        self.directions = directions
        self.backend = backend
        self.transition_scale = float(transition_scale)
        names = MODE_GATES[mode]
        n_gates = directions * heads * len(names)
        self.weight = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_gates = nn.Parameter(torch.zeros(n_gates, input_size))
        bias = torch.full((directions, heads, len(names)), float(gate_bias))
        for i, name in enumerate(names):
            if name in ("transition", "t_rl", "t_du", "t_cross"):
                bias[..., i] = float(transition_bias)
            elif name == "orientation":
                bias[..., i] = torch.linspace(-2.0, 2.0, heads) if heads > 1 else 0.0
        self.bias_gates = nn.Parameter(bias.flatten())
        bound = 1.0 / math.sqrt(input_size)
        nn.init.uniform_(self.weight, -bound, bound)

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[-1] != self.input_size:
            raise ValueError(
                f"x must be (B, H, W, input_size={self.input_size}), got {tuple(x.shape)}"
            )
        if x.shape[1] == 0 or x.shape[2] == 0:
            raise ValueError(f"x must have a grid of at least 1 x 1 nodes, got {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, H, W, input_size) -> (B, H, W, hidden_size)``."""
        self._check_input(x)
        B, H, W, _ = x.shape
        nh, d = self.heads, self.head_dim
        qkv = F.linear(x, self.weight).reshape(B, H, W, 3, nh, d).permute(3, 0, 4, 1, 2, 5)
        n = len(MODE_GATES[self.mode])
        pre = F.linear(x, self.weight_gates, self.bias_gates)
        pre = pre.reshape(B, H, W, self.directions, nh, n).permute(3, 0, 4, 1, 2, 5)
        flips = [
            [dim for dim, f in ((2, flip_rows), (3, flip_cols)) if f]
            for flip_rows, flip_cols in _FLIPS[self.directions]
        ]

        def flip(t: Tensor, dims: list[int]) -> Tensor:
            return t.flip(dims) if dims else t

        # the directions run as one batch: each sees the grid flipped so that its corner is
        # the origin, and its output is flipped back
        def stacked(t: Tensor) -> Tensor:
            return torch.cat([flip(t, dims) for dims in flips], 0)

        pre_all = torch.cat([flip(pre[i], dims) for i, dims in enumerate(flips)], 0)
        if self.mode == "P":
            gates = pmode_gates(pre_all, self.transition_scale)
        else:
            gates = dmode_gates(pre_all, self.chirality, self.transition_scale)
        y = plstm2d(stacked(qkv[0]), stacked(qkv[1]), stacked(qkv[2]), gates, backend=self.backend)
        out = sum(
            (flip(part, dims) for part, dims in zip(torch.split(y, B, 0), flips, strict=True)),
            x.new_zeros(B, nh, H, W, d),
        )
        out = out / self.directions
        return out.permute(0, 2, 3, 1, 4).reshape(B, H, W, self.hidden_size)

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, heads={self.heads}, "
            f"mode={self.mode!r}, directions={self.directions}, backend={self.backend!r}"
        )


def _grid_pair(name: str, value: object) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, tuple | list)
        or len(value) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in value)
    ):
        raise ValueError(f"{name} must be a positive int or a pair (H, W) of them, got {value!r}")
    return int(value[0]), int(value[1])


class PLSTMVision(nn.Module):
    """A small pLSTM image classifier: pixels (or patches) of a grid -> class scores.

    ``x`` is ``(B, H * W, C)`` (the grid read in raster order, as the sequence tasks give it)
    or ``(B, H, W, C)``. Patches of ``patch_size x patch_size`` nodes are embedded linearly
    (plus a learned position embedding) into ``hidden_size``; then ``num_layers`` residual
    blocks ``z = z + W_o PLSTM2D(LayerNorm(z))``, each followed by a residual two-layer GELU
    MLP; then a LayerNorm, the mean over the grid and a linear classifier.

    Args:
        input_size: ``C``, channels per pixel.
        output_size: number of classes.
        grid: ``(H, W)`` of the input (or one int for a square grid).
        patch_size: side of a patch; must divide both ``H`` and ``W``.
        hidden_size, heads, num_layers: widths and depth.
        mode, chirality, directions, backend: passed to :class:`PLSTM2D`.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        *,
        grid: int | Sequence[int] = (8, 8),
        patch_size: int = 1,
        hidden_size: int = 32,
        heads: int = 2,
        num_layers: int = 1,
        mode: str = "P",
        chirality: str = "L",
        directions: int = 4,
        backend: str = "wavefront",
    ) -> None:
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("output_size", output_size)
        check_positive_int("patch_size", patch_size)
        check_positive_int("num_layers", num_layers)
        H, W = _grid_pair("grid", tuple(grid) if isinstance(grid, Sequence) else grid)
        if H % patch_size or W % patch_size:
            raise ValueError(f"patch_size must divide both grid sides {(H, W)}, got {patch_size}")
        self.input_size = input_size
        self.output_size = output_size
        self.grid = (H, W)
        self.patch_size = patch_size
        self.hidden_size = hidden_size
        gh, gw = H // patch_size, W // patch_size
        self.embed = nn.Linear(input_size * patch_size * patch_size, hidden_size)
        self.position = nn.Parameter(torch.randn(gh, gw, hidden_size) * 0.02)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden_size) for _ in range(num_layers))
        self.mixers = nn.ModuleList(
            PLSTM2D(
                hidden_size,
                hidden_size,
                heads=heads,
                mode=mode,
                chirality=chirality,
                directions=directions,
                backend=backend,
            )
            for _ in range(num_layers)
        )
        self.outs = nn.ModuleList(nn.Linear(hidden_size, hidden_size) for _ in range(num_layers))
        self.mlp_norms = nn.ModuleList(nn.LayerNorm(hidden_size) for _ in range(num_layers))
        self.mlps = nn.ModuleList(
            nn.Sequential(
                nn.Linear(hidden_size, 2 * hidden_size),
                nn.GELU(),
                nn.Linear(2 * hidden_size, hidden_size),
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, output_size)

    def to_grid(self, x: Tensor) -> Tensor:
        """``(B, H * W, C)`` or ``(B, H, W, C)`` -> ``(B, H, W, C)``, checked against ``grid``
        and ``input_size`` (``ValueError`` naming ``x`` otherwise)."""
        H, W = self.grid
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a tensor, got {type(x).__name__}")
        if x.dim() == 3 and x.shape[1:] == (H * W, self.input_size):
            return x.reshape(x.shape[0], H, W, self.input_size)
        if x.dim() == 4 and x.shape[1:] == (H, W, self.input_size):
            return x
        raise ValueError(
            f"x must be (B, {H * W}, {self.input_size}) (raster order) or "
            f"(B, {H}, {W}, {self.input_size}) for grid={self.grid}, got {tuple(x.shape)}"
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x -> (B, output_size)`` class scores (see the class docstring for ``x``)."""
        g = self.to_grid(x)
        B, H, W, C = g.shape
        p = self.patch_size
        g = g.reshape(B, H // p, p, W // p, p, C).permute(0, 1, 3, 2, 4, 5)
        z = self.embed(g.reshape(B, H // p, W // p, p * p * C)) + self.position
        for norm, mixer, out, mlp_norm, mlp in zip(
            self.norms, self.mixers, self.outs, self.mlp_norms, self.mlps, strict=True
        ):
            z = z + out(mixer(norm(z)))
            z = z + mlp(mlp_norm(z))
        scores: Tensor = self.head(self.norm(z).mean((1, 2)))
        return scores


def plstm_vision(input_size: int, output_size: int, **kwargs: object) -> PLSTMVision:
    """Builder of :class:`PLSTMVision` for the model registry (``create_model``)."""
    return PLSTMVision(input_size, output_size, **kwargs)  # type: ignore[arg-type]
