"""pLSTM over 2D grids: the wavefront operator against the node-by-node recursion (value and
gradient, odd grids, P- and D-mode), against the 1D cell on rows, a hand-computed 2 x 2 grid,
NaN confinement, bad input and the vision model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from rnnkit.models.cells.plstm import plstm_chunked
from rnnkit.models.plstm2d import (
    PLSTM2D,
    GridGates,
    PLSTMVision,
    dmode_gates,
    plstm2d_reference,
    plstm2d_wavefront,
    pmode_gates,
)

GRIDS = [(1, 1), (1, 4), (4, 1), (3, 5), (5, 3)]


def _operands(H: int, W: int, *, B: int = 2, nh: int = 2, dk: int = 3, dv: int = 2):
    g = torch.Generator().manual_seed(H * 31 + W)
    q, k = (torch.randn(B, nh, H, W, dk, generator=g, dtype=torch.float64) for _ in range(2))
    v = torch.randn(B, nh, H, W, dv, generator=g, dtype=torch.float64)
    return q, k, v, g


def _random_gates(shape: tuple[int, ...], g: torch.Generator) -> GridGates:
    """Independent gates in ``(-1, 1)`` (none of the modes' couplings: the operator alone)."""
    return GridGates(
        *(torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1 for _ in range(9))
    )


def _assert_same_value_and_grads(gates_of, q: Tensor, k: Tensor, v: Tensor, pre: Tensor) -> None:
    results = []
    for op in (plstm2d_reference, plstm2d_wavefront):
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v, pre)]
        y = op(*leaves[:3], gates_of(leaves[3]))
        cot = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
        (y * cot).sum().backward()
        results.append([y.detach()] + [t.grad for t in leaves])
    for got, want in zip(results[1], results[0], strict=True):
        assert got is not None and want is not None
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("H", "W"), GRIDS)
def test_wavefront_equals_recursion_with_free_gates(H: int, W: int) -> None:
    q, k, v, g = _operands(H, W)
    pre = torch.rand(2, 2, H, W, 9, generator=g, dtype=torch.float64) * 2 - 1
    _assert_same_value_and_grads(lambda p: GridGates(*p.unbind(-1)), q, k, v, pre)


@pytest.mark.parametrize(("H", "W"), GRIDS)
def test_wavefront_equals_recursion_in_pmode(H: int, W: int) -> None:
    q, k, v, g = _operands(H, W)
    pre = torch.randn(2, 2, H, W, 5, generator=g, dtype=torch.float64)
    _assert_same_value_and_grads(pmode_gates, q, k, v, pre)


@pytest.mark.parametrize(("H", "W"), GRIDS)
@pytest.mark.parametrize("chirality", ["L", "R"])
def test_wavefront_equals_recursion_in_dmode(H: int, W: int, chirality: str) -> None:
    q, k, v, g = _operands(H, W)
    pre = torch.randn(2, 2, H, W, 8, generator=g, dtype=torch.float64)
    _assert_same_value_and_grads(lambda p: dmode_gates(p, chirality), q, k, v, pre)


def test_pmode_splits_each_edge_between_the_outgoing_edges() -> None:
    pre = torch.randn(3, 2, 4, 5, 5, dtype=torch.float64) * 3
    gt = pmode_gates(pre)
    for t in (gt.t_rl, gt.t_dl, gt.source_r, gt.source_d):
        assert bool(((t >= 0) & (t <= 1)).all())
    torch.testing.assert_close(gt.t_rl + gt.t_dl, torch.ones_like(gt.t_rl))
    torch.testing.assert_close(gt.t_ru + gt.t_du, torch.ones_like(gt.t_ru))
    torch.testing.assert_close(gt.source_r + gt.source_d, torch.ones_like(gt.t_ru))
    assert torch.equal(gt.mark_l, gt.mark_u)


