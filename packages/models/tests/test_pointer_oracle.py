"""Pointer network against an independent float64 oracle (Vinyals et al. 2015, eq. 3).

The oracle recomputes everything by hand from the parameters: the element embedding, an Elman
encoder ``h_t = tanh(W x_t + b + R h_{t-1})`` over the valid rows only, the decoder started
from the encoder's last valid state and fed the previously pointed element (start vector
first, the END vector after END), ``u_j^i = v^T tanh(W_1 e_j + W_2 d_i)`` with the END key
``W_1 e_END``, and the masks (padding rows, rows already chosen, everything but END after
END). None of :mod:`rnnkit.models.pointer`'s helpers is used.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit.models.pointer import PointerNet

N_IN, H = 3, 5


def _model(seed: int) -> PointerNet:
    torch.manual_seed(seed)
    model = PointerNet(N_IN, hidden_size=H, cell="elman", mask_feature=2).double()
    return model.eval()


def _elman(cell: torch.nn.Module, x: Tensor, h: Tensor) -> Tensor:
    w = cell.weight_ih.detach()
    r = cell.recurrent.detach().reshape(H, H)
    b = cell.bias.detach()
    return torch.tanh(w @ x + b + r @ h)


def _oracle(model: PointerNet, x: Tensor, targets: list[int] | None) -> Tensor:
    """Logits ``(T_out, n + 1)`` for one example ``x: (n, N_IN)``; teacher-forced when
    ``targets`` is given, greedy otherwise."""
    we, be = model.embed.weight.detach(), model.embed.bias.detach()

    def emb(v: Tensor) -> Tensor:
        return we @ v + be

    n = x.shape[0]
    valid = [bool(x[j, 2] > 0.5) for j in range(n)]
    enc_cell, dec_cell = model.encoder.cell(0), model.decoder.cell(0)
    h = torch.zeros(H, dtype=torch.float64)
    states = []
    for j in range(n):
        if valid[j]:  # padding rows come last: the final state is the last valid row's
            h = _elman(enc_cell, emb(x[j]), h)
        states.append(h)
    w1, w2 = model.w1.weight.detach(), model.w2.weight.detach()
    v = model.v.weight.detach()[0]
    keys = [w1 @ e for e in states] + [w1 @ model.end_key.detach()]
    d = h
    inp = model.start.detach()
    chosen: set[int] = set()
    ended = False
    rows = []
    for i in range(n if targets is None else len(targets)):
        d = _elman(dec_cell, emb(inp), d)
        u = torch.stack([v @ torch.tanh(k + w2 @ d) for k in keys])
        lowest = torch.finfo(torch.float64).min
        for j in range(n + 1):
            blocked = j < n and (not valid[j] or j in chosen or ended)
            if blocked:
                u[j] = lowest
        rows.append(u)
        pick = int(u.argmax()) if targets is None else targets[i]
        chosen.add(pick)
        ended = ended or pick == n
        inp = model.end_input.detach() if pick == n else x[pick]
    return torch.stack(rows)


def _points(seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 5, N_IN, generator=g, dtype=torch.float64)
    x[..., 2] = 1.0
    x[1, 3:, 2] = 0.0  # the second example has 3 real rows and 2 padding rows
    return x


def test_teacher_forced_logits_match_the_float64_oracle() -> None:
    model = _model(0)
    x = _points(1)
    # a visit, a revisit-free order, END, then steps after END (its input is the END vector)
    targets = torch.tensor([[4, 0, 2, 5, 5], [1, 2, 5, 5, 5]])
    got = model(x, targets=targets)
    for b in range(2):
        want = _oracle(model, x[b], targets[b].tolist())
        torch.testing.assert_close(got[b], want, rtol=1e-12, atol=1e-12)


def test_greedy_logits_match_the_float64_oracle() -> None:
    for seed in range(3):
        model = _model(seed)
        x = _points(seed + 10)
        got = model(x)
        for b in range(2):
            torch.testing.assert_close(got[b], _oracle(model, x[b], None), rtol=1e-12, atol=1e-12)
