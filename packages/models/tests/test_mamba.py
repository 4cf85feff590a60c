"""The Mamba-1 cell: a float64 oracle written from the paper's equations (values and gradients
on every backend that runs it), its initialisation, its state (scan and convolution window),
its construction checks and the networks built from it. The conformance kit runs it on every
backend (tests/test_conformance_registered.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import available_backends, backend_params

from rnnkit.core.selective import SelectiveDiagonalCell
from rnnkit.core.testing.numerics import assert_close
from rnnkit.models import create_model
from rnnkit.models.cells import Mamba, MambaState
from rnnkit.models.cells.mamba import inverse_softplus


def test_defaults_follow_the_paper() -> None:
    torch.manual_seed(0)
    cell = Mamba(32)
    assert isinstance(cell, SelectiveDiagonalCell)
    assert (cell.hidden_size, cell.d_state, cell.d_conv, cell.dt_rank) == (64, 16, 4, 2)
    assert (cell.input_size, cell.output_size) == (32, 32)
    # S4D-Real: A[e, n] = -(n + 1) for every channel; D = 1
    want_A = -torch.arange(1, 17, dtype=torch.float32).expand(64, -1)
    assert torch.allclose(-torch.exp(cell.A_log), want_A)
    assert torch.equal(cell.D, torch.ones(64))
    # the initial steps softplus(b_dt) are log-uniform in [dt_min, dt_max]
    dt = F.softplus(cell.dt_proj.bias)
    assert (dt >= 1e-3 * (1 - 1e-5)).all() and (dt <= 0.1 * (1 + 1e-5)).all()
    assert dt.log().std() > 0.5  # spread over the log range, not one value
    bound = cell.dt_rank**-0.5
    assert cell.dt_proj.weight.abs().max() <= bound
    assert cell.conv_weight.shape == (64, 4) and cell.x_proj.bias is None


def _oracle(
    cell: Mamba,
    x: torch.Tensor,
    params: dict[str, torch.Tensor],
    initial: tuple[torch.Tensor, torch.Tensor] | None = None,
    resets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gu and Dao (2023), Algorithm 2 and Section 3.6 with the reference code's choices (ZOH
    for ``A``, ``B_bar = dt B``), one example, channel, state entry and step at a time in
    float64, with the parameters taken from ``params`` (so gradients flow to them); none of
    the cell's helpers are used. ``initial`` is ``(h: (B, E, N), window: (B, E, K - 1))``, the
    convolution's last ``K - 1`` inputs, oldest first (zero by default and after a reset).
    Returns ``(out, final h, final window)``."""
    batch, time, _ = x.shape
    E, N, R, K = cell.hidden_size, cell.d_state, cell.dt_rank, cell.d_conv
    W_in, W_x = params["in_proj.weight"], params["x_proj.weight"]
    W_dt, b_dt = params["dt_proj.weight"], params["dt_proj.bias"]
    w_conv, b_conv = params["conv_weight"], params["conv_bias"]
    A_log, D, W_out = params["A_log"], params["D"], params["out_proj.weight"]
    zero = torch.zeros((), dtype=torch.float64)
    outs, hs, windows = [], [], []
    for b in range(batch):

        def fresh() -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
            h0 = [[zero for _ in range(N)] for _ in range(E)]
            return h0, [torch.zeros(E, dtype=torch.float64) for _ in range(K - 1)]

        h, xs = fresh()  # xs: the x half of in_proj, the window's K - 1 inputs then each step's
        if initial is not None:
            h = [[initial[0][b, e, n] for n in range(N)] for e in range(E)]
            xs = [initial[1][b, :, j] for j in range(K - 1)]
        rows = []
        for t in range(time):
            if resets is not None and bool(resets[b, t]):
                h, xs = fresh()
            proj = W_in @ x[b, t]
            xs.append(proj[:E])
            z = proj[E:]
            conv = b_conv.clone()
            for j in range(K):  # tap j multiplies the input K - 1 - j steps back
                conv = conv + w_conv[:, j] * xs[len(xs) - K + j]
            u = conv * torch.sigmoid(conv)  # SiLU
            xproj = W_x @ u
            delta, Bt, Ct = xproj[:R], xproj[R : R + N], xproj[R + N :]
            pre = W_dt @ delta + b_dt
            dt = torch.log1p(torch.exp(pre))  # softplus
            y = []
            for e in range(E):
                acc = D[e] * u[e]
                for n in range(N):
                    a = -torch.exp(A_log[e, n])
                    h[e][n] = torch.exp(dt[e] * a) * h[e][n] + dt[e] * Bt[n] * u[e]
                    acc = acc + Ct[n] * h[e][n]
                y.append(acc)
            gated = torch.stack(y) * (z * torch.sigmoid(z))
            rows.append(W_out @ gated)
        outs.append(torch.stack(rows))
        hs.append(torch.stack([torch.stack(row) for row in h]))
        windows.append(
            torch.stack(xs[len(xs) - (K - 1) :], 1)
            if K > 1
            else torch.zeros(E, 0, dtype=torch.float64)
        )
    return torch.stack(outs), torch.stack(hs), torch.stack(windows)


