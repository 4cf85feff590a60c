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


def test_quantile_loss_and_interval_metrics() -> None:
    from rnnkit.tasks.epidemic import interval_metrics, quantile_loss

    # one region, quantiles (0.1, 0.5, 0.9); y = 1 repeated per quantile channel
    q = (0.1, 0.5, 0.9)
    y = torch.tensor([[[1.0, 1.0, 1.0], [float("nan")] * 3]])
    out = torch.tensor([[[0.0, 1.0, 3.0], [9.0, 9.0, 9.0]]])
    s, c = quantile_loss(out, y, q)
    # u = y - yhat = (1, 0, -2): 0.1*1 + 0 + (0.9-1)*(-2) = 0.3
    assert (float(s), float(c)) == (pytest.approx(0.3), 3.0)
    naive = torch.full_like(y, 0.5)
    m = interval_metrics(out, y, naive, q, lower=0, upper=2, median=1)
    assert m["quantile_loss"] == pytest.approx(0.1)
    assert m["coverage"] == 1.0 and m["width"] == pytest.approx(3.0)
    assert m["acd"] == pytest.approx(0.2)
    assert m["msis"] == pytest.approx(3.0 / 0.5)  # width 3, no miss, naive MAE 0.5
    miss = torch.tensor([[[2.0, 2.5, 3.0], [9.0, 9.0, 9.0]]])
    m = interval_metrics(miss, y, naive, q, lower=0, upper=2, median=1)
    assert m["coverage"] == 0.0
    assert m["msis"] == pytest.approx((1.0 + 2 / 0.2 * 1.0) / 0.5)
    assert m["mae"] == pytest.approx(1.5)


def test_pinball_coverage_and_msis_by_hand() -> None:
    nan = float("nan")
    y = torch.tensor([1.0, 2.0, 3.0, nan])
    pred = torch.tensor([0.0, 2.0, 5.0, 7.0])
    # u = y - pred = (1, 0, -2); τ = 0.9: 0.9, 0, 0.2 -> mean 1.1 / 3
    assert M.pinball_loss(pred, y, 0.9) == pytest.approx(1.1 / 3)
    # τ = 0.5 is half the absolute error: (1 + 0 + 2) / 2 / 3
    assert M.pinball_loss(pred, y, 0.5) == pytest.approx(0.5)
    # one level per channel: (B=1, 2 channels), τ = (0.1, 0.9)
    two = M.pinball_loss(
        torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, -1.0]]), torch.tensor([0.1, 0.9])
    )
    assert two == pytest.approx((0.1 * 1 + 0.1 * 1) / 2)  # 0.1 u and (0.9 - 1) u
    lo = torch.tensor([0.0, 2.5, 2.0, 0.0])
    hi = torch.tensor([2.0, 3.0, 4.0, 0.0])
    # y = 1 inside, 2 below [2.5, 3], 3 inside; the NaN target is not counted
    assert M.interval_coverage(lo, hi, y) == pytest.approx(2 / 3)
    # widths 2, 0.5, 2; the miss costs (2 / 0.2)(2.5 - 2) = 5: (2 + 5.5 + 2) / 3 / scale 2
    assert M.msis(lo, hi, y, alpha=0.2, scale=2.0) == pytest.approx(9.5 / 3 / 2)
    above = M.msis(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([4.0]), 0.05, 1.0)
    assert above == pytest.approx(1.0 + 40.0 * 3.0)
    assert math.isnan(M.interval_coverage(lo[3:], hi[3:], y[3:]))
    with pytest.raises(ValueError, match="alpha"):
        M.msis(lo, hi, y, alpha=1.0, scale=1.0)
    with pytest.raises(ValueError, match="scale"):
        M.msis(lo, hi, y, alpha=0.1, scale=0.0)


def test_naive_interval_baseline() -> None:
    from rnnkit.tasks.epidemic import naive_error_quantiles, naive_interval

    naive = torch.tensor([[[0.0], [1.0], [2.0], [3.0], [4.0]]])  # (1, 5, 1)
    y = torch.tensor([[[1.0], [1.0], [4.0], [float("nan")], [4.0]]])  # errors 1, 0, 2, 0
    q = naive_error_quantiles(naive, y, (0.0, 0.5, 1.0))
    assert q == pytest.approx([0.0, 0.5, 2.0])
    tiled = naive_interval(naive, q)
    assert tiled.shape == (1, 5, 3)
    assert tiled[0, 1].tolist() == pytest.approx([1.0, 1.5, 3.0])


def test_rpd_of_displacements() -> None:
    from rnnkit.tasks.vessels import rpd

    t = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [float("nan"), 0.0]]])
    assert rpd(t.nan_to_num(5.0), t) == 0.0
    p = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [7.0, 7.0]]])
    # 200 (prediction zero), |1| / ((2 + 1) / 2) = 2/3 -> 66.7; mean of the two scored steps
    assert rpd(p, t) == pytest.approx((200.0 + 200.0 / 3) / 2)
    zero = torch.zeros(1, 1, 2)
    assert rpd(zero, zero) == 0.0


