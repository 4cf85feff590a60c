"""AL-RNN: the cell's equation against a float64 oracle, the conformance kit, symbolic codes on
networks whose regions are known, teacher forcing (sparse, generalised with a fixed or an
adaptive alpha), bad hyperparameters."""

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
from rnnkit.models.dsr import (
    ALRNNReconstructor,
    adaptive_alpha,
    growth_estimate,
    parameter_bound,
    teacher_force,
)


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
        ({"alpha": "adaptve"}, "alpha"),
        ({"alpha": "adaptive", "alpha_estimate": "median"}, "alpha_estimate"),
        ({"alpha_estimate": None}, "alpha_estimate"),
        ({"alpha": "adaptive", "alpha_every": 0}, "alpha_every"),
        ({"alpha": 0.2, "alpha_estimate": "max"}, "alpha_estimate needs alpha='adaptive'"),
        ({"alpha_every": 3}, "alpha_every needs alpha='adaptive'"),
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


# --- generalised teacher forcing with an adaptive alpha (Hess et al., ICML 2023) -------------


def _expanding_model(estimate: str = "geometric", every: int = 1) -> ALRNNReconstructor:
    """A float64 adaptive-GTF model with a W large enough that some steps expand (G > 1) and
    the rectified units switch."""
    torch.manual_seed(11)
    model = ALRNNReconstructor(
        2,
        hidden_size=5,
        pwl_units=2,
        tau=1,
        alpha="adaptive",
        alpha_estimate=estimate,
        alpha_every=every,
    ).double()
    with torch.no_grad():
        model.cell.recurrent.normal_(0.0, 0.6)
        assert model.cell.bias is not None
        model.cell.bias.normal_(0.0, 0.3)
        model.latent_init.normal_(0.0, 0.5)
    return model


def test_jacobian_is_autograds_jacobian_of_one_step() -> None:
    model = _expanding_model()
    cell = model.cell
    states = torch.randn(3, 6, 5, dtype=torch.float64)
    regions = {int(c) for c in cell.region_codes(states).reshape(-1)}
    assert len(regions) >= 3  # the slopes of the rectified units vary
    jac = cell.jacobian(states)  # (3, 6, 5, 5)
    for b in range(3):
        for t in range(6):
            want = torch.autograd.functional.jacobian(cell.step_map, states[b, t])
            torch.testing.assert_close(jac[b, t], want, rtol=0, atol=1e-14)
    # the reconstructor's per-region Jacobians stand for every step
    distinct, index = model.forcing_jacobians(states)
    assert distinct.shape[0] == len(regions) and index.shape == (3, 6)
    torch.testing.assert_close(distinct[index], jac, rtol=0, atol=0)


def test_forcing_jacobians_put_a_zero_rectified_unit_in_the_off_region() -> None:
    """A rectified unit at exactly 0 has slope 0 (``[z > 0]``), as at the first step of a
    fresh model (``B = 0``, so the latents start at 0): such a state must not share a region,
    and so a Jacobian, with states whose unit is positive."""
    model = _expanding_model()
    states = torch.randn(2, 4, 5, dtype=torch.float64)
    states[..., 3:] = states[..., 3:].abs() + 0.1  # every rectified unit on
    states[0, 0, 3:] = 0.0  # first occurrence: the off region's representative
    states[1, 2, 4] = 0.0
    distinct, index = model.forcing_jacobians(states)
    jac = model.cell.jacobian(states)
    torch.testing.assert_close(distinct[index], jac, rtol=0, atol=0)
    assert distinct.shape[0] == 3
    # the same convention as the regions (a unit at 0 is inactive): J is its region's map
    codes = model.cell.region_codes(states)
    for b in range(2):
        for t in range(4):
            want = model.cell.region_jacobian(int(codes[b, t]))
            torch.testing.assert_close(jac[b, t], want.to(jac.dtype), rtol=0, atol=0)


