"""pLSTM on a line graph: the cell against a float64 oracle written from the equations, the
chunked kernel against the reference loop in value and gradient, NaN confinement, bad
configurations and a short learning run. The conformance kit runs on the registered cell in
tests/test_conformance_registered.py."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from rnnkit.models.cells import PLSTM, PLSTMState
from rnnkit.models.cells.plstm import plstm_chunked


def _cell(**kw: object) -> PLSTM:
    """A float64 cell with random gate weights and biases (the default init has zero gate
    weights, which would leave the gates constant over time)."""
    torch.manual_seed(0)
    cell = PLSTM(5, 6, **kw).double()  # type: ignore[arg-type]
    with torch.no_grad():
        cell.weight_gates.normal_(0.0, 0.7)
        cell.bias_gates.normal_(0.0, 0.5)
    return cell


def _oracle(cell: PLSTM, x: Tensor, C0: Tensor) -> tuple[Tensor, Tensor]:
    """The docstring's equations, one head and one batch element at a time, in float64."""
    B, T, _ = x.shape
    nh, d, H = cell.heads, cell.head_dim, cell.hidden_size
    Wq, Wk, Wv = cell.weight[:H], cell.weight[H : 2 * H], cell.weight[2 * H :]
    Wg = cell.weight_gates.view(4, nh, -1)
    bg = cell.bias_gates.view(4, nh)
    y = torch.zeros(B, T, H, dtype=torch.float64)
    CT = C0.clone()
    for b in range(B):
        for h in range(nh):
            C = C0[b, h].clone()
            rows = slice(h * d, (h + 1) * d)
            for t in range(T):
                xt = x[b, t]
                q, k, v = Wq[rows] @ xt, Wk[rows] @ xt, Wv[rows] @ xt
                g = Wg[:, h] @ xt + bg[:, h]
                S = 1.0 / (1.0 + math.exp(-float(g[0])))
                Tr = math.tanh(cell.transition_scale * float(g[1]))
                M = 1.0 / (1.0 + math.exp(-float(g[2])))
                D = 1.0 / (1.0 + math.exp(-float(g[3])))
                y[b, t, rows] = (M * (C.T @ q) + D * float(q @ k) * v) / math.sqrt(d)
                C = Tr * C + S * torch.outer(k, v)
            CT[b, h] = C
    return y, CT


@pytest.mark.parametrize("heads", [1, 2, 3])
@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_matches_the_equations_in_float64(heads: int, backend: str) -> None:
    cell = _cell(heads=heads, chunk_size=4)
    x = torch.randn(2, 9, 5, dtype=torch.float64)
    C0 = torch.randn(2, heads, 6 // heads, 6 // heads, dtype=torch.float64)
    with torch.no_grad():
        y, final = cell(x, PLSTMState(C0), backend=backend)
        want_y, want_C = _oracle(cell, x, C0)
    torch.testing.assert_close(y, want_y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final.C, want_C, rtol=1e-12, atol=1e-12)


def _value_and_grads(cell: PLSTM, backend: str, x: Tensor, C0: Tensor, resets: Tensor | None):
    cell.zero_grad()
    x = x.clone().requires_grad_(True)
    C0 = C0.clone().requires_grad_(True)
    y, final = cell(x, PLSTMState(C0), backend=backend, resets=resets)
    gy = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
    gC = torch.linspace(1, -1, final.C.numel(), dtype=y.dtype).reshape(final.C.shape)
    ((y * gy).sum() + (final.C * gC).sum()).backward()
    grads = [x.grad, C0.grad] + [p.grad for p in cell.parameters()]
    return [y.detach(), final.C.detach()] + [g.clone() for g in grads if g is not None]


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 64])
@pytest.mark.parametrize("with_resets", [False, True])
@pytest.mark.parametrize("transition_bias", [1.0, -0.3])
def test_chunked_equals_reference_in_value_and_gradient(
    chunk_size: int, with_resets: bool, transition_bias: float
) -> None:
    cell = _cell(heads=2, chunk_size=chunk_size)
    with torch.no_grad():
        # a negative bias makes many transitions negative: the signed products must be exact
        cell.bias_gates.view(4, 2)[1] += transition_bias
    torch.manual_seed(1)
    x = torch.randn(3, 13, 5, dtype=torch.float64)
    C0 = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    resets = (torch.rand(3, 13) < 0.25) if with_resets else None
    if resets is not None:
        resets[0, 0] = True  # at a chunk's first step
        resets[1, chunk_size - 1 if chunk_size < 13 else 5] = True
    want = _value_and_grads(cell, "reference", x, C0, resets)
    got = _value_and_grads(cell, "chunked", x, C0, resets)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_auto_runs_the_chunked_kernel() -> None:
    from rnnkit.core.dispatch import select
    from rnnkit.core.kernel import KernelCall

    cell = _cell()
    x = torch.randn(1, 4, 5, dtype=torch.float64)
    kernel = select(KernelCall(cell, x, None, None, needs_grad=False))
    assert kernel.backend == "chunked"


