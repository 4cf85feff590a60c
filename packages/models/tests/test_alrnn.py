"""AL-RNN: the cell's equation against a float64 oracle, the conformance kit, symbolic codes on
networks whose regions are known, teacher forcing, bad hyperparameters."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

from rnnkit.core.cell import Cell
from rnnkit.core.testing import CellConformance
from rnnkit.models import create_model
from rnnkit.models.cells import ALRNN, region_codes, symbolic_graph
from rnnkit.models.cells.alrnn import phi_star
from rnnkit.models.dsr import ALRNNReconstructor, teacher_force


class TestALRNN(CellConformance):
    def make_cell(self) -> Cell[Any]:
        torch.manual_seed(0)
        cell = ALRNN(3, 5, pwl_units=2)
        with torch.no_grad():  # a W large enough that the rectified units matter
            cell.recurrent.normal_(0.0, 0.4)
            assert cell.bias is not None
            cell.bias.normal_(0.0, 0.3)
        return cell


def _oracle(cell: ALRNN, x: Tensor) -> tuple[list[list[list[float]]], list[float]]:
    """The equation in plain Python floats (float64), one sequence and one unit at a time:
    ``(B, T, M)`` outputs as nested lists, and the last sequence's final state."""
    a = cell.diag.detach().double().tolist()
    w = cell.recurrent.detach().double().tolist()
    c = cell.weight_ih.detach().double().tolist()
    m, p = cell.hidden_size, cell.pwl_units
    h = cell.bias.detach().double().tolist() if cell.bias is not None else [0.0] * m
    xs = x.double().tolist()
    out: list[list[list[float]]] = []
    z = [0.0] * m
    for seq in xs:
        z = [0.0] * m
        rows = []
        for xt in seq:
            phi = [max(v, 0.0) if i >= m - p else v for i, v in enumerate(z)]
            z = [
                a[i] * z[i]
                + sum(w[i][j] * phi[j] for j in range(m))
                + sum(c[i][k] * xt[k] for k in range(len(xt)))
                + h[i]
                for i in range(m)
            ]
            rows.append(z)
        out.append(rows)
    return out, z


@pytest.mark.parametrize("pwl_units", [0, 2, 5])
def test_alrnn_matches_its_equation_in_float64(pwl_units: int) -> None:
    torch.manual_seed(2)
    cell = ALRNN(3, 5, pwl_units=pwl_units, dtype=torch.float64)
    with torch.no_grad():
        cell.recurrent.normal_(0.0, 0.5)
        assert cell.bias is not None
        cell.bias.normal_(0.0, 0.5)
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    y, state = cell(x)
    want, _ = _oracle(cell, x)
    torch.testing.assert_close(y, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state.z, y[:, -1])
    # float32 stays within float32 rounding of the float64 oracle
    cell32 = ALRNN(3, 5, pwl_units=pwl_units)
    cell32.load_state_dict({k: v.float() for k, v in cell.state_dict().items()})
    y32, _ = cell32(x.float())
    err = (y32.double() - y).norm() / y.norm()
    assert float(err) < 1e-5


def test_initialisation_is_the_papers() -> None:
    torch.manual_seed(3)
    cell = ALRNN(4, 20)
    a = cell.diag.detach()
    assert bool((a > 0).all()) and bool((a <= 1 + 1e-6).all())
    assert cell.bias is not None and bool((cell.bias == 0).all())
    assert 0.005 < float(cell.recurrent.std()) < 0.015
    assert cell.num_regions == 4


def test_only_the_last_p_units_are_rectified() -> None:
    cell = ALRNN(1, 3, pwl_units=1, dtype=torch.float64)
    with torch.no_grad():
        cell.diag.zero_()
        cell.recurrent.copy_(torch.eye(3, dtype=torch.float64))
    z = torch.tensor([[-1.0, -2.0, -3.0]], dtype=torch.float64)
    # px = 0: z_next = W Φ*(z) = (-1, -2, 0): units 1-2 linear, unit 3 rectified
    out = cell.step_map(z)
    torch.testing.assert_close(out, torch.tensor([[-1.0, -2.0, 0.0]], dtype=torch.float64))
    # the cell's one-op Φ* is the split-ReLU-concatenate definition
    zs = torch.randn(4, 7, 3, dtype=torch.float64)
    for p in (0, 1, 3):
        c = ALRNN(1, 3, pwl_units=p, dtype=torch.float64)
        assert torch.equal(c.phi(zs), phi_star(zs, p))


def _cycle_net() -> ALRNN:
    """M = 4, P = 3, A = 0, h = 0, W sends rectified unit k to rectified unit k+1 (mod 3) and
    keeps the linear unit at 0: from z = (0, 1, -1, -1) the active unit walks 1 -> 2 -> 3."""
    cell = ALRNN(1, 4, pwl_units=3, dtype=torch.float64)
    w = torch.zeros(4, 4, dtype=torch.float64)
    w[2, 1] = w[3, 2] = w[1, 3] = 1.0
    w[1:, 1:] -= 0.5 * (w[1:, 1:] == 0).double()  # inactive units pushed below 0
    with torch.no_grad():
        cell.diag.zero_()
        cell.recurrent.copy_(w)
        assert cell.bias is not None
        cell.bias.zero_()
    return cell