def test_parameter_bound_takes_the_largest_magnitude_of_a() -> None:
    """``max_i |A_i| + ||W||_2`` with a negative ``A_i`` of the largest magnitude: a float64
    oracle, and a bound on the Jacobian's norm in every region."""
    model = _expanding_model()
    cell = model.cell
    with torch.no_grad():
        cell.diag.copy_(torch.tensor([0.2, -0.9, 0.5, 0.1, -0.3], dtype=torch.float64))
    w_norm = float(torch.linalg.svdvals(cell.recurrent.detach())[0])
    assert float(parameter_bound(cell)) == pytest.approx(0.9 + w_norm, rel=1e-12)
    for code in range(cell.num_regions):
        j = cell.region_jacobian(code).detach()
        assert float(torch.linalg.svdvals(j)[0]) <= float(parameter_bound(cell)) + 1e-12


def _oracle_forced_states(model: ALRNNReconstructor, x: Tensor, alpha: float) -> list[Tensor]:
    """Per sequence, the states the cell steps from under forcing with ``alpha`` (tau = 1),
    one float64 vector at a time from the equations."""
    a = model.cell.diag.detach()
    w = model.cell.recurrent.detach()
    bias = model.cell.bias
    assert bias is not None
    h = bias.detach()
    b_mat = model.latent_init.detach()
    n, m, p = 2, 5, 2
    out = []
    for seq in x:
        z = torch.cat((seq[0], seq[0] @ b_mat))
        states = []
        for x_t in seq:
            z = torch.cat(((1 - alpha) * z[:n] + alpha * x_t, z[n:]))
            states.append(z.clone())
            phi = torch.cat((z[: m - p], torch.clamp(z[m - p :], min=0.0)))
            z = a * z + w @ phi + h
        out.append(torch.stack(states))
    return out


def _oracle_growth(model: ALRNNReconstructor, x: Tensor, alpha: float, estimate: str) -> float:
    a = model.cell.diag.detach()
    w = model.cell.recurrent.detach()
    jacs = []
    for states in _oracle_forced_states(model, x, alpha):
        seq_j = []
        for z in states:
            d = torch.tensor([1.0, 1.0, 1.0, float(z[3] > 0), float(z[4] > 0)], dtype=z.dtype)
            seq_j.append(torch.diag(a) + w @ torch.diag(d))
        jacs.append(seq_j)
    norms = [[float(torch.linalg.svdvals(j)[0]) for j in seq] for seq in jacs]
    if estimate == "max":
        return max(max(row) for row in norms)
    if estimate == "mean":
        mean = sum(j for seq in jacs for j in seq) / sum(len(seq) for seq in jacs)
        return float(torch.linalg.svdvals(mean)[0])
    return max(math.exp(sum(math.log(v) for v in row) / len(row)) for row in norms)


@pytest.mark.parametrize("estimate", ["geometric", "max", "mean"])
def test_adaptive_alpha_against_a_float64_computation(estimate: str) -> None:
    model = _expanding_model(estimate)
    x = torch.randn(3, 6, 2, dtype=torch.float64)
    # before any estimate: alpha from the parameter bound max|A| + ||W||_2
    bound = float(model.cell.diag.abs().max()) + float(
        torch.linalg.svdvals(model.cell.recurrent.detach())[0]
    )
    assert float(parameter_bound(model.cell)) == pytest.approx(bound, rel=1e-12)
    model(x, targets=x)
    alpha0 = 1 - 1 / bound
    growth = _oracle_growth(model, x, alpha0, estimate)
    assert growth > 1.0  # the case where alpha matters
    assert model.growth == pytest.approx(growth, rel=1e-10)
    assert model.alpha == pytest.approx(1 - 1 / growth, rel=1e-10)
    assert f"now {model.alpha:.4g}" in repr(model)
    # the estimate takes effect from the next batch: its forcing uses that alpha
    fixed = ALRNNReconstructor(2, hidden_size=5, pwl_units=2, tau=1, alpha=model.alpha).double()
    fixed.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("gtf_")})
    x2 = torch.randn(2, 6, 2, dtype=torch.float64)
    torch.testing.assert_close(model(x2, targets=x2), fixed(x2, targets=x2))


