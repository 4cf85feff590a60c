"""Miras cells (Moneta, Yaad, Memora) and Titans' memory: the per-token updates written out
from the equations in float64, the chunked approximation (exact at chunk size 1, measured
deviation above), reductions to the delta rule, the named-only backend, NaN propagation and
hyperparameter checks at construction. The conformance kit runs every registered
configuration in tests/test_conformance_registered.py."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from rnnkit.core.errors import BackendUnavailableError
from rnnkit.core.testing.numerics import rel_rms
from rnnkit.models.cells import DeltaNet, Memora, Moneta, Titans, Yaad, miras
from rnnkit.models.cells.miras import CHUNKED_APPROX, EXACT, MirasCell, chunk_deviation

CELLS: dict[str, Any] = {
    "moneta": lambda **kw: Moneta(5, 6, heads=2, **kw),
    "moneta_p2": lambda **kw: Moneta(5, 6, heads=3, p=2.5, q=3.0, **kw),
    "yaad": lambda **kw: Yaad(5, 6, heads=2, **kw),
    "yaad_coordinate": lambda **kw: Yaad(5, 6, heads=2, huber="coordinate", **kw),
    "memora": lambda **kw: Memora(5, 6, heads=2, scale=1.5, **kw),
    "titans": lambda **kw: Titans(5, 6, heads=3, **kw),
}
#: Moneta with ``q = 2`` has a linear memory: the ``exact`` backend takes its other path.
EXACT_CELLS = {**CELLS, "moneta_q2": lambda **kw: Moneta(5, 6, heads=2, p=3.0, q=2.0, **kw)}
#: Moneta with a radius other than 1 (its norm's floor; only a constant in the same code path,
#: so only the written-out update checks it).
ORACLE_CELLS = {
    **EXACT_CELLS,
    "moneta_radius": lambda **kw: Moneta(5, 6, heads=2, radius=0.3, **kw),
}


def _build(name: str, **kw: Any) -> MirasCell[Any]:
    torch.manual_seed(0)
    cell: MirasCell[Any] = ORACLE_CELLS[name](**kw).double()
    return cell


def _body(cell: MirasCell[Any], x_t: torch.Tensor, prev: torch.Tensor) -> dict[str, Any]:
    """One step of the shared body for one example ``x_t: (I,)``, written out: projections,
    width-2 convolution, unit-norm silu(q), silu(k), eta, alpha, the extra gate."""
    H, nh, d = cell.hidden_size, cell.heads, cell.head_dim
    par = {n: t.detach() for n, t in cell.named_parameters()}
    p = par["weight"] @ x_t
    u = par["conv"][0] * p + par["conv"][1] * prev

    def heads(z: torch.Tensor) -> list[torch.Tensor]:
        return list(z.reshape(nh, d))

    q = [F.silu(z) / F.silu(z).norm() for z in heads(u[:H])]
    k = [F.silu(z) / F.silu(z).norm() for z in heads(u[H : 2 * H])]
    v = heads(u[2 * H :])
    eta = torch.sigmoid(par["weight_eta"] @ x_t + par["bias_eta"])
    rate = torch.exp(par["A_log"])
    alpha = torch.exp(-rate * F.softplus(par["weight_alpha"] @ x_t + par["dt_bias"]))
    extra = par["weight_extra"] @ x_t + par["bias_extra"]
    return {"p": p, "q": q, "k": k, "v": v, "eta": eta, "alpha": alpha, "extra": extra}


def _written_out(cell: MirasCell[Any], x: torch.Tensor) -> torch.Tensor:
    """The cell's per-token update from its equations, per example and head, in float64 (the
    memory itself is tracked, not the cell's accumulator: Memora as ``c softmax(alpha log W -
    eta grad)``, Moneta's ``W = A / ||A||_q^(q-2)`` with the floor at the radius)."""
    B, T, _ = x.shape
    nh, d = cell.heads, cell.head_dim
    y = torch.zeros(B, T, cell.hidden_size, dtype=torch.float64)
    for b in range(B):
        prev = torch.zeros(3 * cell.hidden_size, dtype=torch.float64)
        if isinstance(cell, Memora):
            W = [torch.full((d, d), cell.scale / d, dtype=torch.float64) for _ in range(nh)]
        else:
            W = [torch.zeros(d, d, dtype=torch.float64) for _ in range(nh)]
        A = [w.clone() for w in W]  # Moneta's accumulator; Titans' momentum
        for t in range(T):
            g = _body(cell, x[b, t], prev)
            prev = g["p"]
            outs = []
            for h in range(nh):
                k, v, q = g["k"][h], g["v"][h], g["q"][h]
                eta, alpha = g["eta"][h], g["alpha"][h]
                e = W[h] @ k - v
                if isinstance(cell, Moneta):
                    grad = torch.outer(torch.sign(e) * e.abs() ** (cell.p - 1), k)
                    A[h] = alpha * A[h] - eta * grad
                    r = cell.radius
                    n = ((A[h].abs().pow(cell.q).sum() / r**cell.q + 1.0) ** (1 / cell.q)) ** (
                        cell.q - 2
                    )
                    W[h] = A[h] / n
                elif isinstance(cell, Yaad) and cell.huber == "coordinate":
                    delta = F.softplus(g["extra"][h])
                    clipped = torch.stack([min(max(c, -delta), delta) for c in e])
                    W[h] = alpha * W[h] - eta * torch.outer(clipped, k)
                elif isinstance(cell, Yaad):
                    delta = F.softplus(g["extra"][h])
                    if e.norm() <= delta:
                        W[h] = alpha * W[h] - eta * torch.outer(e, k)
                    else:
                        W[h] = alpha * W[h] - eta * delta * torch.outer(torch.sign(e), k)
                elif isinstance(cell, Memora):
                    logits = alpha * torch.log(W[h]) - eta * torch.outer(e, k)
                    W[h] = cell.scale * torch.softmax(logits, dim=0)
                else:
                    momentum = torch.sigmoid(g["extra"][h])
                    A[h] = momentum * A[h] - eta * torch.outer(e, k)
                    W[h] = alpha * W[h] + A[h]
                outs.append(W[h] @ q)
            y[b, t] = torch.cat(outs)
    return y


