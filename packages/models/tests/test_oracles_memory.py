"""Aaren, the matrix memories (DeltaNet, Gated DeltaNet, linear attention), Based and pLSTM
against float64 loops written from docs/models.md, one example and one step at a time, never
through the cells' ``project``/``recur``/``memory_inputs``: outputs, final state and every
gradient, from zero and from a given state, with resets, on ``reference`` and on each cell's
fast backend. (The outputs are also compared in test_cells_parallel.py, test_deltanet.py,
test_gated_deltanet.py, test_jrt.py and test_plstm.py; these add the final state, a given
state, resets and gradients where those lack them.)"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from _oracle_check import F64, Oracle, check
from conftest import backend_params
from torch import Tensor

from rnnkit.models.cells import (
    PLSTM,
    Aaren,
    AarenState,
    BasedAttention,
    DeltaNet,
    GatedDeltaNet,
    LinearAttention,
)

B, T, N_IN = 3, 7, 4


def _resets() -> Tensor:
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[0, 3] = resets[1, 0] = resets[2, 5] = resets[2, 6] = True
    return resets


def _x() -> Tensor:
    return torch.randn(B, T, N_IN, generator=torch.Generator().manual_seed(5), dtype=F64)


# --- Aaren --------------------------------------------------------------------------------


def _aaren(
    p: dict[str, Tensor], x: Tensor, initial: Sequence[Tensor] | None, resets: Tensor | None
) -> tuple[Tensor, list[Tensor]]:
    """Per head ``s_t = q . (W_k x_t) / sqrt(d)``, ``v_t = W_v x_t + b_v`` and ``y_t = sum_i
    e^{s_i} v_i / sum_i e^{s_i}`` over the episode so far, unstabilised: the sums ``U = sum
    e^{s_i}`` and ``W = sum e^{s_i} v_i`` start at ``(u e^m, w e^m)`` of a given state and at
    zero at a reset. Returns ``y`` and the final ``(U, W)``."""
    q, Wk, Wv, bv = p["query"], p["weight_k"], p["weight_v"], p["bias_v"]
    nh, d = q.shape
    ys, Us, Ws = [], [], []
    for e in range(x.shape[0]):
        if initial is None:
            U, W = torch.zeros(nh, dtype=F64), torch.zeros(nh, d, dtype=F64)
        else:
            m, u, w = (f[e] for f in initial)
            U, W = u * torch.exp(m), w * torch.exp(m)[:, None]
        row = []
        for t in range(x.shape[1]):
            if resets is not None and bool(resets[e, t]):
                U, W = torch.zeros(nh, dtype=F64), torch.zeros(nh, d, dtype=F64)
            k = (Wk @ x[e, t]).reshape(nh, d)
            v = (Wv @ x[e, t] + bv).reshape(nh, d)
            s = (q * k).sum(-1) / math.sqrt(d)
            U = U + torch.exp(s)
            W = W + torch.exp(s)[:, None] * v
            row.append((W / U[:, None]).reshape(-1))
        ys.append(torch.stack(row))
        Us.append(U)
        Ws.append(W)
    return torch.stack(ys), [torch.stack(Us), torch.stack(Ws)]


def _aaren_unscaled(state: AarenState) -> list[Tensor]:
    return [state.u * torch.exp(state.m), state.w * torch.exp(state.m)[..., None]]


@pytest.mark.parametrize("backend", backend_params("reference", "prefix_scan"))
@pytest.mark.parametrize("start", ["zero", "given", "resets"])
@pytest.mark.parametrize("heads", [1, 3])
def test_aaren_equals_its_equations(backend: str, start: str, heads: int) -> None:
    torch.manual_seed(heads)
    cell = Aaren(N_IN, 6, heads=heads).double()
    gen = torch.Generator().manual_seed(6)
    initial = [
        torch.randn(B, heads, generator=gen, dtype=F64),
        0.5 + torch.rand(B, heads, generator=gen, dtype=F64),
        torch.randn(B, heads, 6 // heads, generator=gen, dtype=F64),
    ]
    check(
        cell,
        _aaren,
        _x(),
        backend=backend,
        initial=initial if start != "zero" else None,
        resets=_resets() if start == "resets" else None,
        final=_aaren_unscaled,
    )


# --- DeltaNet, Gated DeltaNet, linear attention --------------------------------------------


def _memory(rule: str, decay: str) -> Oracle:
    """The shared body, per example, step and head: ``p_t = W x_t`` (rows ``q, k, v``), ``u_t
    = c_0 p_t + c_1 p_{t-1}``, ``q = normalize(silu(u_q))``, ``k = normalize(silu(u_k))``,
    ``v = u_v``, ``beta = sigmoid(w_beta x_t + b_beta)``; the decay ``alpha`` is 1 (``none``),
    ``1 - 2^(-5 - h)`` for head ``h`` (``fixed``, RetNet's) or ``exp(-exp(A_log)
    softplus(w_alpha x_t + dt_bias))`` (``gated``); then ``S_t = alpha S (I - beta k k^T) +
    beta v k^T`` (delta) or ``alpha S + beta v k^T`` (linear) and ``y_t = S_t q``. A reset
    zeroes ``S`` and ``p_{t-1}``."""

    def oracle(
        p: dict[str, Tensor], x: Tensor, initial: Sequence[Tensor] | None, resets: Tensor | None
    ) -> tuple[Tensor, list[Tensor]]:
        W, c = p["weight"], p["conv"]
        H = W.shape[0] // 3
        nh = p["weight_beta"].shape[0]
        d = H // nh
        eye = torch.eye(d, dtype=F64)
        ys, Ss, prevs = [], [], []
        for e in range(x.shape[0]):
            if initial is None:
                S = [torch.zeros(d, d, dtype=F64) for _ in range(nh)]
                prev = torch.zeros(3 * H, dtype=F64)
            else:
                S, prev = list(initial[0][e]), initial[1][e]
            row = []
            for t in range(x.shape[1]):
                if resets is not None and bool(resets[e, t]):
                    S = [torch.zeros(d, d, dtype=F64) for _ in range(nh)]
                    prev = torch.zeros(3 * H, dtype=F64)
                pt = W @ x[e, t]
                u = c[0] * pt + c[1] * prev
                prev = pt
                beta = torch.sigmoid(p["weight_beta"] @ x[e, t] + p["bias_beta"])
                if decay == "gated":
                    dt = F.softplus(p["weight_alpha"] @ x[e, t] + p["dt_bias"])
                    alpha = torch.exp(-torch.exp(p["A_log"]) * dt)
                elif decay == "fixed":
                    alpha = torch.tensor([1 - 2.0 ** (-5 - h) for h in range(nh)], dtype=F64)
                else:
                    alpha = torch.ones(nh, dtype=F64)
                out = []
                for h in range(nh):
                    sl = slice(h * d, (h + 1) * d)
                    q, k, v = F.silu(u[sl]), F.silu(u[H + h * d : H + (h + 1) * d]), u[2 * H :][sl]
                    q, k = q / q.norm(), k / k.norm()
                    kk = torch.outer(k, k)
                    keep = eye - beta[h] * kk if rule == "delta" else eye
                    S[h] = alpha[h] * S[h] @ keep + beta[h] * torch.outer(v, k)
                    out.append(S[h] @ q)
                row.append(torch.cat(out))
            ys.append(torch.stack(row))
            Ss.append(torch.stack(S))
            prevs.append(prev)
        return torch.stack(ys), [torch.stack(Ss), torch.stack(prevs)]

    return oracle


MEMORIES: dict[str, Callable[[], Any]] = {
    "deltanet": lambda: DeltaNet(N_IN, 6, heads=3),
    "deltanet-linear": lambda: DeltaNet(N_IN, 6, heads=2, rule="linear"),
    "gated_deltanet": lambda: GatedDeltaNet(N_IN, 6, heads=2),
    "gated_deltanet-linear": lambda: GatedDeltaNet(N_IN, 6, heads=3, rule="linear"),
    "linear_attention": lambda: LinearAttention(N_IN, 6, heads=2),
    "linear_attention-fixed": lambda: LinearAttention(N_IN, 6, heads=3, decay="fixed"),
    "linear_attention-gated": lambda: LinearAttention(N_IN, 6, heads=2, decay="gated"),
}


@pytest.mark.parametrize("backend", backend_params("reference", "chunked"))
@pytest.mark.parametrize("start", ["zero", "given", "resets"])
@pytest.mark.parametrize("name", sorted(MEMORIES))
def test_matrix_memory_equals_its_equations(backend: str, start: str, name: str) -> None:
    torch.manual_seed(len(name))
    cell = MEMORIES[name]().double()
    if cell.decay == "gated":
        with torch.no_grad():  # decays well inside (0, 1), not the near-1 of most heads at init
            cell.A_log.copy_(torch.log(torch.linspace(0.5, 2.0, cell.heads, dtype=F64)))
    gen = torch.Generator().manual_seed(8)
    nh, d = cell.heads, cell.head_dim
    initial = [
        torch.randn(B, nh, d, d, generator=gen, dtype=F64),
        torch.randn(B, 3 * cell.hidden_size, generator=gen, dtype=F64),
    ]
    check(
        cell,
        _memory(cell.rule, cell.decay),
        _x(),
        backend=backend,
        initial=initial if start != "zero" else None,
        resets=_resets() if start == "resets" else None,
    )


# --- Based (Taylor linear attention) --------------------------------------------------------


def _phi(z: Tensor) -> Tensor:
    """Based's feature map ``[1, z / d^(1/4), vec(z z^T) / (sqrt(2) sqrt(d))]``."""
    d = z.shape[-1]
    quad = torch.outer(z, z).reshape(-1) / (math.sqrt(2) * math.sqrt(d))
    return torch.cat((torch.ones(1, dtype=z.dtype), z / d**0.25, quad))


