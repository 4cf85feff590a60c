"""Metrics over whole splits. Every function returns a Python ``float``.

Shapes follow :mod:`rnnkit.tasks.base`: ``B`` examples, ``T`` steps, ``C`` classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

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