@pytest.mark.parametrize("name", [*sorted(CELLS), "moneta_radius"])
def test_recur_is_the_written_out_update(name: str) -> None:
    cell = _build(name)
    x = torch.randn(2, 9, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    want = _written_out(cell, x)
    got, _ = cell(x, backend="reference")
    assert rel_rms(got, want) < 1e-12


def _run(
    cell: MirasCell[Any], p: dict[str, Any], chunk: int | None, backend: str = "reference"
) -> dict[str, torch.Tensor]:
    """y, final state and every gradient, by ``backend`` (``chunk=None``) or
    chunked_forward."""
    cell.zero_grad()
    x = p["x"].clone().requires_grad_(True)
    state = cell.state_type(*(s.clone().requires_grad_(True) for s in p["state"]))
    if chunk is None:
        y, final = cell(x, state, backend=backend, resets=p["resets"])
    else:
        y, final = cell.chunked_forward(x, state, resets=p["resets"], chunk_size=chunk)
    loss = (y * p["dy"]).sum() + sum((f * f).sum() for f in final)
    loss.backward()
    out = {"y": y.detach(), "x.grad": x.grad}
    out.update({f"state.{n}": f.detach() for n, f in zip(final._fields, final, strict=True)})
    out.update({f"grad state.{n}": s.grad for n, s in zip(final._fields, state, strict=True)})
    out.update({f"grad {n}": q.grad.clone() for n, q in cell.named_parameters()})
    return out


def _problem(cell: MirasCell[Any], T: int = 11) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        _, state = cell(torch.randn(3, 4, 5, dtype=torch.float64, generator=gen))
    resets = torch.rand(3, T, generator=gen) < 0.2
    resets[1, 5] = True
    return {
        "x": torch.randn(3, T, 5, dtype=torch.float64, generator=gen),
        "state": tuple(s.detach() for s in state),
        "dy": torch.randn(3, T, cell.hidden_size, dtype=torch.float64, generator=gen),
        "resets": resets,
    }


@pytest.mark.parametrize("name", sorted(CELLS))
def test_chunk_size_one_is_the_exact_update(name: str) -> None:
    """Values, final state and gradients (inputs, state, parameters) with an initial state and
    resets: equal to the reference loop up to float64 rounding."""
    cell = _build(name)
    p = _problem(cell)
    want, got = _run(cell, p, None), _run(cell, p, 1)
    for key, w in want.items():
        assert rel_rms(got[key], w) < 1e-12, key


@pytest.mark.parametrize("name", sorted(EXACT_CELLS))
def test_exact_backend_is_the_reference_loop(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``exact`` backend (what ``auto`` runs): values, final state and gradients (inputs,
    initial state, parameters) with resets equal the reference loop up to float64 rounding,
    with blocks of 4 so that 11 steps cross two block boundaries."""
    monkeypatch.setattr(miras, "EXACT_BLOCK", 4)
    cell = _build(name)
    p = _problem(cell)
    want, got = _run(cell, p, None), _run(cell, p, None, backend=EXACT)
    for key, w in want.items():
        assert rel_rms(got[key], w) < 1e-12, key


@pytest.mark.parametrize("name", sorted(CELLS))
def test_larger_chunks_approximate(name: str) -> None:
    """Chunks of 4 are not the exact update, but close: their relative RMS deviation is
    nonzero and below 1 on this draw; the final state the chunked form hands on is the one
    its own recurrence reaches (cutting at a chunk boundary and carrying it changes
    nothing)."""
    cell = _build(name)
    p = _problem(cell, T=12)
    want, got = _run(cell, p, None), _run(cell, p, 4)
    err = rel_rms(got["y"], want["y"])
    assert 1e-8 < err < 1.0, err
    with torch.no_grad():
        y1, s1 = cell.chunked_forward(p["x"][:, :8], resets=p["resets"][:, :8], chunk_size=4)
        y2, _ = cell.chunked_forward(p["x"][:, 8:], s1, resets=p["resets"][:, 8:], chunk_size=4)
        y, _ = cell.chunked_forward(p["x"], resets=p["resets"], chunk_size=4)
    assert rel_rms(torch.cat((y1, y2), 1), y) < 1e-12


@pytest.mark.parametrize("name", sorted(CELLS))
def test_retention_starts_near_one_for_every_draw(name: str) -> None:
    """At initialisation (zero gate input) every head keeps ``alpha = exp(-A softplus(dt_bias))
    > 0.98`` per step, whatever the seed: with Gated DeltaNet's ``dt_range`` one head could
    draw ``alpha`` near 0.4, which forgets a binding within a few tokens (Titans and Yaad drew
    0.406 at ``mqar`` seed 0 and did not learn it; docs/tasks.md)."""
    for seed in range(20):
        torch.manual_seed(seed)
        cell = EXACT_CELLS[name]()
        alpha = torch.exp(-torch.exp(cell.A_log) * F.softplus(cell.dt_bias))
        assert float(alpha.min()) > 0.98, (seed, alpha)


@pytest.mark.parametrize("radius", [1.0, 4.0])
def test_moneta_memory_is_bounded_by_its_radius(radius: float) -> None:
    """``q = 4``: ``W = A / ((||A||_4 / r)^4 + 1)^(1/2)`` is ``A`` to first order for small
    ``A``, reaches ``||W||_4 = r / sqrt(2)`` at ``||A||_4 = r`` and never exceeds it, and is
    ``r^2 A / ||A||_4^2`` (degree -1) far beyond: the bound that kept the ``mqar`` model's
    bindings out of a memory of radius 1 (docs/tasks.md)."""
    cell = Moneta(4, 8, heads=1, q=4.0, radius=radius).double()
    direction = torch.randn(
        1, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    direction = direction / direction.abs().pow(4).sum().pow(0.25)  # ||direction||_4 = 1
    sizes = torch.logspace(-3, 3, 61, dtype=torch.float64) * radius
    norms = torch.stack([cell._memory(s * direction).abs().pow(4).sum().pow(0.25) for s in sizes])
    assert float(norms.max()) <= radius / math.sqrt(2) * (1 + 1e-12)
    assert float(norms[30]) == pytest.approx(radius / math.sqrt(2), rel=1e-12)  # ||A||_4 = r
    assert float(norms[0]) == pytest.approx(float(sizes[0]), rel=1e-6)  # W ~ A near 0
    assert float(norms[-1]) == pytest.approx(radius**2 / float(sizes[-1]), rel=1e-6)


def test_chunk_deviation_is_zero_at_one_and_nonzero_above() -> None:
    torch.manual_seed(0)
    cell = Moneta(8, 16, heads=2).double()
    x = torch.randn(2, 40, 8, dtype=torch.float64)
    devs = [chunk_deviation(cell, x, c) for c in (1, 8, 32)]
    assert devs[0] < 1e-12 and 1e-3 < devs[1] < 1 and 1e-3 < devs[2] < 1, devs


def _copy_body(src: DeltaNet, dst: MirasCell[Any]) -> None:
    with torch.no_grad():
        dst.weight.copy_(src.weight)
        dst.conv.copy_(src.conv)
        dst.weight_eta.copy_(src.weight_beta)
        dst.bias_eta.copy_(src.bias_beta)
        dst.A_log.fill_(-math.inf)  # alpha = exp(-0 * softplus(.)) = 1 exactly


@pytest.mark.parametrize("cls", [Moneta, Titans])
def test_reduces_to_the_delta_rule(cls: type[MirasCell[Any]]) -> None:
    """Moneta with p = q = 2 and no decay, and Titans with no momentum and no decay, are
    DeltaNet's delta rule with beta = eta (outputs and the final memory)."""
    torch.manual_seed(3)
    ref = DeltaNet(5, 6, heads=2).double()
    kw = {"p": 2.0, "q": 2.0} if cls is Moneta else {}
    cell = cls(5, 6, heads=2, **kw).double()
    _copy_body(ref, cell)
    if cls is Titans:
        with torch.no_grad():
            cell.bias_extra.fill_(-math.inf)  # momentum sigmoid(-inf) = 0
    x = torch.randn(2, 9, 5, dtype=torch.float64)
    want, (S, _) = ref(x, backend="reference")
    got, state = cell(x, backend="reference")
    assert rel_rms(got, want) < 1e-12
    assert rel_rms(state[0], S) < 1e-12


def test_the_approximation_runs_only_when_named_on_a_cell_with_a_chunk_size() -> None:
    x = torch.randn(2, 10, 5, dtype=torch.float64)
    exact = _build("moneta")
    with pytest.raises(BackendUnavailableError, match="no chunk_size"):
        exact(x, backend=CHUNKED_APPROX)
    chunked = _build("moneta", chunk_size=4)
    y_auto, _ = chunked(x)
    y_ref, _ = chunked(x, backend="reference")
    y_approx, _ = chunked(x, backend=CHUNKED_APPROX)
    assert torch.equal(y_auto, chunked(x, backend=EXACT)[0])  # auto keeps the exact update
    assert rel_rms(y_auto, y_ref) < 1e-12
    assert torch.equal(y_approx, chunked.chunked_forward(x)[0])
    assert rel_rms(y_approx, y_ref) > 1e-8


@pytest.mark.parametrize("name", sorted(CELLS))
@pytest.mark.parametrize("chunk", [None, 3])
def test_nan_in_gives_nan_out(name: str, chunk: int | None) -> None:
    """A NaN in one example's input makes that example's later outputs NaN and leaves the
    other examples finite."""
    cell = _build(name)
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    x[0, 2, 1] = math.nan
    with torch.no_grad():
        if chunk is None:
            y, state = cell(x, backend="reference")
        else:
            y, state = cell.chunked_forward(x, chunk_size=chunk)
    assert torch.isnan(y[0, 2:]).all() and torch.isfinite(y[0, :2]).all()
    assert torch.isfinite(y[1]).all()
    assert all(torch.isnan(m[0]).any() and torch.isfinite(m[1]).all() for m in state[:-1])


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: Moneta(5, 6, p=1.5), "p"),
        (lambda: Moneta(5, 6, p=math.inf), "p"),
        (lambda: Moneta(5, 6, q=1.0), "q"),
        (lambda: Moneta(5, 6, q=True), "q"),
        (lambda: Moneta(5, 6, chunk_size=0), "chunk_size"),
        (lambda: Moneta(5, 6, radius=0.0), "radius"),
        (lambda: Moneta(5, 6, radius=math.nan), "radius"),
        (lambda: Yaad(5, 6, chunk_size=2.5), "chunk_size"),
        (lambda: Titans(5, 6, chunk_size=True), "chunk_size"),
        (lambda: Memora(5, 6, scale=0.0), "scale"),
        (lambda: Memora(0, 6), "input_size"),
        (lambda: Titans(5, -6), "hidden_size"),
        (lambda: Yaad(5, 6, heads=4), "heads"),
        (lambda: Yaad(5, 6, huber="l1"), "huber"),
        (lambda: Titans(5, 6, a_range=(0.0, 1.0)), "a_range"),
    ],
)
def test_bad_hyperparameters_name_the_argument(make: Any, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name} "):
        make()