def test_rpd_per_horizon_band() -> None:
    from rnnkit.tasks.vessels import HORIZON_NAMES, rpd_by_horizon, vessel_metrics

    t = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [0.0, 2.0], [float("nan"), 1.0]]])
    p = torch.tensor([[[3.0, 4.0], [2.0, 0.0], [0.0, 0.0], [5.0, 5.0]]])
    gap = torch.tensor([[0.5, 1.0, 2.0, 10.0]])  # minutes
    # band <= 1: steps 0 (0 %) and 1 (|1| / 1.5 -> 66.7 %); band (1, 3]: step 2 (zero
    # prediction -> 200 %); band > 3: only a NaN target -> NaN
    le1, mid, gt3 = rpd_by_horizon(p, t, gap)
    assert le1 == pytest.approx((0.0 + 200.0 / 3) / 2)
    assert mid == pytest.approx(200.0)
    assert math.isnan(gt3)
    assert rpd_by_horizon(p, t, gap, edges=(0.75,)) == pytest.approx([0.0, (200 / 3 + 200) / 2])
    with pytest.raises(ValueError, match="horizon"):
        rpd_by_horizon(p, t, gap[0])
    with pytest.raises(ValueError, match="edges"):
        rpd_by_horizon(p, t, gap, edges=(3.0, 1.0))
    # the task's metrics read the horizon from the gap-to-next feature (minutes / 10)
    x = torch.zeros(1, 4, 7)
    x[..., 6] = gap / 10.0
    m = vessel_metrics(p, t, x, {})
    assert [m[k] for k in HORIZON_NAMES[:2]] == pytest.approx([le1, mid])


def test_pohl_nrmse() -> None:
    from rnnkit.tasks.breathing import pohl_nrmse

    t = torch.randn(4, 10, 9)
    assert pohl_nrmse(t, t) == 0.0
    mean = t.reshape(-1, 9).mean(0).expand_as(t)
    assert pohl_nrmse(mean, t) == pytest.approx(1.0)
    assert math.isnan(pohl_nrmse(t[..., :4], t[..., :4]))  # not 3 coordinates per marker


def test_passkey_and_set_disjointness_metrics() -> None:
    from rnnkit.tasks.recall import (
        PASSKEY_MARK,
        passkey_metrics,
        set_disjointness_metrics,
    )

    # two examples: needle at depth 0 and at depth 1 (blocks=1, sentence=2)
    x = torch.tensor([[PASSKEY_MARK, 5, 13, 13, 12], [13, 13, PASSKEY_MARK, 5, 12]])
    y = torch.tensor([[-100, -100, -100, -100, 4], [-100, -100, -100, -100, 7]])
    logits = torch.zeros(2, 5, 10)
    logits[0, 4, 4] = 1.0  # right
    logits[1, 4, 3] = 1.0  # wrong
    m = passkey_metrics(logits, y, x, {"blocks": 1, "sentence": 2})
    assert m["exact_match"] == 0.5 and m["digit_accuracy"] == 0.5
    assert (m["exact_match_early"], m["exact_match_late"]) == (1.0, 0.0)
    # set disjointness: [1] A [2] B [3], sizes (1, 2) and (2, 1)
    x = torch.tensor([[0, 1, 5, 2, 6, 5, 3], [0, 1, 7, 8, 2, 8, 3]])
    logits = torch.zeros(2, 10)
    logits[0, 5] = 1.0
    logits[1, 7] = 1.0
    m = set_disjointness_metrics(logits, torch.tensor([5, 8]), x, {})
    assert m["accuracy"] == 0.5
    assert (m["accuracy_small_first"], m["accuracy_large_first"]) == (1.0, 0.0)


def test_task_loss_fn_replaces_the_kind_loss() -> None:
    from rnnkit.tasks import get_task
    from rnnkit.tasks.epidemic import quantile_loss

    out, y = torch.zeros(2, 3, 12), torch.ones(2, 3, 12)
    s, c = get_task("epidemic").loss(out, y)
    ref = quantile_loss(out, y)
    assert float(s) == pytest.approx(float(ref[0])) and float(c) == float(ref[1])
    assert float(s) != float(batch_loss("regress", out, y)[0])


def test_fractions_are_exact_counts() -> None:
    """285 right of 300 is 0.95, and meets a 0.95 target (a float32 mean gave 0.949999988)."""
    labels = torch.zeros(300, dtype=torch.long)
    logits = torch.zeros(300, 2)
    logits[:15, 1] = 1.0  # 15 wrong
    assert M.accuracy(logits, labels) == 0.95
    seq_logits = torch.zeros(300, 4, 2)
    seq_logits[:15, 2, 1] = 1.0
    seq_labels = torch.zeros(300, 4, dtype=torch.long)
    assert M.sequence_accuracy(seq_logits, seq_labels) == 0.95
    k_hot = torch.zeros(300, 3, 2)
    wrong = k_hot.clone()
    wrong[:15, 1, 0] = 1.0
    assert M.multilabel_accuracy(wrong, k_hot)[1] == 0.95
