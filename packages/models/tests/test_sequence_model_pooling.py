"""SequenceModel's pooling against hand-computed features in float64, bidirectional included."""

from __future__ import annotations

import torch

from rnnkit.models.networks import SequenceModel


def _elman_run(cell: torch.nn.Module, xs: list[torch.Tensor], hidden: int) -> list[torch.Tensor]:
    """``h_t = tanh(W x_t + b + R h_{t-1})`` over ``xs``, by hand."""
    w, b = cell.weight_ih.detach(), cell.bias.detach()
    r = cell.recurrent.detach().reshape(hidden, hidden)
    h = torch.zeros(hidden, dtype=torch.float64)
    out = []
    for x in xs:
        h = torch.tanh(w @ x + b + r @ h)
        out.append(h)
    return out


def _directions(model: SequenceModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle's states of one sequence ``x: (T, I)``: the forward direction's ``(T, H)`` in
    time order, the backward direction's ``(T, H)`` in the order it runs (last input first)."""
    steps = list(x.unbind(0))
    fwd = _elman_run(model.rnn.cell(0, 0), steps, 4)
    bwd = _elman_run(model.rnn.cell(0, 1), steps[::-1], 4)
    return torch.stack(fwd), torch.stack(bwd)


def test_bidirectional_last_pooling_reads_each_direction_after_the_whole_sequence() -> None:
    """The forward direction has read the sequence at its last step, the backward direction at
    its first: ``last`` pools ``[h_fwd(T-1), h_bwd(0)]`` (torch.nn.RNN's ``h_n``), so every
    input reaches both halves."""
    torch.manual_seed(0)
    model = SequenceModel(
        3, 2, cell="elman", hidden_size=4, bidirectional=True, pooling="last"
    ).double()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    got = model(x)
    for b in range(2):
        fwd, bwd = _directions(model, x[b])
        want = model.head.weight.detach() @ torch.cat([fwd[-1], bwd[-1]]) + model.head.bias.detach()
        torch.testing.assert_close(got[b], want, rtol=1e-12, atol=1e-12)
    # the first input reaches the backward half too
    moved = x.clone()
    moved[:, 0] += 1.0
    with torch.no_grad():
        model.head.weight[:, :4] = 0.0  # keep only the backward half
    assert (model(moved) - model(x)).abs().min() > 1e-6


def test_unidirectional_last_and_mean_pooling() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    for pooling in ("last", "mean"):
        torch.manual_seed(2)
        model = SequenceModel(3, 2, cell="elman", hidden_size=4, pooling=pooling).double()
        got = model(x)
        for b in range(2):
            hs = torch.stack(_elman_run(model.rnn.cell(0), list(x[b].unbind(0)), 4))
            feat = hs[-1] if pooling == "last" else hs.mean(0)
            want = model.head.weight.detach() @ feat + model.head.bias.detach()
            torch.testing.assert_close(got[b], want, rtol=1e-12, atol=1e-12)


def test_bidirectional_mean_pooling_averages_every_step_of_both_directions() -> None:
    """``mean`` is not ``last``: each half is its direction's mean over all steps."""
    torch.manual_seed(3)
    model = SequenceModel(
        3, 2, cell="elman", hidden_size=4, bidirectional=True, pooling="mean"
    ).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    got = model(x)
    for b in range(2):
        fwd, bwd = _directions(model, x[b])
        feat = torch.cat([fwd.mean(0), bwd.mean(0)])
        want = model.head.weight.detach() @ feat + model.head.bias.detach()
        torch.testing.assert_close(got[b], want, rtol=1e-12, atol=1e-12)
