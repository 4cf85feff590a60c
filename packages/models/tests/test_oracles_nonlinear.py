"""IndRNN, RHN, the leaky RNN, M2RNN, AL-RNN, the state-regularised RNN and the hybrid RNN
against float64 loops written from docs/models.md, one example and one step at a time, never
through the cells' ``project``/``recur``/Newton methods: outputs, final state and every
gradient, from zero and from a given state, with resets, on ``reference`` (and ``newton`` for
IndRNN). (The outputs are also compared in test_nonlinear_cells.py, test_m2rnn.py,
test_alrnn.py, test_srrnn.py and test_hybrid_rnn.py; these add a given state, resets and the
gradients.)"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
import torch.nn.functional as F
from _oracle_check import F64, Oracle, check
from conftest import backend_params
from torch import Tensor

from rnnkit.models.cells import (
    ALRNN,
    M2RNN,
    RHN,
    HybridRNN,
    IndRNN,
    LeakyRNN,
    StateRegularized,
)

B, T, N_IN, H = 3, 7, 4, 5
STARTS = ["zero", "given", "resets"]
Step = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def _x() -> Tensor:
    return 1.5 * torch.randn(B, T, N_IN, generator=torch.Generator().manual_seed(9), dtype=F64)


def _initial(start: str, *shape: int) -> list[Tensor] | None:
    gen = torch.Generator().manual_seed(10)
    return None if start == "zero" else [torch.randn(B, *shape, generator=gen, dtype=F64)]


def _resets(start: str) -> Tensor | None:
    if start != "resets":
        return None
    resets = torch.zeros(B, T, dtype=torch.bool)
    resets[0, 3] = resets[1, 0] = resets[2, 5] = resets[2, 6] = True
    return resets


def _run(
    x: Tensor, initial: Sequence[Tensor] | None, resets: Tensor | None, zero: Tensor, step: Step
) -> tuple[Tensor, list[Tensor]]:
    """The loop the oracles here share: per example, the state starts at ``initial`` (or
    ``zero``), is ``zero`` again at a reset, and ``step(x_t, h) -> (y_t, h)`` advances it."""
    ys, finals = [], []
    for e in range(x.shape[0]):
        h = zero if initial is None else initial[0][e]
        row = []
        for t in range(x.shape[1]):
            if resets is not None and bool(resets[e, t]):
                h = zero
            y, h = step(x[e, t], h)
            row.append(y)
        ys.append(torch.stack(row))
        finals.append(h)
    return torch.stack(ys), [torch.stack(finals)]


# --- IndRNN ---------------------------------------------------------------------------------


def _indrnn(activation: str, u_max: float) -> Oracle:
    """``h_t = act(W x_t + u * h + b)`` with ``u`` clamped to ``[-u_max, u_max]``."""

    def oracle(
        p: dict[str, Tensor], x: Tensor, initial: Sequence[Tensor] | None, resets: Tensor | None
    ) -> tuple[Tensor, list[Tensor]]:
        u = torch.clamp(p["recurrent"], -u_max, u_max)
        act = torch.relu if activation == "relu" else torch.tanh

        def step(x_t: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
            h = act(p["weight_ih"] @ x_t + u * h + p["bias"])
            return h, h

        return _run(x, initial, resets, torch.zeros(H, dtype=F64), step)

    return oracle


@pytest.mark.parametrize("backend", backend_params("reference", "newton"))
@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_indrnn_equals_its_equation(backend: str, start: str, activation: str) -> None:
    torch.manual_seed(0)
    cell = IndRNN(N_IN, H, activation=activation, u_max=0.95, u_init=(-1.2, 1.2)).double()
    with torch.no_grad():  # units on both sides of the clamp
        cell.recurrent.copy_(torch.tensor([-1.2, -0.5, 0.3, 0.7, 1.3], dtype=F64))
    check(
        cell,
        _indrnn(activation, 0.95),
        _x(),
        backend=backend,
        initial=_initial(start, H),
        resets=_resets(start),
    )


# --- RHN ------------------------------------------------------------------------------------


def _rhn(
    p: dict[str, Tensor], x: Tensor, initial: Sequence[Tensor] | None, resets: Tensor | None
) -> tuple[Tensor, list[Tensor]]:
    """``s_0 = s_{t-1}``; for each micro-step ``l``: ``h_l = tanh(W_H x_t [l = 1] + R_{H,l}
    s_{l-1} + b_{H,l})``, ``t_l = sigmoid(W_T x_t [l = 1] + R_{T,l} s_{l-1} + b_{T,l})``,
    ``s_l = h_l t_l + s_{l-1} (1 - t_l)``; ``y_t = s_t = s_L``."""
    W, R, b = p["weight_ih"], p["recurrent"], p["bias"]

    def step(x_t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        for layer in range(R.shape[0]):
            pre = R[layer] @ s + b[layer]
            if layer == 0:
                pre = pre + W @ x_t
            h = torch.tanh(pre[:H])
            gate = torch.sigmoid(pre[H:])
            s = h * gate + s * (1 - gate)
        return s, s

    return _run(x, initial, resets, torch.zeros(H, dtype=F64), step)


@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize("depth", [1, 3])
def test_rhn_equals_its_equations(start: str, depth: int) -> None:
    torch.manual_seed(depth)
    cell = RHN(N_IN, H, depth=depth).double()
    with torch.no_grad():  # every micro-step's own b_H, and gates neither open nor shut
        cell.bias.normal_()
    check(cell, _rhn, _x(), initial=_initial(start, H), resets=_resets(start))


# --- leaky RNN ------------------------------------------------------------------------------


def _leaky(activation: str) -> Oracle:
    """``tau = 1 + softplus(tau_raw)``, ``h_t = (1 - 1/tau) h + (1/tau) act(W x_t + U h +
    b)``; ``leaky_relu`` has slope 0.01."""

    def oracle(
        p: dict[str, Tensor], x: Tensor, initial: Sequence[Tensor] | None, resets: Tensor | None
    ) -> tuple[Tensor, list[Tensor]]:
        tau = 1 + torch.log1p(torch.exp(p["tau_raw"]))

        def act(z: Tensor) -> Tensor:
            return torch.tanh(z) if activation == "tanh" else torch.where(z >= 0, z, 0.01 * z)

        def step(x_t: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
            pre = p["weight_ih"] @ x_t + p["recurrent"] @ h + p["bias"]
            h = (1 - 1 / tau) * h + act(pre) / tau
            return h, h

        return _run(x, initial, resets, torch.zeros(H, dtype=F64), step)

    return oracle


@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize("activation", ["tanh", "leaky_relu"])
def test_leaky_rnn_equals_its_equation(start: str, activation: str) -> None:
    torch.manual_seed(2)
    cell = LeakyRNN(N_IN, H, activation=activation, tau_init=(1.0, 4.0)).double()
    check(cell, _leaky(activation), _x(), initial=_initial(start, H), resets=_resets(start))


# --- M2RNN ----------------------------------------------------------------------------------


def _m2rnn(heads: int, K: int, V: int) -> Oracle:
    """Per head, with the projection's rows ``[q (heads K); k (heads K); v (heads V); f
    (heads)]``: ``f = exp(-exp(A_log) softplus(w_f x_t + dt_bias))``, ``Z = tanh(H W + k
    v^T)``, ``H_t = f H + (1 - f) Z``, ``y_t = H_t^T q + D * v`` (``W = mix``, ``D = skip``),
    heads concatenated."""

    def oracle(
        p: dict[str, Tensor], x: Tensor, initial: Sequence[Tensor] | None, resets: Tensor | None
    ) -> tuple[Tensor, list[Tensor]]:
        def step(x_t: Tensor, S: Tensor) -> tuple[Tensor, Tensor]:
            z = p["weight"] @ x_t
            out, new = [], []
            for h in range(heads):
                q = z[h * K : (h + 1) * K]
                k = z[heads * K + h * K : heads * K + (h + 1) * K]
                v = z[2 * heads * K + h * V : 2 * heads * K + (h + 1) * V]
                dt = F.softplus(z[heads * (2 * K + V) + h] + p["dt_bias"][h])
                f = torch.exp(-torch.exp(p["A_log"][h]) * dt)
                Z = torch.tanh(S[h] @ p["mix"][h] + torch.outer(k, v))
                new.append(f * S[h] + (1 - f) * Z)
                out.append(new[-1].T @ q + p["skip"][h] * v)
            return torch.cat(out), torch.stack(new)

        return _run(x, initial, resets, torch.zeros(heads, K, V, dtype=F64), step)

    return oracle


@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize(("value_dim", "key_dim"), [(2, 3), (3, 2)])
def test_m2rnn_equals_its_equations(start: str, value_dim: int, key_dim: int) -> None:
    torch.manual_seed(value_dim)
    cell = M2RNN(N_IN, 6, value_dim=value_dim, key_dim=key_dim).double()
    heads = 6 // value_dim
    with torch.no_grad():  # a mixing matrix other than I, D other than 1, gates inside (0, 1)
        cell.mix.add_(0.3 * torch.randn_like(cell.mix))
        cell.skip.mul_(torch.rand_like(cell.skip))
        cell.A_log.copy_(torch.log(torch.linspace(0.5, 2.0, heads, dtype=F64)))
    check(
        cell,
        _m2rnn(heads, key_dim, value_dim),
        _x(),
        initial=_initial(start, heads, key_dim, value_dim),
        resets=_resets(start),
    )


# --- AL-RNN ---------------------------------------------------------------------------------


def _alrnn(pwl_units: int) -> Oracle:
    """``z_t = A * z + W phi*(z) + C x_t + h`` with ``phi*`` rectifying the last ``P`` units
    only (``A = diag``, ``W = recurrent``, ``C = weight_ih``, ``h = bias``)."""

    def oracle(
        p: dict[str, Tensor], x: Tensor, initial: Sequence[Tensor] | None, resets: Tensor | None
    ) -> tuple[Tensor, list[Tensor]]:
        def step(x_t: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
            rect = torch.cat((z[: H - pwl_units], torch.relu(z[H - pwl_units :])))
            z = p["diag"] * z + p["recurrent"] @ rect + p["weight_ih"] @ x_t + p["bias"]
            return z, z

        return _run(x, initial, resets, torch.zeros(H, dtype=F64), step)

    return oracle


@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize("pwl_units", [0, 2, H])
def test_alrnn_equals_its_equation(start: str, pwl_units: int) -> None:
    torch.manual_seed(pwl_units)
    cell = ALRNN(N_IN, H, pwl_units=pwl_units).double()
    with torch.no_grad():  # W and h large enough that the rectified units change sign
        cell.recurrent.normal_(0.0, 0.5)
        assert cell.bias is not None
        cell.bias.normal_(0.0, 0.5)
    check(cell, _alrnn(pwl_units), _x(), initial=_initial(start, H), resets=_resets(start))


# --- state-regularised RNN ------------------------------------------------------------------


def _srrnn(base: str, temperature: float, straight_through: bool) -> Oracle:
    """``u_t`` from torch's GRU (gates ``r, z, n``: ``n = tanh(x_n + r (W_hn h + b_hn))``, ``u
    = (1 - z) n + z h``) or LSTM (gates ``i, f, g, o``, ``u = o tanh(c)``); ``alpha =
    softmax(u S^T / tau)``; ``h_t = alpha S`` (soft) or, straight through, the centroid of the
    largest ``alpha`` carrying the soft mixture's gradient. State ``(h, c)``; the GRU base
    passes ``c`` through."""

    def oracle(
        p: dict[str, Tensor], x: Tensor, initial: Sequence[Tensor] | None, resets: Tensor | None
    ) -> tuple[Tensor, list[Tensor]]:
        S = p["centroids"]
        zero = torch.zeros(H, dtype=F64)
        ys, hs, cs = [], [], []
        for e in range(x.shape[0]):
            h, c = (zero, zero) if initial is None else (initial[0][e], initial[1][e])
            row = []
            for t in range(x.shape[1]):
                if resets is not None and bool(resets[e, t]):
                    h, c = zero, zero
                gx = p["weight_ih"] @ x[e, t] + p["bias_ih"]
                gh = p["weight_hh"] @ h + p["bias_hh"]
                if base == "gru":
                    r = torch.sigmoid(gx[:H] + gh[:H])
                    z = torch.sigmoid(gx[H : 2 * H] + gh[H : 2 * H])
                    n = torch.tanh(gx[2 * H :] + r * gh[2 * H :])
                    u = (1 - z) * n + z * h
                else:
                    i, f, g, o = (gx + gh).chunk(4)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    u = torch.sigmoid(o) * torch.tanh(c)
                scores = S @ u / temperature
                alpha = torch.exp(scores - scores.amax())
                h = (alpha / alpha.sum()) @ S
                if straight_through:
                    h = h + (S[int(scores.argmax())] - h).detach()
                row.append(h)
            ys.append(torch.stack(row))
            hs.append(h)
            cs.append(c)
        return torch.stack(ys), [torch.stack(hs), torch.stack(cs)]

    return oracle


@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize("straight_through", [False, True])
@pytest.mark.parametrize("base", ["gru", "lstm"])
def test_srrnn_equals_its_equations(start: str, straight_through: bool, base: str) -> None:
    torch.manual_seed(4)
    cell = StateRegularized(
        N_IN, H, centroids=6, temperature=0.7, base=base, straight_through=straight_through
    ).double()
    initial = _initial(start, H)
    if initial is not None:  # h on a centroid's scale; c any
        initial = [0.3 * initial[0], initial[0].flip(0)]
    # the GRU base carries c unchanged (zero from a reset on), the LSTM base its memory; the
    # third example has no reset, so a given c reaches the final state
    resets = _resets(start)
    if resets is not None:
        resets[2] = False
    check(
        cell,
        _srrnn(base, 0.7, straight_through),
        _x(),
        initial=initial,
        resets=resets,
    )


# --- hybrid RNN -----------------------------------------------------------------------------


def _hybrid(update: str, attention: int, core: str, depth: int) -> Oracle:
    """``pre = W x_t + U h + b`` with rows ``[candidate; gate]``; the candidate ``f = tanh(pre)``
    (tanh core) or the RHN's micro-steps from ``s_0 = h`` (the first from ``pre``'s ``[H; T]``
    rows, the later ones from ``deep``); ``u`` by the update (replace ``f``, additive ``h +
    f``, learned_rate ``(1 - a) h + a f`` with ``a = sigmoid(rate)``, gated ``(1 - g) h + g f``
    with ``g = sigmoid(pre_gate)``); with attention over ``M = [window; u]``: ``h_t = u + W_O
    sum_j softmax_j((W_Q u) . (W_K M_j) / sqrt(H)) W_V M_j`` and the window drops its oldest
    state for ``h_t`` (without attention it is carried unchanged). State ``(h, window)``,
    zero at a reset."""

    def oracle(
        p: dict[str, Tensor], x: Tensor, initial: Sequence[Tensor] | None, resets: Tensor | None
    ) -> tuple[Tensor, list[Tensor]]:
        K = max(attention, 1)
        ys, hs, windows = [], [], []
        for e in range(x.shape[0]):
            h, win = (
                (torch.zeros(H, dtype=F64), [torch.zeros(H, dtype=F64)] * K)
                if initial is None
                else (initial[0][e], list(initial[1][e]))
            )
            row = []
            for t in range(x.shape[1]):
                if resets is not None and bool(resets[e, t]):
                    h, win = torch.zeros(H, dtype=F64), [torch.zeros(H, dtype=F64)] * K
                pre = p["weight_ih"] @ x[e, t] + p["recurrent"] @ h + p["bias"]
                if core == "tanh":
                    f, rest = torch.tanh(pre[:H]), pre[H:]
                else:
                    s, rows, rest = h, pre[: 2 * H], pre[2 * H :]
                    for layer in range(depth):
                        if layer > 0:
                            rows = p["deep"][layer - 1] @ s + p["deep_bias"][layer - 1]
                        gate = torch.sigmoid(rows[H:])
                        s = torch.tanh(rows[:H]) * gate + s * (1 - gate)
                    f = s
                if update == "replace":
                    u = f
                elif update == "additive":
                    u = h + f
                elif update == "learned_rate":
                    a = torch.sigmoid(p["rate"])
                    u = (1 - a) * h + a * f
                else:
                    g = torch.sigmoid(rest)
                    u = (1 - g) * h + g * f
                if attention:
                    wq, wk, wv, wo = p["attn"]
                    M = [*win, u]
                    scores = torch.stack([(wq @ u) @ (wk @ m) for m in M]) / H**0.5
                    w = torch.exp(scores - scores.amax())
                    w = w / w.sum()
                    h = u + wo @ sum(
                        (w[j] * (wv @ m) for j, m in enumerate(M)), torch.zeros(H, dtype=F64)
                    )
                    win = [*win[1:], h]
                else:
                    h = u
                row.append(h)
            ys.append(torch.stack(row))
            hs.append(h)
            windows.append(torch.stack(win))
        return torch.stack(ys), [torch.stack(hs), torch.stack(windows)]

    return oracle


@pytest.mark.parametrize("start", STARTS)
@pytest.mark.parametrize(
    ("update", "attention", "core"),
    [
        ("gated", 3, "tanh"),
        ("learned_rate", 0, "tanh"),
        ("additive", 2, "tanh"),
        ("replace", 3, "rhn"),
        ("gated", 0, "rhn"),
    ],
)
def test_hybrid_rnn_equals_its_equations(
    start: str, update: str, attention: int, core: str
) -> None:
    torch.manual_seed(6)
    depth = 3 if core == "rhn" else 1
    cell = HybridRNN(N_IN, H, update=update, attention=attention, core=core, depth=depth).double()
    with torch.no_grad():
        cell.bias.normal_()
        if cell.deep_bias is not None:
            cell.deep_bias.normal_()
        if cell.rate is not None:
            cell.rate.normal_()
    K = max(attention, 1)
    gen = torch.Generator().manual_seed(14)
    initial = [
        torch.randn(B, H, generator=gen, dtype=F64),
        torch.randn(B, K, H, generator=gen, dtype=F64),
    ]
    resets = _resets(start)
    if resets is not None:  # the third example keeps its given window to the end
        resets[2] = False
    check(
        cell,
        _hybrid(update, attention, core, depth),
        _x(),
        initial=initial if start != "zero" else None,
        resets=resets,
    )