@pytest.mark.parametrize(
    ("chirality", "zero", "kept"), [("L", "t_dl", "t_ru"), ("R", "t_ru", "t_dl")]
)
def test_dmode_prunes_one_cross_transition(chirality: str, zero: str, kept: str) -> None:
    pre = torch.randn(2, 1, 3, 3, 8, dtype=torch.float64) * 3
    gt = dmode_gates(pre, chirality)
    assert torch.equal(getattr(gt, zero), torch.zeros_like(gt.t_rl))
    assert bool((getattr(gt, kept).abs() <= 1).all() and (gt.t_rl.abs() <= 1).all())


def test_rows_without_vertical_edges_are_the_1d_cell() -> None:
    """With nothing flowing down (``S^d = T^dl = T^du = T^ru = M^u = 0``) each row is a 1D
    pLSTM with source ``S^r``, transition ``T^rl`` and mark ``M^l``: compare with the 1D
    chunked form on the rows."""
    H, W = 3, 7
    q, k, v, g = _operands(H, W)
    free = _random_gates((2, 2, H, W), g)
    zero = torch.zeros_like(free.t_rl)
    gates = free._replace(source_d=zero, t_dl=zero, t_du=zero, t_ru=zero, mark_u=zero)
    y = plstm2d_wavefront(q, k, v, gates)

    def rows(t: Tensor) -> Tensor:  # (B, h, H, W, ...) -> (B * H, h, W, ...)
        return t.transpose(1, 2).flatten(0, 1)

    y1, _ = plstm_chunked(
        rows(q), rows(k), rows(v), rows(gates.source_r), rows(gates.t_rl), rows(gates.mark_l),
        rows(gates.direct), torch.zeros(2 * H, 2, 3, 2, dtype=torch.float64), chunk_size=3,
    )  # fmt: skip
    torch.testing.assert_close(y, y1.unflatten(0, (2, H)).transpose(1, 2), rtol=1e-12, atol=1e-12)


