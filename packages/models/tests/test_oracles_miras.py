"""Moneta, Yaad, Memora and Titans against float64 loops written from docs/models.md ("Miras
memories"), one example, step and head at a time, never through the cells' ``project``,
``recur`` or ``exact_forward``: outputs, final state and every gradient, from zero and from a
given state, with resets, on ``reference``, ``exact`` and ``chunked_approx`` at chunk size 1
(which the docs say is the exact update). (test_miras.py compares the outputs from zero with
its own written-out loop; these add the state, resets and gradients.)"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _oracle_check import F64, Oracle, check
from conftest import backend_params
from torch import Tensor

from rnnkit.models.cells import Memora, Moneta, Titans, Yaad

B, T, N_IN, HID, HEADS = 3, 7, 4, 6, 2
D = HID // HEADS


def _body(p: dict[str, Tensor], x_t: Tensor, prev: Tensor) -> dict[str, Any]:
    """The shared body of one step: ``p_t = W x_t``, ``u = c_0 p_t + c_1 p_{t-1}``, per head
    ``q, k = normalize(silu(u_q)), normalize(silu(u_k))``, ``v = u_v``; ``eta =
    sigmoid(w_eta x_t + b_eta)``, ``alpha = exp(-exp(A_log) softplus(w_alpha x_t +
    dt_bias))`` and the cell's extra gate's pre-activation ``w_extra x_t + b_extra``."""
    pt = p["weight"] @ x_t
    u = p["conv"][0] * pt + p["conv"][1] * prev

    def split(z: Tensor, unit: bool) -> list[Tensor]:
        heads = list(z.reshape(HEADS, D))
        return [F.silu(h) / F.silu(h).norm() for h in heads] if unit else heads

    extra = p["weight_extra"] @ x_t + p["bias_extra"] if p["weight_extra"].numel() else None
    return {
        "p": pt,
        "q": split(u[:HID], True),
        "k": split(u[HID : 2 * HID], True),
        "v": split(u[2 * HID :], False),
        "eta": torch.sigmoid(p["weight_eta"] @ x_t + p["bias_eta"]),
        "alpha": torch.exp(
            -torch.exp(p["A_log"]) * F.softplus(p["weight_alpha"] @ x_t + p["dt_bias"])
        ),
        "extra": extra,
    }


#: ``(body, head, memory fields of that head) -> (memory W_t after the write, new fields)``.
Update = Callable[[dict[str, Any], int, list[Tensor]], tuple[Tensor, list[Tensor]]]


def _oracle(update: Update, fields: int) -> Oracle:
    """The loop over examples and steps; the state is ``fields`` memory tensors ``(heads, d,
    d)`` then ``prev: (3 H,)``, all zero at the start and at a reset."""

    def oracle(
        p: dict[str, Tensor], x: Tensor, initial: Sequence[Tensor] | None, resets: Tensor | None
    ) -> tuple[Tensor, list[Tensor]]:
        def zero() -> tuple[list[list[Tensor]], Tensor]:
            mem = [[torch.zeros(D, D, dtype=F64) for _ in range(fields)] for _ in range(HEADS)]
            return mem, torch.zeros(3 * HID, dtype=F64)

        ys: list[Tensor] = []
        finals: list[list[Tensor]] = [[] for _ in range(fields + 1)]
        for e in range(x.shape[0]):
            if initial is None:
                mem, prev = zero()
            else:
                mem = [[initial[f][e, h] for f in range(fields)] for h in range(HEADS)]
                prev = initial[fields][e]
            row = []
            for t in range(x.shape[1]):
                if resets is not None and bool(resets[e, t]):
                    mem, prev = zero()
                g = _body(p, x[e, t], prev)
                prev = g["p"]
                out = []
                for h in range(HEADS):
                    W, mem[h] = update(g, h, mem[h])
                    out.append(W @ g["q"][h])
                row.append(torch.cat(out))
            ys.append(torch.stack(row))
            for f in range(fields):
                finals[f].append(torch.stack([mem[h][f] for h in range(HEADS)]))
            finals[fields].append(prev)
        return torch.stack(ys), [torch.stack(f) for f in finals]

    return oracle


def _moneta(p_exp: float, q_exp: float, radius: float) -> Update:
    """``W = A / n(A)``, ``n(A) = ((norm_q(A) / r)^q + 1)^((q - 2) / q)``; ``A_t = alpha A -
    eta sign(e) |e|^(p - 1) k^T`` with ``e = W_{t-1} k - v``."""

    def read(f: list[Tensor]) -> Tensor:
        norm_q = f[0].abs().pow(q_exp).sum().pow(1 / q_exp)
        return f[0] / ((norm_q / radius) ** q_exp + 1) ** ((q_exp - 2) / q_exp)

    def update(g: dict[str, Any], h: int, f: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        e = read(f) @ g["k"][h] - g["v"][h]
        grad = torch.outer(torch.sign(e) * e.abs() ** (p_exp - 1), g["k"][h])
        new = [g["alpha"][h] * f[0] - g["eta"][h] * grad]
        return read(new), new

    return update


def _yaad(huber: str) -> Update:
    """``delta = softplus(w_delta x + b_delta)``; ``switch``: ``W_t = alpha W - eta e k^T`` if
    ``norm(e) <= delta`` else ``alpha W - eta delta sign(e) k^T``; ``coordinate``: ``alpha W
    - eta clamp(e, -delta, delta) k^T``."""

    def update(g: dict[str, Any], h: int, f: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        k = g["k"][h]
        e = f[0] @ k - g["v"][h]
        delta = F.softplus(g["extra"][h])
        if huber == "coordinate":
            step = torch.maximum(torch.minimum(e, delta), -delta)
        elif bool(e.norm() <= delta):
            step = e
        else:
            step = delta * torch.sign(e)
        new = [g["alpha"][h] * f[0] - g["eta"][h] * torch.outer(step, k)]
        return new[0], new

    return update


def _memora(scale: float) -> Update:
    """Logits ``A_t = alpha A - eta e k^T``, ``W = c softmax(A)`` over the value index (dim 0)
    of each key column, ``e = W_{t-1} k - v``."""

    def read(f: list[Tensor]) -> Tensor:
        z = torch.exp(f[0] - f[0].amax(0))
        return scale * z / z.sum(0)

    def update(g: dict[str, Any], h: int, f: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        e = read(f) @ g["k"][h] - g["v"][h]
        new = [g["alpha"][h] * f[0] - g["eta"][h] * torch.outer(e, g["k"][h])]
        return read(new), new

    return update


def _titans() -> Update:
    """``m = sigmoid(w_m x + b_m)``, ``S_t = m S - eta e k^T``, ``M_t = alpha M + S_t``, ``e =
    M_{t-1} k - v``; fields ``(M, S)``."""

    def update(g: dict[str, Any], h: int, f: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        M, S = f
        e = M @ g["k"][h] - g["v"][h]
        S = torch.sigmoid(g["extra"][h]) * S - g["eta"][h] * torch.outer(e, g["k"][h])
        M = g["alpha"][h] * M + S
        return M, [M, S]

    return update


CASES: dict[str, tuple[Callable[..., Any], Update, int]] = {
    "moneta": (lambda **kw: Moneta(N_IN, HID, heads=HEADS, **kw), _moneta(3.0, 4.0, 1.0), 1),
    "moneta-p2.5-q3-r0.3": (
        lambda **kw: Moneta(N_IN, HID, heads=HEADS, p=2.5, q=3.0, radius=0.3, **kw),
        _moneta(2.5, 3.0, 0.3),
        1,
    ),
    "moneta-q2": (
        lambda **kw: Moneta(N_IN, HID, heads=HEADS, p=3.0, q=2.0, **kw),
        _moneta(3.0, 2.0, 1.0),
        1,
    ),
    "yaad": (lambda **kw: Yaad(N_IN, HID, heads=HEADS, **kw), _yaad("switch"), 1),
    "yaad-coordinate": (
        lambda **kw: Yaad(N_IN, HID, heads=HEADS, huber="coordinate", **kw),
        _yaad("coordinate"),
        1,
    ),
    "memora": (lambda **kw: Memora(N_IN, HID, heads=HEADS, **kw), _memora(float(D)), 1),
    "memora-scale1.5": (
        lambda **kw: Memora(N_IN, HID, heads=HEADS, scale=1.5, **kw),
        _memora(1.5),
        1,
    ),
    "titans": (lambda **kw: Titans(N_IN, HID, heads=HEADS, **kw), _titans(), 2),
}


@pytest.mark.parametrize("backend", backend_params("reference", "exact", "chunked_approx"))
@pytest.mark.parametrize("start", ["zero", "given", "resets"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_miras_cell_equals_its_update(backend: str, start: str, name: str) -> None:
    make, update, fields = CASES[name]
    torch.manual_seed(len(name))
    kw = {"chunk_size": 1} if backend == "chunked_approx" else {}
    cell = make(**kw).double()
    with torch.no_grad():  # retention well inside (0, 1), steps that move the memory
        cell.A_log.copy_(torch.log(torch.tensor([0.5, 2.0], dtype=F64)))
        cell.dt_bias.fill_(0.0)
        cell.bias_eta.fill_(1.0)
    gen = torch.Generator().manual_seed(12)
    x = 1.5 * torch.randn(B, T, N_IN, generator=gen, dtype=F64)
    initial = [0.5 * torch.randn(B, HEADS, D, D, generator=gen, dtype=F64) for _ in range(fields)]
    initial.append(torch.randn(B, 3 * HID, generator=gen, dtype=F64))
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[0, 3] = resets[1, 0] = resets[2, 5] = resets[2, 6] = True
    check(
        cell,
        _oracle(update, fields),
        x,
        backend=backend,
        initial=initial if start != "zero" else None,
        resets=resets if start == "resets" else None,
    )
