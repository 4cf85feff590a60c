"""The Mamba-2 cell: a float64 oracle written from the equations (values and gradients on the
reference loop and the chunked kernel), the conformance kit, groups, resets, the state and
construction checks."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import backend_params, needs_kernels

from rnnkit.core.cell import Cell
from rnnkit.core.matrix_state import MatrixStateCell
from rnnkit.core.testing import CellConformance
from rnnkit.core.testing.numerics import assert_close
from rnnkit.models import create_model
from rnnkit.models.cells import Mamba2, Mamba2State


class TestMamba2(CellConformance):
    def make_cell(self) -> Cell[Any]:
        return Mamba2(5, 6, d_state=3, headdim=2)


class TestMamba2Groups(CellConformance):
    def make_cell(self) -> Cell[Any]:
        return Mamba2(5, 8, d_state=2, headdim=2, ngroups=2, d_conv=3)


def _oracle(
    cell: Mamba2,
    x: torch.Tensor,
    params: dict[str, torch.Tensor],
    initial: tuple[torch.Tensor, torch.Tensor] | None = None,
    resets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The module docstring's equations, one example, head and step at a time, in float64,
    with the parameters taken from ``params`` (so gradients flow to them). ``initial`` is
    ``(S: (B, n_h, headdim, d_state), window: (B, E + 2 G N, K - 1))``, the convolution's last
    ``K - 1`` inputs oldest first (zero by default and after a reset). Returns ``(out, final S,
    final window)``."""
    batch, time, _ = x.shape
    E, N, P, G, K = cell.hidden_size, cell.d_state, cell.headdim, cell.ngroups, cell.d_conv
    nh = E // P
    W_in = params["in_proj.weight"]
    w_conv, b_conv = params["conv_weight"], params["conv_bias"]
    A = -torch.exp(params["A_log"])
    width = E + 2 * G * N
    outs, finals, windows = [], [], []
    for b in range(batch):

        def fresh() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            S0 = [torch.zeros(P, N, dtype=torch.float64) for _ in range(nh)]
            return S0, [torch.zeros(width, dtype=torch.float64) for _ in range(K - 1)]

        S, inputs = fresh()  # inputs: the window's K - 1 xBC, then each step's
        if initial is not None:
            S = list(initial[0][b])
            inputs = [initial[1][b, :, j] for j in range(K - 1)]
        rows = []
        for t in range(time):
            if resets is not None and bool(resets[b, t]):
                S, inputs = fresh()
            p = W_in @ x[b, t]
            z, xbc, dt_raw = p[:E], p[E : 2 * E + 2 * G * N], p[2 * E + 2 * G * N :]
            inputs.append(xbc)
            c = b_conv.clone()
            for j in range(K):  # tap j sees the input K - 1 - j steps back
                c = c + w_conv[:, j] * inputs[len(inputs) - K + j]
            c = F.silu(c)
            xs, Bs, Cs = c[:E], c[E : E + G * N], c[E + G * N :]
            y = torch.zeros(E, dtype=torch.float64)
            for h in range(nh):
                g = h // (nh // G)
                xh, Bg, Cg = (
                    xs[h * P : (h + 1) * P],
                    Bs[g * N : (g + 1) * N],
                    Cs[g * N : (g + 1) * N],
                )
                dt = F.softplus(dt_raw[h] + params["dt_bias"][h])
                S[h] = torch.exp(dt * A[h]) * S[h] + torch.outer(dt * xh, Bg)
                y[h * P : (h + 1) * P] = S[h] @ Cg + params["D"][h] * xh
            gated = y * F.silu(z)
            normed = []
            for g in range(G):
                part = gated[g * (E // G) : (g + 1) * (E // G)]
                normed.append(part / torch.sqrt(part.pow(2).mean() + cell.norm_eps))
            rows.append(params["out_proj.weight"] @ (torch.cat(normed) * params["norm_weight"]))
        outs.append(torch.stack(rows))
        finals.append(torch.stack(S))
        windows.append(
            torch.stack(inputs[len(inputs) - (K - 1) :], 1)
            if K > 1
            else torch.zeros(width, 0, dtype=torch.float64)
        )
    return torch.stack(outs), torch.stack(finals), torch.stack(windows)


@pytest.mark.parametrize(
    "kw",
    [
        {"d_state": 3, "headdim": 2},
        {"d_state": 2, "headdim": 2, "ngroups": 3, "d_conv": 2},
        {"d_state": 4, "headdim": 3, "ngroups": 2},
    ],
    ids=["1group", "3groups-conv2", "2groups"],
)
@pytest.mark.parametrize("backend", backend_params("reference", "chunked"))
def test_equals_the_equations(kw: dict[str, int], backend: str) -> None:
    """Outputs and the gradients of every parameter and of the input equal the float64 oracle;
    the dt, A and D are moved off their initial values so each term counts."""
    torch.manual_seed(0)
    cell = Mamba2(4, 6 if kw["headdim"] != 3 else 12, **kw).double()
    with torch.no_grad():
        cell.dt_bias.add_(1.0)
        cell.D.uniform_(-1.0, 1.0)
        cell.norm_weight.uniform_(0.5, 1.5)
        cell.A_log.uniform_(-1.0, 1.0)
    x = torch.randn(2, 11, 4, dtype=torch.float64, requires_grad=True)
    y, _ = cell(x, backend=backend)
    params = {n: p.detach().clone().requires_grad_(True) for n, p in cell.named_parameters()}
    x_o = x.detach().clone().requires_grad_(True)
    want, _, _ = _oracle(cell, x_o, params)
    assert_close(f"mamba2 ({backend}) vs the equations", y, want, 1e-12)
    w = torch.randn_like(want)
    (y * w).sum().backward()
    (want * w).sum().backward()
    assert x.grad is not None and x_o.grad is not None
    assert_close(f"mamba2 ({backend}) d/dx", x.grad, x_o.grad, 1e-11)
    for name, p in cell.named_parameters():
        g_o = params[name].grad
        assert p.grad is not None and g_o is not None, name
        assert g_o.abs().sum() > 0, name
        assert_close(f"mamba2 ({backend}) d/d{name}", p.grad, g_o, 1e-11)


@pytest.mark.parametrize("backend", backend_params("reference", "chunked"))
def test_equals_the_equations_from_a_state_with_resets(backend: str) -> None:
    """From a given state (SSD memory and convolution window) with resets: outputs, the final
    state and the gradients of the input, of both state fields and of every parameter equal
    the float64 oracle."""
    torch.manual_seed(3)
    cell = Mamba2(4, 6, d_state=2, headdim=2, ngroups=3, d_conv=3).double()
    with torch.no_grad():
        cell.dt_bias.add_(1.0)
        cell.D.uniform_(-1.0, 1.0)
        cell.norm_weight.uniform_(0.5, 1.5)
        cell.A_log.uniform_(-1.0, 1.0)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 7, 4, generator=gen, dtype=torch.float64)
    initial = (
        torch.randn(3, 3, 2, 2, generator=gen, dtype=torch.float64),
        torch.randn(3, 6 + 2 * 3 * 2, 2, generator=gen, dtype=torch.float64),
    )
    resets = torch.zeros(3, 7, dtype=torch.bool)
    resets[0, 3] = resets[1, 0] = True  # the third example keeps its given state
    s_c = [t.clone().requires_grad_(True) for t in initial]
    s_o = [t.clone().requires_grad_(True) for t in initial]
    x_c, x_o = (x.clone().requires_grad_(True) for _ in range(2))
    params = {n: p.detach().clone().requires_grad_(True) for n, p in cell.named_parameters()}
    y, state = cell(x_c, Mamba2State(*s_c), backend=backend, resets=resets)
    want, S, window = _oracle(cell, x_o, params, (s_o[0], s_o[1]), resets)
    for name, got, exp in (("y", y, want), ("S", state.S, S), ("conv", state.conv, window)):
        assert_close(f"mamba2 ({backend}) {name}", got, exp, 1e-12)
    w = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in (want, S, window)]
    names = list(params)
    got_g = torch.autograd.grad(
        (y * w[0]).sum() + (state.S * w[1]).sum() + (state.conv * w[2]).sum(),
        [x_c, *s_c, *(dict(cell.named_parameters())[n] for n in names)],
    )
    want_g = torch.autograd.grad(
        (want * w[0]).sum() + (S * w[1]).sum() + (window * w[2]).sum(),
        [x_o, *s_o, *(params[n] for n in names)],
    )
    for label, g, g_o in zip(["x", "S0", "conv0", *names], got_g, want_g, strict=True):
        assert g_o.abs().sum() > 0, label
        assert_close(f"mamba2 ({backend}) d/d{label}", g, g_o, 1e-10)