@pytest.mark.parametrize(
    "kw",
    [{"d_state": 3}, {"d_state": 2, "d_conv": 2, "dt_rank": 3}],
    ids=["conv4", "conv2-rank3"],
)
@pytest.mark.parametrize("backend", backend_params("reference", "selective_torch"))
def test_equals_the_equations(kw: dict[str, int], backend: str) -> None:
    """Outputs and the gradients of every parameter and of the input equal the float64 oracle;
    ``A_log``, ``D`` and the step bias are moved off their initial values so each counts."""
    torch.manual_seed(0)
    cell = Mamba(3, 4, **kw).double()
    with torch.no_grad():
        cell.A_log.uniform_(-1.0, 1.0)
        cell.D.uniform_(-1.0, 1.0)
        cell.dt_proj.bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    y, _ = cell(x, backend=backend)
    params = {n: p.detach().clone().requires_grad_(True) for n, p in cell.named_parameters()}
    x_o = x.detach().clone().requires_grad_(True)
    want, _, _ = _oracle(cell, x_o, params)
    assert_close(f"mamba ({backend}) vs the equations", y, want, 1e-12)
    w = torch.randn_like(want)
    (y * w).sum().backward()
    (want * w).sum().backward()
    assert x.grad is not None and x_o.grad is not None
    assert_close(f"mamba ({backend}) d/dx", x.grad, x_o.grad, 1e-11)
    for name, p in cell.named_parameters():
        g_o = params[name].grad
        assert p.grad is not None and g_o is not None, name
        assert g_o.abs().sum() > 0, name
        assert_close(f"mamba ({backend}) d/d{name}", p.grad, g_o, 1e-11)


@pytest.mark.parametrize("backend", backend_params("reference", "selective_torch"))
def test_equals_the_equations_from_a_state_with_resets(backend: str) -> None:
    """From a given state (scan and convolution window) with resets: outputs, the final state
    and the gradients of the input, of both state fields and of every parameter equal the
    float64 oracle."""
    torch.manual_seed(3)
    cell = Mamba(3, 4, d_state=3).double()
    with torch.no_grad():
        cell.A_log.uniform_(-1.0, 1.0)
        cell.D.uniform_(-1.0, 1.0)
        cell.dt_proj.bias.uniform_(-1.0, 1.0)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 7, 3, generator=gen, dtype=torch.float64)
    initial = (
        torch.randn(3, 4, 3, generator=gen, dtype=torch.float64),
        torch.randn(3, 4, 3, generator=gen, dtype=torch.float64),
    )
    resets = torch.zeros(3, 7, dtype=torch.bool)
    resets[0, 3] = resets[1, 0] = True  # the third example keeps its given state
    s_c = [t.clone().requires_grad_(True) for t in initial]
    s_o = [t.clone().requires_grad_(True) for t in initial]
    x_c, x_o = (x.clone().requires_grad_(True) for _ in range(2))
    params = {n: p.detach().clone().requires_grad_(True) for n, p in cell.named_parameters()}
    y, state = cell(x_c, MambaState(*s_c), backend=backend, resets=resets)
    want, h, window = _oracle(cell, x_o, params, (s_o[0], s_o[1]), resets)
    for name, got, exp in (("y", y, want), ("h", state.h, h), ("conv", state.conv, window)):
        assert_close(f"mamba ({backend}) {name}", got, exp, 1e-12)
    w = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (want, h, window)]
    names = list(params)
    got_g = torch.autograd.grad(
        (y * w[0]).sum() + (state.h * w[1]).sum() + (state.conv * w[2]).sum(),
        [x_c, *s_c, *(dict(cell.named_parameters())[n] for n in names)],
    )
    want_g = torch.autograd.grad(
        (want * w[0]).sum() + (h * w[1]).sum() + (window * w[2]).sum(),
        [x_o, *s_o, *(params[n] for n in names)],
    )
    for label, g, g_o in zip(["x", "h0", "conv0", *names], got_g, want_g, strict=True):
        assert g_o.abs().sum() > 0, label
        assert_close(f"mamba ({backend}) d/d{label}", g, g_o, 1e-10)