def test_a_zero_transition_has_finite_gradients() -> None:
    """``tanh(0) = 0`` exactly: ``log |T|`` is floored, so the chunked backward stays finite and
    equals the loop's."""
    cell = _cell(chunk_size=8)
    with torch.no_grad():
        cell.weight_gates.view(4, 1, 5)[1].zero_()
        cell.bias_gates.view(4, 1)[1].zero_()
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    C0 = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    want = _value_and_grads(cell, "reference", x, C0, None)
    got = _value_and_grads(cell, "chunked", x, C0, None)
    for g, w in zip(got, want, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_plstm_chunked_rejects_nothing_silently_on_empty_time() -> None:
    q = torch.zeros(2, 1, 0, 3)
    y, C = plstm_chunked(q, q, q, *(torch.zeros(2, 1, 0),) * 4, torch.ones(2, 1, 3, 3))
    assert y.shape == (2, 1, 0, 3)
    torch.testing.assert_close(C, torch.ones(2, 1, 3, 3))


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_nan_in_one_sequence_stays_there(backend: str) -> None:
    cell = _cell(chunk_size=3)
    x = torch.randn(2, 8, 5, dtype=torch.float64)
    x[1, 4, 2] = float("nan")
    y, final = cell(x, backend=backend)
    assert torch.isfinite(y[0]).all() and torch.isfinite(final.C[0]).all()
    assert torch.isfinite(y[1, :4]).all()
    assert torch.isnan(y[1, 4:]).all() and torch.isnan(final.C[1]).all()


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"heads": 4}, "heads"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"transition_scale": 0.0}, "transition_scale"),
        ({"gate_bias": float("nan")}, "gate_bias"),
    ],
)
def test_bad_configuration_names_the_argument(kw: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        PLSTM(5, 6, **kw)  # type: ignore[arg-type]


def test_learns_to_recall_the_first_token() -> None:
    """A short run that fails if the cell stops learning: classify a sequence by its first
    token (4 classes) after 12 steps of noise; a constant input channel lets the last step's
    query be input-independent. Chance is 25 %; the bar is 80 % after 80 steps."""
    from rnnkit.models import create_model

    torch.manual_seed(0)
    model = create_model(
        "sequence_classifier", cell="plstm", input_size=5, output_size=4, hidden_size=16
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def batch(n: int) -> tuple[Tensor, Tensor]:
        label = torch.randint(0, 4, (n,))
        x = torch.cat((0.5 * torch.randn(n, 13, 4), torch.ones(n, 13, 1)), -1)
        x[:, 0, :4] = torch.nn.functional.one_hot(label, 4).float() * 3.0
        return x, label

    for _ in range(80):
        x, label = batch(64)
        loss = torch.nn.functional.cross_entropy(model(x), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, label = batch(512)
    with torch.no_grad():
        accuracy = (model(x).argmax(-1) == label).float().mean().item()
    assert accuracy > 0.8, accuracy