@needs_kernels
def test_steps_equal_the_sequence_and_the_state_holds_the_window() -> None:
    """Token by token (state carried) equals the chunked whole sequence, values and final
    state; the window holds the last d_conv - 1 xBC inputs."""
    torch.manual_seed(1)
    cell = Mamba2(4, 6, d_state=3, headdim=2, ngroups=3).double()
    x = torch.randn(2, 70, 4, dtype=torch.float64)  # more than one chunk of 64
    y, final = cell(x, backend="chunked")
    state = cell.init_state(2, dtype=torch.float64)
    steps = []
    for t in range(x.shape[1]):
        y_t, state = cell(x[:, t : t + 1], state, backend="reference")
        steps.append(y_t)
    assert_close("mamba2 steps vs sequence", torch.cat(steps, 1), y, 1e-12)
    assert_close("mamba2 state S", state.S, final.S, 1e-12)
    E = cell.hidden_size
    want_window = cell.in_proj(x[:, -3:])[..., E : E + cell.conv_dim].transpose(1, 2)
    assert_close("mamba2 conv window", final.conv, want_window, 1e-14)
    assert_close("mamba2 conv window, stepped", state.conv, final.conv, 1e-14)


@pytest.mark.parametrize("backend", backend_params("reference", "chunked"))
def test_a_reset_restarts_the_block(backend: str) -> None:
    """After a reset at t, the outputs are those of the sequence started at t (the memory and
    the convolution window both cleared), and before it those of the prefix."""
    torch.manual_seed(2)
    cell = Mamba2(3, 4, d_state=2, headdim=2, ngroups=2).double()
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    resets = torch.zeros(2, 9, dtype=torch.bool)
    resets[0, 5] = True
    resets[1, 2] = True
    y, final = cell(x, backend=backend, resets=resets)
    for b, t in ((0, 5), (1, 2)):
        y_tail, s_tail = cell(x[b : b + 1, t:], backend="reference")
        y_head, _ = cell(x[b : b + 1, :t], backend="reference")
        assert_close("after the reset", y[b : b + 1, t:], y_tail, 1e-12)
        assert_close("before the reset", y[b : b + 1, :t], y_head, 1e-12)
        assert_close("state after the reset", final.S[b : b + 1], s_tail.S, 1e-12)