def test_chunked_forward_checks_its_chunk_size() -> None:
    cell = _build("yaad")
    x = torch.randn(1, 4, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^chunk_size"):
        cell.chunked_forward(x)
    with pytest.raises(ValueError, match=r"^chunk_size"):
        cell.chunked_forward(x, chunk_size=-1)


@pytest.mark.parametrize("name", sorted(EXACT_CELLS))
def test_exact_backend_drops_a_nan_memory_at_a_reset(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NaN initial state poisons the outputs until the first reset and not after it, on the
    ``exact`` backend as on the reference loop: resets inside the first block (step 2) and at
    the start of the second (step 4; blocks of 4), so both the carried memory and the keys
    of the steps before a reset within a block are cut off."""
    monkeypatch.setattr(miras, "EXACT_BLOCK", 4)
    cell = _build(name)
    torch.manual_seed(5)
    x = torch.randn(2, 9, cell.input_size, dtype=torch.float64)
    state = cell.init_state(2, dtype=torch.float64)
    state = type(state)(*(torch.full_like(f, math.nan) for f in state))
    resets = torch.zeros(2, 9, dtype=torch.bool)
    resets[0, 2] = True
    resets[1, 4] = True
    with torch.no_grad():
        want, want_state = cell(x, state, resets=resets, backend="reference")
        got, got_state = cell(x, state, resets=resets, backend=EXACT)
    assert torch.isnan(want[0, :2]).all() and torch.isnan(want[1, :4]).all()
    assert not torch.isnan(want[0, 2:]).any() and not torch.isnan(want[1, 4:]).any()
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert rel_rms(got[0, 2:], want[0, 2:]) < 1e-12 and rel_rms(got[1, 4:], want[1, 4:]) < 1e-12
    for g, w in zip(got_state, want_state, strict=True):
        assert not torch.isnan(w).any() and rel_rms(g, w) < 1e-12


def test_moneta_default_radius_keeps_the_unit_floor() -> None:
    """Without ``radius`` Moneta keeps the floor it had before the option, ``n(A) = (sum |A|^q
    + 1)^((q-2)/q)`` (``r = 1``), checked against that formula in float64; the repr names the
    radius."""
    cell = Moneta(4, 6, heads=2, q=3.5).double()
    assert cell.radius == 1.0 and "radius=1" in repr(cell)
    assert "radius=0.3" in repr(Moneta(4, 6, heads=2, radius=0.3))
    A = 0.7 * torch.randn(
        3, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    total = A.abs().pow(3.5).sum((-2, -1), keepdim=True) + 1.0
    torch.testing.assert_close(cell._memory(A), A / total.pow(1.5 / 3.5), rtol=1e-14, atol=0)