def test_inverse_softplus() -> None:
    y = torch.tensor([1e-4, 1e-3, 0.05, 0.1, 2.0], dtype=torch.float64)
    assert torch.allclose(F.softplus(inverse_softplus(y)), y, rtol=1e-12)


def test_state_carries_the_convolution_window() -> None:
    """Two halves with the state carried equal the whole sequence; the state's window holds
    the last d_conv - 1 inputs of the convolution (x half of in_proj)."""
    torch.manual_seed(1)
    cell = Mamba(4, 6, d_state=3).double()
    x = torch.randn(2, 9, 4, dtype=torch.float64)
    y, final = cell(x, backend="reference")
    y1, s1 = cell(x[:, :5], backend="reference")
    y2, s2 = cell(x[:, 5:], s1, backend="reference")
    assert torch.allclose(torch.cat((y1, y2), 1), y) and torch.allclose(s2.h, final.h)
    want_window = cell.in_proj(x[:, -3:])[..., :6].transpose(1, 2)
    assert torch.allclose(final.conv, want_window)


def test_a_reset_clears_the_window_and_the_scan() -> None:
    """After a reset at t, the outputs are those of the sequence started at t."""
    torch.manual_seed(2)
    cell = Mamba(3, 5, d_state=2).double()
    x = torch.randn(1, 8, 3, dtype=torch.float64)
    resets = torch.zeros(1, 8, dtype=torch.bool)
    resets[0, 5] = True
    for backend in available_backends("reference", "selective_torch"):
        y, _ = cell(x, backend=backend, resets=resets)
        y_tail, _ = cell(x[:, 5:], backend="reference")
        assert torch.allclose(y[:, 5:], y_tail, atol=1e-12), backend


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"dt_min": 0.0}, "dt_min"),
        ({"dt_min": 0.2, "dt_max": 0.1}, "dt_min"),
        ({"dt_max": math.inf}, "dt_max"),
        ({"dt_floor": -1.0}, "dt_floor"),
        ({"d_state": 0}, "d_state"),
        ({"d_conv": 0}, "d_conv"),
        ({"dt_rank": 0}, "dt_rank"),
    ],
)
def test_bad_construction(kw: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Mamba(4, **kw)  # type: ignore[arg-type]


def test_state_shapes() -> None:
    cell = Mamba(4, 6, d_state=5, d_conv=3)
    state = cell.init_state(2)
    assert isinstance(state, MambaState)
    assert state.h.shape == (2, 6, 5) and state.conv.shape == (2, 6, 2)


@pytest.mark.parametrize(("name", "shape"), [("mamba_classifier", (3, 4))])
def test_classifier(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = create_model(name, input_size=2, output_size=4, hidden_size=8, num_layers=2)
    x = torch.randn(3, 9, 2, requires_grad=True)
    out = model(x)
    assert out.shape == shape
    out.square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.parameters())
    block = model.blocks[0]  # type: ignore[index]
    assert isinstance(block.cell, Mamba) and block.cell.hidden_size == 16


def test_language_model() -> None:
    torch.manual_seed(0)
    model = create_model("mamba_lm", vocab_size=11, hidden_size=8, num_layers=1)
    tokens = torch.randint(0, 11, (2, 6))
    logits = model(tokens)
    assert logits.shape == (2, 6, 11)
    # causal: the logits of the first steps do not depend on later tokens
    other = tokens.clone()
    other[:, 4:] = (other[:, 4:] + 1) % 11
    assert torch.allclose(model(other)[:, :4], logits[:, :4], atol=1e-6)