@needs_kernels
def test_groups_share_b_and_c() -> None:
    """With ngroups = heads each head reads its own (B, C); with ngroups = 1 all heads read the
    same: copying the first group's columns of in_proj into every group's turns the first cell
    into the second."""
    torch.manual_seed(3)
    many = Mamba2(4, 6, d_state=2, headdim=2, ngroups=3).double()
    one = Mamba2(4, 6, d_state=2, headdim=2, ngroups=1).double()
    E, N, G, nh = 6, 2, 3, 3
    in_b, in_c, in_dt = 2 * E, 2 * E + G * N, 2 * E + 2 * G * N  # rows of in_proj
    cv_b, cv_c = E, E + G * N  # channels of the convolution
    with torch.no_grad():
        W, cw, cb = many.in_proj.weight, many.conv_weight, many.conv_bias
        assert cb is not None and one.conv_bias is not None
        for g in range(1, G):
            for start, tensors in ((in_b, (W,)), (in_c, (W,)), (cv_b, (cw, cb)), (cv_c, (cw, cb))):
                for t in tensors:
                    t[start + g * N : start + (g + 1) * N] = t[start : start + N]
        rows = [*range(2 * E), *range(in_b, in_b + N), *range(in_c, in_c + N)]
        one.in_proj.weight.copy_(W[[*rows, *range(in_dt, in_dt + nh)]])
        chans = [*range(E), *range(cv_b, cv_b + N), *range(cv_c, cv_c + N)]
        one.conv_weight.copy_(cw[chans])
        one.conv_bias.copy_(cb[chans])
        for name in ("dt_bias", "A_log", "D", "norm_weight"):
            getattr(one, name).copy_(getattr(many, name))
        one.out_proj.weight.copy_(many.out_proj.weight)
    x = torch.randn(2, 7, 4, dtype=torch.float64)
    # ngroups also groups the norm: compare the memories' read-outs through the states
    _, s_many = many(x, backend="chunked")
    _, s_one = one(x, backend="chunked")
    assert_close("shared B/C: same memory", s_many.S, s_one.S, 1e-12)