def _based(heads: int, d: int) -> Oracle:
    """Per head, with the projection's rows ``[q (heads d); k (heads d); v (heads V)]``: ``S_t
    = S_{t-1} + [v_t; 1] phi(k_t)^T``, ``o_t = S_t phi(q_t)``, ``y_t = o_t[:V] / (o_t[V] +
    1e-6)``; zero at a reset."""

    def oracle(
        p: dict[str, Tensor], x: Tensor, initial: Sequence[Tensor] | None, resets: Tensor | None
    ) -> tuple[Tensor, list[Tensor]]:
        V = (p["weight"].shape[0] - 2 * heads * d) // heads
        F_ = 1 + d + d * d
        ys, finals = [], []
        for e in range(x.shape[0]):
            S = (
                [torch.zeros(V + 1, F_, dtype=F64) for _ in range(heads)]
                if initial is None
                else list(initial[0][e])
            )
            row = []
            for t in range(x.shape[1]):
                if resets is not None and bool(resets[e, t]):
                    S = [torch.zeros(V + 1, F_, dtype=F64) for _ in range(heads)]
                z = p["weight"] @ x[e, t]
                out = []
                for h in range(heads):
                    q = z[h * d : (h + 1) * d]
                    k = z[heads * d + h * d : heads * d + (h + 1) * d]
                    v = z[2 * heads * d + h * V : 2 * heads * d + (h + 1) * V]
                    S[h] = S[h] + torch.outer(torch.cat((v, torch.ones(1, dtype=F64))), _phi(k))
                    o = S[h] @ _phi(q)
                    out.append(o[:V] / (o[V] + 1e-6))
                row.append(torch.cat(out))
            ys.append(torch.stack(row))
            finals.append(torch.stack(S))
        return torch.stack(ys), [torch.stack(finals)]

    return oracle