def test_a_two_by_two_grid_by_hand() -> None:
    """One head, ``d_k = d_v = 1``: every memory is a number; the bottom-right node reads both
    of its neighbours, each of which carries the top-left node's write."""
    q = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    k = torch.tensor([[0.5, -1.0], [2.0, 1.0]], dtype=torch.float64)
    v = torch.tensor([[1.0, 3.0], [-2.0, 0.5]], dtype=torch.float64)
    vals = {"source_r": 0.2, "source_d": 0.3, "t_rl": 0.5, "t_ru": 0.4, "t_dl": 0.6,
            "t_du": 0.7, "mark_l": 0.8, "mark_u": 0.9, "direct": 0.1}  # fmt: skip
    gates = GridGates(
        **{n: torch.full((1, 1, 2, 2), x, dtype=torch.float64) for n, x in vals.items()}
    )
    kv = k * v
    r00, d00 = 0.2 * kv[0, 0], 0.3 * kv[0, 0]
    d01 = 0.6 * r00 + 0.3 * kv[0, 1]  # from the left only
    r10 = 0.4 * d00 + 0.2 * kv[1, 0]  # from above only
    want = torch.stack([
        torch.stack([0.1 * q[0, 0] * kv[0, 0], q[0, 1] * 0.8 * r00 + 0.1 * q[0, 1] * kv[0, 1]]),
        torch.stack([q[1, 0] * 0.9 * d00 + 0.1 * q[1, 0] * kv[1, 0],
                     q[1, 1] * (0.8 * r10 + 0.9 * d01) + 0.1 * q[1, 1] * kv[1, 1]]),
    ])  # fmt: skip
    for op in (plstm2d_reference, plstm2d_wavefront):
        y = op(q[None, None, ..., None], k[None, None, ..., None], v[None, None, ..., None], gates)
        torch.testing.assert_close(y[0, 0, ..., 0], want, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("backend", ["reference", "wavefront"])
@pytest.mark.parametrize("mode", ["P", "D"])
def test_nan_stays_in_the_nodes_downstream(backend: str, mode: str) -> None:
    """One direction: a NaN at node (1, 2) reaches exactly the nodes below and right of it."""
    torch.manual_seed(0)
    layer = PLSTM2D(3, 4, heads=2, mode=mode, directions=1, backend=backend).double()
    x = torch.randn(2, 4, 5, 3, dtype=torch.float64)
    x[1, 1, 2, 0] = float("nan")
    y = layer(x)
    nan = torch.isnan(y).any(-1)
    want = torch.zeros(2, 4, 5, dtype=torch.bool)
    want[1, 1:, 2:] = True
    assert torch.equal(nan, want)


@pytest.mark.parametrize("mode", ["P", "D"])
@pytest.mark.parametrize("directions", [1, 2, 4])
def test_layer_backends_agree(mode: str, directions: int) -> None:
    torch.manual_seed(0)
    layer = PLSTM2D(3, 4, heads=2, mode=mode, directions=directions).double()
    with torch.no_grad():
        layer.weight_gates.normal_()
    x = torch.randn(2, 3, 5, 3, dtype=torch.float64)
    y = layer(x)
    layer.backend = "reference"
    torch.testing.assert_close(y, layer(x), rtol=1e-10, atol=1e-12)
    if directions > 1:  # the directions see the grid from different corners
        layer_one = PLSTM2D(3, 4, heads=2, mode=mode, directions=1).double()
        assert layer_one(x).shape == y.shape


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"mode": "X"}, "mode"),
        ({"mode": "p"}, "mode"),
        ({"chirality": "up"}, "chirality"),
        ({"directions": 3}, "directions"),
        ({"backend": "fast"}, "backend"),
        ({"heads": 3}, "heads"),
    ],
)
def test_bad_layer_configuration_names_the_argument(kw: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        PLSTM2D(3, 4, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"grid": (8, 8), "patch_size": 3}, "patch_size"),
        ({"grid": (0, 8)}, "grid"),
        ({"grid": (8, 8, 1)}, "grid"),
        ({"mode": "Q"}, "mode"),
    ],
)
def test_bad_model_configuration_names_the_argument(kw: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        PLSTMVision(1, 10, **kw)  # type: ignore[arg-type]


def test_inputs_that_do_not_fit_the_grid_name_x() -> None:
    model = PLSTMVision(1, 10, grid=(4, 6), hidden_size=8)
    layer = PLSTM2D(3, 4)
    for bad in (torch.randn(2, 25, 1), torch.randn(2, 6, 4, 1), torch.randn(2, 24, 2)):
        with pytest.raises(ValueError, match="x must be"):
            model(bad)
    for bad in (torch.randn(2, 4, 3), torch.randn(2, 3, 3, 2), torch.randn(2, 0, 3, 3)):
        with pytest.raises(ValueError, match="x must"):
            layer(bad)


def test_raster_and_grid_inputs_give_the_same_scores() -> None:
    torch.manual_seed(0)
    model = PLSTMVision(2, 5, grid=(4, 6), patch_size=2, hidden_size=8, heads=2, num_layers=2)
    x = torch.randn(3, 4, 6, 2)
    torch.testing.assert_close(model(x.reshape(3, 24, 2)), model(x))
    assert model(x).shape == (3, 5)


def test_registered_model_builds() -> None:
    from rnnkit.models import create_model

    model = create_model("plstm_vision", input_size=1, output_size=10, grid=[8, 8], mode="D")
    assert isinstance(model, PLSTMVision) and model.grid == (8, 8)
    assert model(torch.zeros(2, 64, 1)).shape == (2, 10)


def test_scale_of_the_output() -> None:
    """The read-out is scaled by ``1 / sqrt(d_k)``: doubling ``d_k`` with duplicated ``q, k``
    leaves ``q . k / sqrt(d_k)`` scaled by ``sqrt(2)``."""
    q, k, v, g = _operands(2, 3, dk=2)
    gates = _random_gates((2, 2, 2, 3), g)
    y1 = plstm2d_wavefront(q, k, v, gates)
    y2 = plstm2d_wavefront(torch.cat((q, q), -1), torch.cat((k, k), -1), v, gates)
    torch.testing.assert_close(y2, y1 * math.sqrt(2.0), rtol=1e-12, atol=1e-12)