def test_symbolic_codes_of_a_constructed_cycle() -> None:
    cell = _cycle_net()
    z = torch.tensor([[0.0, 1.0, -1.0, -1.0]], dtype=torch.float64)
    zs = []
    for _ in range(9):
        z = cell.step_map(z)
        zs.append(z)
    codes = cell.region_codes(torch.cat(zs))
    # unit M-P+k active -> bit k: the active unit walks 2nd, 3rd, 1st rectified unit
    assert codes.tolist() == [2, 4, 1] * 3
    graph = symbolic_graph(codes, cell.num_regions)
    want = torch.zeros(8, 8, dtype=torch.int64)
    want[2, 4], want[4, 1], want[1, 2] = 3, 3, 2
    assert torch.equal(graph, want)
    # in region 2 (only the 2nd rectified unit on) the Jacobian keeps only that column of W
    j = cell.region_jacobian(2)
    assert torch.equal(j[:, 2], cell.recurrent[:, 2].detach())
    assert bool((j[:, [1, 3]] == 0).all())


def test_symbolic_codes_of_the_reconstructor_alternate_on_a_flip() -> None:
    # A = -1 on both rectified units, W = 0: z_t = -z_{t-1}, regions alternate 1, 2, 1, 2
    model = ALRNNReconstructor(1, hidden_size=3, pwl_units=2, tau=1)
    with torch.no_grad():
        model.cell.diag.fill_(-1.0)
        model.cell.recurrent.zero_()
        model.latent_init.copy_(torch.tensor([[1.0, -1.0]]))
    codes, graph = model.symbolic_codes(torch.ones(2, 1), 6, transient=1)
    assert codes.tolist() == [[1, 2, 1, 2, 1, 2]] * 2
    assert graph[1, 2] == 6 and graph[2, 1] == 4 and int(graph.sum()) == 10


def test_region_codes_and_graph_edges() -> None:
    z = torch.tensor([[1.0, 0.0, 2.0], [-1.0, 3.0, -2.0]])
    assert region_codes(z, 2).tolist() == [2, 1]
    assert region_codes(z, 0).tolist() == [0, 0]
    with pytest.raises(ValueError, match="num_codes"):
        symbolic_graph(torch.tensor([0, 4]), 4)


def test_teacher_force_interpolates_the_readouts_only() -> None:
    z = torch.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    d = torch.tensor([[5.0]])
    assert teacher_force(z, d, 0.25).tolist() == [[2.0, 2.0, 3.0]]
    forced = teacher_force(z, d, 1.0)
    assert forced.tolist() == [[5.0, 2.0, 3.0]]
    forced.sum().backward()
    assert z.grad is not None and z.grad.tolist() == [[0.0, 1.0, 1.0]]


def test_sparse_forcing_resets_the_readouts_every_tau_steps() -> None:
    torch.manual_seed(4)
    model = ALRNNReconstructor(2, hidden_size=6, pwl_units=2, tau=3)
    x = torch.randn(1, 7, 2)
    forced = model(x, targets=x)
    free = model(x)
    torch.testing.assert_close(forced[:, :3], free[:, :3])  # no forcing before t = 3
    assert not torch.allclose(forced[:, 3:], free[:, 3:])
    # generalised forcing with alpha = 0 never forces: it is the free run
    gtf0 = ALRNNReconstructor(2, hidden_size=6, pwl_units=2, tau=1, alpha=0.0)
    gtf0.load_state_dict(model.state_dict())
    torch.testing.assert_close(gtf0(x, targets=x), free)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"pwl_units": 7}, "pwl_units"),
        ({"pwl_units": -1}, "pwl_units"),
        ({"tau": 0}, "tau"),
        ({"tau": 1.5}, "tau"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"hidden_size": 1}, "hidden_size"),
        ({"noise": -1.0}, "noise"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_argument(kwargs: dict[str, Any], name: str) -> None:
    cfg: dict[str, Any] = {"input_size": 2, "hidden_size": 6, **kwargs}
    with pytest.raises(ValueError, match=name):
        ALRNNReconstructor(**cfg)
    if name == "pwl_units":
        with pytest.raises(ValueError, match=name):
            ALRNN(2, 6, pwl_units=kwargs["pwl_units"])


def test_registered_model_builds() -> None:
    model = create_model("alrnn_dsr", input_size=3, output_size=3, pwl_units=1, tau=8)
    assert isinstance(model, ALRNNReconstructor) and model.pwl_units == 1
    y = model(torch.randn(2, 5, 3))
    assert y.shape == (2, 5, 3)


def _linear_system(steps: int) -> Tensor:
    """A damped rotation (a linear 2-D system): the AL-RNN's linear part can fit it exactly."""
    ang, r = 0.3, 0.995
    rot = r * torch.tensor(
        [[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]], dtype=torch.float64
    )
    x = torch.zeros(steps, 2, dtype=torch.float64)
    x[0] = torch.tensor([1.0, 0.0])
    for t in range(1, steps):
        x[t] = rot @ x[t - 1]
    return x.float()


def test_sparse_forcing_learns_a_rotation_beating_the_persistence_baseline() -> None:
    """A short run (about a second): 80 steps of sparse teacher forcing on a damped rotation
    must bring the free-running 24-step error under 2 % of persistence's (the untrained model,
    which decays to a point, is far above persistence)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 6-unit matrices: more threads only add contention
    try:
        _learn_rotation()
    finally:
        torch.set_num_threads(threads)


def _learn_rotation() -> None:
    torch.manual_seed(5)
    series = _linear_system(400)
    windows = series.unfold(0, 25, 20).permute(0, 2, 1)  # (N, 25, 2)
    x, y = windows[:, :-1], windows[:, 1:]
    model = ALRNNReconstructor(2, hidden_size=6, pwl_units=1, tau=5)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(80):
        loss = torch.nn.functional.mse_loss(model(x, targets=y), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        free = float(torch.nn.functional.mse_loss(model(x), y))
    persistence = float(torch.nn.functional.mse_loss(x, y))
    assert free < 0.02 * persistence, (free, persistence)