@pytest.mark.parametrize("backend", backend_params("reference", "chunked"))
@pytest.mark.parametrize("start", ["zero", "given", "resets"])
@pytest.mark.parametrize(("heads", "feature_dim"), [(1, 3), (2, 2)])
def test_based_equals_its_equations(backend: str, start: str, heads: int, feature_dim: int) -> None:
    torch.manual_seed(heads)
    cell = BasedAttention(N_IN, 6, heads=heads, feature_dim=feature_dim).double()
    V = 6 // heads
    # a given state as a prefix encoder would leave it: [v; 1] phi(k)^T over 3 random pairs
    gen = torch.Generator().manual_seed(9)
    S0 = torch.zeros(B, heads, V + 1, 1 + feature_dim + feature_dim**2, dtype=F64)
    for e in range(B):
        for h in range(heads):
            for _ in range(3):
                k = torch.randn(feature_dim, generator=gen, dtype=F64)
                v = torch.cat((torch.randn(V, generator=gen, dtype=F64), torch.ones(1, dtype=F64)))
                S0[e, h] += torch.outer(v, _phi(k))
    check(
        cell,
        _based(heads, feature_dim),
        _x(),
        backend=backend,
        initial=[S0] if start != "zero" else None,
        resets=_resets() if start == "resets" else None,
    )


