"""Recurrent hypernetwork: generated weight shapes, the target MLP, the output regulariser,
fixed embeddings of other tasks, argument checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnnkit.models import create_model
from rnnkit.models.hypernet import RecurrentHypernetwork


def _net(**kw: object) -> RecurrentHypernetwork:
    torch.manual_seed(0)
    cfg: dict[str, object] = {"tasks": 3, "chunk_size": 50, "hidden_size": 8}
    cfg.update(kw)
    m = create_model("rnn_hypernet", input_size=6, output_size=2, hidden_sizes=(5,), **cfg)
    assert isinstance(m, RecurrentHypernetwork)
    return m.double()


def test_generated_weights_shapes_float64() -> None:
    m = _net()
    assert m.num_weights == 6 * 5 + 5 + 5 * 2 + 2
    assert m.chunks == 1  # 47 weights in one chunk of 50
    w = m.generate(1)
    assert w.shape == (47,) and w.dtype == torch.float64
    many = m.generate(torch.tensor([0, 2, 1]))
    assert many.shape == (3, 47)
    torch.testing.assert_close(many[2], w)
    assert _net(chunk_size=10).chunks == 5


def test_target_is_the_mlp_with_those_weights() -> None:
    m = _net()
    w = m.generate(0)
    mlp = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    at = 0
    with torch.no_grad():
        for layer in (mlp[0], mlp[2]):
            assert isinstance(layer, nn.Linear)
            n = layer.weight.numel()
            layer.weight.copy_(w[at : at + n].reshape(layer.weight.shape))
            layer.bias.copy_(w[at + n : at + n + layer.bias.numel()])
            at += n + layer.bias.numel()
    x = torch.rand(4, 6, dtype=torch.float64)
    torch.testing.assert_close(m(x, task=0), mlp(x), rtol=1e-12, atol=1e-12)


def test_output_regulariser_penalises_change_for_earlier_tasks() -> None:
    m = _net(beta=0.5)
    assert m.regularization(0.0).item() == 0.0  # first task: nothing to remember
    m.remember(2)
    assert m.memory.shape == (2, 47)
    assert m.regularization(0.0).item() == 0.0  # nothing has changed yet
    with torch.no_grad():
        m.head.bias.add_(0.1)  # every generated weight moves by 0.1
    want = 0.5 * 47 * 0.01  # beta * mean over the two tasks of the squared distance
    assert m.regularization(0.0).item() == pytest.approx(want, rel=1e-12)


def test_only_the_current_task_embedding_learns() -> None:
    m = _net()
    m.remember(1)
    loss = m(torch.rand(3, 6, dtype=torch.float64)).sum() + m.regularization()
    loss.backward()
    grad = m.task_embedding.grad
    assert grad is not None
    assert (grad[0] == 0).all() and (grad[2] == 0).all()
    assert (grad[1] != 0).any()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"sizes": (4,)}, "sizes"),
        ({"sizes": (4, 0, 2)}, "sizes"),
        ({"tasks": 0}, "tasks"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"beta": -1.0}, "beta"),
        ({"beta": float("inf")}, "beta must be a finite number"),
        ({"beta": float("nan")}, "beta must be a finite number"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, object], name: str) -> None:
    cfg: dict[str, object] = {"sizes": (4, 3, 2)}
    cfg.update(kwargs)
    with pytest.raises(ValueError, match=name):
        RecurrentHypernetwork(**cfg)  # type: ignore[arg-type]


def test_bad_calls_raise() -> None:
    m = _net()
    with pytest.raises(ValueError, match="tasks"):
        m.generate(3)
    with pytest.raises(ValueError, match="task"):
        m.remember(5)
    with pytest.raises(ValueError, match="weights"):
        m.target(torch.rand(2, 6, dtype=torch.float64), torch.zeros(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="x must"):
        m(torch.rand(2, 7, dtype=torch.float64))


def test_generation_is_the_chunk_recurrence_in_float64() -> None:
    """``h_k = tanh(W [e_t, c_k] + b + R h_{k-1})`` (an Elman stack), ``theta_t[k] = W_o h_k +
    b_o``, concatenated and cut to ``P``: recomputed by hand from the parameters."""
    m = _net(chunk_size=10, cell="elman")  # 47 weights: 5 chunks, the last 7 numbers dropped
    cell = m.rnn.cell(0)
    w, b = cell.weight_ih.detach(), cell.bias.detach()
    r = cell.recurrent.detach().reshape(8, 8)
    w_o, b_o = m.head.weight.detach(), m.head.bias.detach()
    for task in range(3):
        h = torch.zeros(8, dtype=torch.float64)
        pieces = []
        for k in range(m.chunks):
            inp = torch.cat([m.task_embedding.detach()[task], m.chunk_embedding.detach()[k]])
            h = torch.tanh(w @ inp + b + r @ h)
            pieces.append(w_o @ h + b_o)
        want = torch.cat(pieces)[: m.num_weights]
        torch.testing.assert_close(m.generate(task), want, rtol=1e-12, atol=1e-12)
