"""Metrics over whole splits. Every function returns a Python ``float``.

Shapes follow :mod:`rnnkit.tasks.base`: ``B`` examples, ``T`` steps, ``C`` classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.core.validation import check_positive_int
from rnnkit.tasks.base import IGNORE_INDEX

LN2 = math.log(2.0)


def _fraction(hits: Tensor) -> float:
    """The fraction of true entries of a bool tensor, as an exact count over a count.

    Not a float32 mean: 285 / 300 rounds to 0.949999988 in float32, which misses a 0.95
    target that the run has met; the quotient of two integers in float64 is the double
    nearest to the true fraction, the same double a literal like 0.95 is.
    """
    return int(hits.sum()) / hits.numel()


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of ``argmax(logits) == labels``; ``logits: (B, C)``, ``labels: (B,)``."""
    if labels.numel() == 0:
        return float("nan")
    return _fraction(logits.argmax(-1) == labels)


def token_accuracy(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> float:
    """Accuracy over the positions that are not ``ignore_index``.

    ``logits: (B, T, C)``, ``labels: (B, T)``.
    """
    mask = labels != ignore_index
    n = int(mask.sum())
    if n == 0:
        return float("nan")
    return float(((logits.argmax(-1) == labels) & mask).sum()) / n


def sequence_accuracy(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> float:
    """Fraction of sequences whose every non-ignored position is right.

    ``logits: (B, T, C)``, ``labels: (B, T)``.
    """
    if labels.shape[0] == 0:
        return float("nan")
    wrong = (logits.argmax(-1) != labels) & (labels != ignore_index)
    return _fraction(~wrong.any(-1))


def cross_entropy_bits(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_INDEX) -> float:
    """Mean cross-entropy in bits over non-ignored positions (bits per character for an LM).

    ``logits: (B, T, C)``, ``labels: (B, T)``: ``-(1/N) Σ log2 p(label)``.
    """
    flat = labels.reshape(-1)
    n = int((flat != ignore_index).sum())
    if n == 0:
        return float("nan")
    nats = F.cross_entropy(
        logits.float().reshape(flat.shape[0], -1),
        flat,
        ignore_index=ignore_index,
        reduction="sum",
    )
    return float(nats) / n / LN2


def multilabel_accuracy(logits: Tensor, targets: Tensor) -> tuple[float, float]:
    """Step and sequence accuracy of k-hot predictions (``logit > 0`` means "in the set").

    ``logits, targets: (B, T, K)``; ``targets`` is 0/1, or ``-1`` at ignored steps (all K).
    A step is right when all K decisions are right; a sequence when all its steps are.
    Returns ``(step_accuracy, sequence_accuracy)``.
    """
    valid = (targets >= 0).all(-1)  # (B, T)
    right = ((logits > 0) == (targets > 0.5)).all(-1)  # (B, T)
    n = int(valid.sum())
    if n == 0:
        return float("nan"), float("nan")
    step = float((right & valid).sum()) / n
    seq = _fraction((right | ~valid).all(-1))
    return step, seq


def mse(pred: Tensor, target: Tensor) -> float:
    """Mean squared error over the non-NaN entries of ``target`` (any equal shapes)."""
    mask = ~torch.isnan(target)
    if int(mask.sum()) == 0:
        return float("nan")
    return float((pred[mask].double() - target[mask].double()).square().mean())


def nrmse(pred: Tensor, target: Tensor) -> float:
    """Root MSE normalised per channel by the target's standard deviation, averaged.

    ``pred, target: (B, T, D)``; NaN targets are ignored:
    ``sqrt(mean_d(MSE_d / Var_d))``.
    """
    d = target.shape[-1]
    p = pred.reshape(-1, d).double()
    t = target.reshape(-1, d).double()
    keep = ~torch.isnan(t).any(-1)
    p, t = p[keep], t[keep]
    if t.shape[0] < 2:
        return float("nan")
    ratio = (p - t).square().mean(0) / t.var(0).clamp_min(1e-12)
    return float(ratio.mean().sqrt())


def stpe(estimated: Tensor, true: Tensor) -> float:
    """AR-Net's symmetric total percentage error of coefficients (0 exact, 100 worst).

    ``sTPE = 100 Σ|â − a| / Σ(|â| + |a|)``; ``estimated, true: (p,)``.
    """
    num = (estimated.double() - true.double()).abs().sum()
    den = (estimated.double().abs() + true.double().abs()).sum()
    return float(100.0 * num / den) if float(den) > 0 else 0.0


# --- quantile forecasts and prediction intervals -----------------------------------------------


def pinball_loss(pred: Tensor, target: Tensor, tau: float | Tensor) -> float:
    """Mean pinball (quantile) loss of ``pred`` as the ``tau`` quantile of ``target``.

    ``ρ_τ(u) = max(τ u, (τ - 1) u)`` with ``u = target - pred``, averaged over the non-NaN
    entries of ``target``; ``pred, target``: equal shapes, ``tau``: a number in ``(0, 1)`` or
    a tensor broadcasting against them (one level per channel, say). For ``τ = 0.5`` it is
    half the mean absolute error.
    """
    u = target.double() - pred.double()
    t = torch.as_tensor(tau, dtype=torch.float64)
    loss = torch.maximum(t * u, (t - 1.0) * u).expand_as(u)
    keep = ~torch.isnan(target).expand_as(u)
    if int(keep.sum()) == 0:
        return float("nan")
    return float(loss[keep].mean())


def interval_coverage(lower: Tensor, upper: Tensor, target: Tensor) -> float:
    """Fraction of the non-NaN ``target`` entries inside ``[lower, upper]`` (PICP).

    ``lower, upper, target``: equal shapes.
    """
    keep = ~torch.isnan(target)
    if int(keep.sum()) == 0:
        return float("nan")
    y = target[keep]
    return _fraction((y >= lower[keep]) & (y <= upper[keep]))


def msis(lower: Tensor, upper: Tensor, target: Tensor, alpha: float, scale: float) -> float:
    """Mean scaled interval score of the central ``1 - alpha`` intervals (M4's MSIS).

    ``IS = (U - L) + (2 / α)(L - y) 1{y < L} + (2 / α)(y - U) 1{y > U}``, averaged over the
    non-NaN ``target`` entries and divided by ``scale`` (in M4: the in-sample mean absolute
    error of the seasonal naive forecast, ``(1 / (n - m)) Σ_{t>m} |y_t - y_{t-m}|``).
    ``lower, upper, target``: equal shapes. Lower is better; a perfect zero-width interval
    scores 0.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    if not scale > 0.0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    keep = ~torch.isnan(target)
    if int(keep.sum()) == 0:
        return float("nan")
    lo, hi, y = lower[keep].double(), upper[keep].double(), target[keep].double()
    score = (hi - lo) + 2.0 / alpha * ((lo - y).clamp_min(0) + (y - hi).clamp_min(0))
    return float(score.mean()) / scale


# --- ranking -----------------------------------------------------------------------------------


def sampled_ranking(positive: Tensor, negatives: Tensor, k: int = 10) -> tuple[float, float]:
    """Hit rate and NDCG at ``k`` of one true item ranked among sampled negatives.

    ``positive: (N,)`` the true item's score, ``negatives: (N, K)`` the negatives' scores.
    The 0-based rank ``r`` counts the negatives scoring at least as high as the true item
    (ties against it, so a constant scorer gets no credit); ``HR@k = mean 1{r < k}`` and
    ``NDCG@k = mean 1{r < k} / log2(r + 2)`` (one relevant item: the ideal DCG is 1).
    Returns ``(hr, ndcg)``; NaN for ``N = 0``.
    """
    check_positive_int("k", k)
    if positive.dim() != 1 or negatives.dim() != 2 or negatives.shape[0] != positive.shape[0]:
        raise ValueError(
            f"positive must be (N,) and negatives (N, K), got {tuple(positive.shape)} and "
            f"{tuple(negatives.shape)}"
        )
    if positive.numel() == 0:
        return float("nan"), float("nan")
    rank = (negatives.double() >= positive.double()[:, None]).sum(1)
    hit = rank < k
    gain = torch.where(
        hit, 1.0 / torch.log2(rank.double() + 2.0), torch.zeros((), dtype=torch.float64)
    )
    return _fraction(hit), float(gain.mean())
