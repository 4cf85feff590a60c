"""Metrics on hand-made cases."""

from __future__ import annotations

import math

import pytest
import torch

from rnnkit.tasks import metrics as M
from rnnkit.tasks.base import batch_loss


def test_accuracy() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    assert M.accuracy(logits, torch.tensor([0, 1, 1, 1])) == pytest.approx(0.75)


def test_token_and_sequence_accuracy_ignore_positions() -> None:
    # predictions: argmax over 2 classes
    logits = torch.tensor(
        [[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]]
    )
    labels = torch.tensor([[0, 1, -100], [1, 0, -100]])
    assert M.token_accuracy(logits, labels) == pytest.approx(3 / 4)
    assert M.sequence_accuracy(logits, labels) == pytest.approx(1 / 2)


def test_cross_entropy_bits_uniform() -> None:
    logits = torch.zeros(2, 5, 4)  # uniform over 4 symbols: 2 bits each
    labels = torch.randint(0, 4, (2, 5))
    assert M.cross_entropy_bits(logits, labels) == pytest.approx(2.0)
    labels[0, 0] = -100
    assert M.cross_entropy_bits(logits, labels) == pytest.approx(2.0)


def test_multilabel_accuracy() -> None:
    targets = torch.tensor(
        [[[1.0, 0.0], [1.0, 1.0], [-1.0, -1.0]], [[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]]
    )
    logits = torch.tensor(
        [
            [[5.0, -5.0], [5.0, 5.0], [5.0, 5.0]],  # all right (last ignored)
            [[-5.0, 5.0], [5.0, 5.0], [5.0, -5.0]],
        ]
    )  # step 2 wrong
    step, seq = M.multilabel_accuracy(logits, targets)
    assert step == pytest.approx(4 / 5)
    assert seq == pytest.approx(1 / 2)


def test_mse_nrmse_ignore_nan() -> None:
    target = torch.tensor([[[1.0], [2.0], [float("nan")], [3.0]]])
    pred = torch.tensor([[[1.0], [3.0], [100.0], [3.0]]])
    assert M.mse(pred, target) == pytest.approx(1 / 3)
    assert M.nrmse(target.nan_to_num(2.0), target) == pytest.approx(0.0)
    # predicting the mean gives NRMSE sqrt((n-1)/n) with the unbiased variance
    t = torch.tensor([0.0, 2.0, 4.0, 6.0]).reshape(1, 4, 1)
    assert M.nrmse(torch.full_like(t, 3.0), t) == pytest.approx(math.sqrt(3 / 4))


def test_stpe() -> None:
    a = torch.tensor([0.2, 0.3, -0.5])
    assert M.stpe(a, a) == 0.0
    assert M.stpe(-a, a) == pytest.approx(100.0)
    assert M.stpe(torch.tensor([0.2, 0.3, 0.0]), a) == pytest.approx(100 * 0.5 / 1.5)


def test_batch_loss_sums_and_counts() -> None:
    logits = torch.zeros(2, 3, 4)
    labels = torch.tensor([[0, 1, -100], [2, -100, -100]])
    s, c = batch_loss("tag", logits, labels)
    assert float(c) == 3
    assert float(s) == pytest.approx(3 * math.log(4))
    s, c = batch_loss("regress", torch.zeros(1, 2, 1), torch.tensor([[[2.0], [float("nan")]]]))
    assert (float(s), float(c)) == (4.0, 1.0)
    s, c = batch_loss(
        "multilabel", torch.zeros(1, 2, 2), torch.tensor([[[1.0, 0.0], [-1.0, -1.0]]])
    )
    assert float(c) == 2 and float(s) == pytest.approx(2 * math.log(2))