def test_defaults_and_state_shapes() -> None:
    torch.manual_seed(4)
    cell = Mamba2(64)
    assert isinstance(cell, MatrixStateCell) and cell.rule == "linear"
    assert (cell.hidden_size, cell.d_state, cell.headdim, cell.ngroups, cell.d_conv) == (
        128, 128, 64, 1, 4,
    )  # fmt: skip
    assert cell.nheads == 2 and cell.output_size == 64
    assert cell.in_proj.weight.shape == (2 * 128 + 2 * 128 + 2, 64)
    A = torch.exp(cell.A_log)
    assert bool(((A >= 1.0) & (A <= 16.0)).all())
    dt = F.softplus(cell.dt_bias)
    assert bool(((dt >= 1e-3 * (1 - 1e-5)) & (dt <= 0.1 * (1 + 1e-5))).all())
    assert torch.equal(cell.D, torch.ones(2)) and torch.equal(cell.norm_weight, torch.ones(128))
    wide = Mamba2(4, 64, d_state=2, headdim=1)
    assert torch.exp(wide.A_log).std() > 2.0  # spread over U(1, 16), not one value
    assert F.softplus(wide.dt_bias).log().std() > 0.5  # log-uniform over two decades
    state = Mamba2(4, 6, d_state=5, headdim=3, ngroups=2, d_conv=3).init_state(2)
    assert isinstance(state, Mamba2State)
    assert state.S.shape == (2, 2, 3, 5) and state.conv.shape == (2, 6 + 2 * 2 * 5, 2)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"headdim": 4}, "headdim"),
        ({"headdim": 0}, "headdim"),
        ({"headdim": 2, "ngroups": 2}, "ngroups"),
        ({"d_state": 0}, "d_state"),
        ({"d_conv": 0}, "d_conv"),
        ({"a_range": (0.0, 16.0)}, "a_range"),
        ({"a_range": (4.0, 2.0)}, "a_range"),
        ({"dt_min": 0.0}, "dt_min"),
        ({"dt_min": 0.2, "dt_max": 0.1}, "dt_min"),
        ({"dt_max": math.inf}, "dt_max"),
        ({"dt_floor": -1.0}, "dt_floor"),
        ({"norm_eps": 0.0}, "norm_eps"),
    ],
)
def test_bad_construction(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Mamba2(3, 6, **{"headdim": 3, **kw})


def test_language_model() -> None:
    """``mamba2_lm``: Mamba-2 blocks of ``2 * hidden_size`` inner channels, causal logits,
    gradients to every parameter."""
    torch.manual_seed(5)
    model = create_model("mamba2_lm", vocab_size=11, hidden_size=8, d_state=4, headdim=4)
    block = model.blocks[0]  # type: ignore[index]
    assert isinstance(block.cell, Mamba2) and block.cell.hidden_size == 16
    assert block.cell.nheads == 4
    tokens = torch.randint(0, 11, (2, 6))
    logits = model(tokens)
    assert logits.shape == (2, 6, 11)
    other = tokens.clone()
    other[:, 4:] = (other[:, 4:] + 1) % 11
    assert torch.allclose(model(other)[:, :4], logits[:, :4], atol=1e-6)
    assert not torch.allclose(model(other)[:, 4:], logits[:, 4:], atol=1e-6)
    logits.square().sum().backward()
    assert all(p.grad is not None for p in model.parameters())