# --- pLSTM on a line graph ------------------------------------------------------------------


def _plstm(heads: int, scale: float) -> Oracle:
    """Per head, with the projection's rows ``[q; k; v]`` (heads contiguous) and the gate rows
    ``[S; T; M; D]`` (``heads`` each): ``S, M, D = sigmoid(g)``, ``T = tanh(scale g_T)``,
    ``y_t = (M q^T C_{t-1} + D (q . k) v) / sqrt(d)``, ``C_t = T C_{t-1} + S k v^T``; zero at a
    reset."""

    def oracle(
        p: dict[str, Tensor], x: Tensor, initial: Sequence[Tensor] | None, resets: Tensor | None
    ) -> tuple[Tensor, list[Tensor]]:
        H = p["weight"].shape[0] // 3
        d = H // heads
        ys, finals = [], []
        for e in range(x.shape[0]):
            C = (
                [torch.zeros(d, d, dtype=F64) for _ in range(heads)]
                if initial is None
                else list(initial[0][e])
            )
            row = []
            for t in range(x.shape[1]):
                if resets is not None and bool(resets[e, t]):
                    C = [torch.zeros(d, d, dtype=F64) for _ in range(heads)]
                z = p["weight"] @ x[e, t]
                g = (p["weight_gates"] @ x[e, t] + p["bias_gates"]).reshape(4, heads)
                out = []
                for h in range(heads):
                    sl = slice(h * d, (h + 1) * d)
                    q, k, v = z[:H][sl], z[H : 2 * H][sl], z[2 * H :][sl]
                    S, M, D = (torch.sigmoid(g[i, h]) for i in (0, 2, 3))
                    Tr = torch.tanh(scale * g[1, h])
                    out.append((M * (C[h].T @ q) + D * (q @ k) * v) / math.sqrt(d))
                    C[h] = Tr * C[h] + S * torch.outer(k, v)
                row.append(torch.cat(out))
            ys.append(torch.stack(row))
            finals.append(torch.stack(C))
        return torch.stack(ys), [torch.stack(finals)]

    return oracle


@pytest.mark.parametrize("backend", backend_params("reference", "chunked"))
@pytest.mark.parametrize("start", ["zero", "given", "resets"])
@pytest.mark.parametrize("heads", [1, 3])
def test_plstm_equals_its_equations(backend: str, start: str, heads: int) -> None:
    torch.manual_seed(heads)
    cell = PLSTM(N_IN, 6, heads=heads, chunk_size=3).double()
    with torch.no_grad():  # gates that depend on the input (W_g starts at zero), T of both signs
        cell.weight_gates.normal_(0.0, 0.5)
        cell.bias_gates.normal_(0.0, 0.5)
    d = 6 // heads
    gen = torch.Generator().manual_seed(13)
    C0 = torch.randn(B, heads, d, d, generator=gen, dtype=F64)
    check(
        cell,
        _plstm(heads, cell.transition_scale),
        _x(),
        backend=backend,
        initial=[C0] if start != "zero" else None,
        resets=_resets() if start == "resets" else None,
    )