def test_alpha_is_zero_when_the_dynamics_contract() -> None:
    assert adaptive_alpha(0.5) == adaptive_alpha(1.0) == 0.0
    assert adaptive_alpha(4.0) == 0.75
    assert adaptive_alpha(math.inf) == adaptive_alpha(math.nan) == 1.0
    x = torch.randn(2, 8, 2, dtype=torch.float64)
    for estimate in ("geometric", "max", "mean", "bound"):
        model = _expanding_model(estimate)
        with torch.no_grad():
            model.cell.diag.fill_(0.5)
            model.cell.recurrent.mul_(0.3 / float(torch.linalg.svdvals(model.cell.recurrent)[0]))
        for _ in range(2):
            model(x, targets=x)
            assert 0.0 < model.growth <= 0.8 + 1e-12 and model.alpha == 0.0, estimate


def test_adaptive_alpha_of_one_forces_like_sparse_forcing_without_gradient() -> None:
    model = _expanding_model(every=2)
    with torch.no_grad():  # as if the last estimate had been G = inf, and not due this batch
        model.gtf_alpha.fill_(1.0)
        model.gtf_batches.fill_(1)
    sparse = ALRNNReconstructor(2, hidden_size=5, pwl_units=2, tau=1, alpha=1.0).double()
    sparse.load_state_dict({k: v for k, v in model.state_dict().items() if "gtf_" not in k})
    x = torch.randn(2, 6, 2, dtype=torch.float64)
    outs, grads = [], []
    for net in (model, sparse):
        out = net(x, targets=x)
        out.sum().backward()
        outs.append(out.detach())
        grads.append([p.grad for p in net.parameters()])
    assert model.alpha == 1.0 and int(model.gtf_batches) == 2
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    # the forcing at the adaptive alpha of 1 replaces the readouts: no gradient reaches them
    z = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    forced = teacher_force(z, torch.randn(4, 2, dtype=torch.float64), model.alpha)
    forced.sum().backward()
    assert z.grad is not None and bool((z.grad[:, :2] == 0).all())


def test_adaptive_alpha_updates_in_training_only_and_is_saved() -> None:
    model = _expanding_model(every=3)
    x = torch.randn(2, 5, 2, dtype=torch.float64)
    model.eval()
    model(x, targets=x)
    model(x)
    assert int(model.gtf_batches) == 0 and math.isnan(model.growth)
    model.train()
    seen = []
    for _ in range(4):
        model(x, targets=x)
        seen.append(model.growth)
    # batch 0 estimates, batches 1 and 2 keep it, batch 3 estimates again
    assert seen[0] == seen[1] == seen[2] and int(model.gtf_batches) == 4
    copy = _expanding_model(every=3)
    copy.load_state_dict(model.state_dict())
    assert copy.alpha == model.alpha and int(copy.gtf_batches) == 4
    fixed = ALRNNReconstructor(2, hidden_size=5, pwl_units=2)
    assert not any("gtf_" in k for k in fixed.state_dict())
    assert math.isnan(fixed.growth) and fixed.alpha == 1.0
    fixed.alpha = 0.25  # a fixed alpha can be changed (checked); an adaptive one cannot
    assert fixed.alpha == 0.25 and "alpha=0.25" in repr(fixed)
    with pytest.raises(ValueError, match="alpha"):
        fixed.alpha = 1.5
    with pytest.raises(ValueError, match="alpha"):
        model.alpha = 0.5


def test_growth_estimate_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="estimate"):
        growth_estimate(torch.eye(3).expand(1, 2, 3, 3), "bound")
    with pytest.raises(ValueError, match="jacobians"):
        growth_estimate(torch.eye(3), "max")
