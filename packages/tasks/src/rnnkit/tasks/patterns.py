"""Stochastically switching periodic patterns, the kind of data PV-RNN was studied on.

Ahmadi & Tani (Neural Computation 2019) train PV-RNN on sequences in which a few periodic
primitives follow each other by chance. Here the primitives are 2-D Lissajous curves
``(s sin(a theta), s sin(b theta))``, ``theta = 2 pi t / period``, which all pass through the
origin at the start of a cycle, so that switching at cycle boundaries keeps the trajectory
continuous; after each cycle a Markov chain keeps the pattern with probability
``1 - switch`` and otherwise moves to one of the others uniformly.

The ``patterns`` task trains :class:`rnnkit.models.pvrnn.PVRNN` through the trainer: a row's
input names its sequence (the slot of its posterior adaptive vectors), its target is the
sequence. See :mod:`rnnkit.tasks.pvrnn_study` for error regression and the meta-prior study.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from rnnkit.tasks import metrics as M
from rnnkit.tasks._util import generator
from rnnkit.tasks.base import Budget, Metrics, Split, Task, TaskData

#: ``(a, b)`` frequency pairs of the Lissajous primitives.
LISSAJOUS: tuple[tuple[int, int], ...] = ((1, 2), (2, 1), (1, 3))
SCALE = 0.8  # inside tanh's range, which bounds PV-RNN's output


def primitive_cycle(pattern: int, period: int) -> Tensor:
    """One cycle of primitive ``pattern``: ``(period, 2)`` float32."""
    a, b = LISSAJOUS[pattern]
    theta = 2 * math.pi * torch.arange(period, dtype=torch.float64) / period
    xy = torch.stack([torch.sin(a * theta), torch.sin(b * theta)], -1)
    return (SCALE * xy).float()


def pattern_sequences(
    n: int,
    cycles: int,
    g: torch.Generator,
    *,
    period: int = 20,
    switch: float = 0.3,
    patterns: int = len(LISSAJOUS),
) -> tuple[Tensor, Tensor]:
    """``n`` sequences of ``cycles`` cycles: ``(x (n, cycles * period, 2), labels (n,
    cycles))`` with ``labels`` the primitive of each cycle (the first drawn uniformly)."""
    if not 0.0 <= switch <= 1.0:
        raise ValueError(f"switch must be in [0, 1], got {switch!r}")
    if not 1 <= patterns <= len(LISSAJOUS):
        raise ValueError(f"patterns must be in [1, {len(LISSAJOUS)}], got {patterns!r}")
    table = torch.stack([primitive_cycle(p, period) for p in range(patterns)])
    labels = torch.empty(n, cycles, dtype=torch.long)
    labels[:, 0] = torch.randint(patterns, (n,), generator=g)
    for c in range(1, cycles):
        moves = torch.rand(n, generator=g) < switch
        step = torch.randint(1, max(patterns, 2), (n,), generator=g)
        nxt = (labels[:, c - 1] + step) % patterns if patterns > 1 else labels[:, c - 1]
        labels[:, c] = torch.where(moves, nxt, labels[:, c - 1])
    x = table[labels].reshape(n, cycles * period, 2)
    return x, labels


def patterns_data(
    seed: int,
    *,
    sizes: tuple[int, int, int] = (24, 8, 8),
    cycles: int = 4,
    period: int = 15,
    switch: float = 0.3,
) -> TaskData:
    """Switching Lissajous sequences with inputs naming each row's sequence slot.

    Inputs ``(N, T)`` int64: every step of a row holds its slot id; the slots of all splits
    are distinct (a seeded permutation of ``0..sum(sizes)-1``), so held-out rows name slots
    that training never fits (their posterior stays at its initial value: the trainer's
    held-out score is then that of a roll-out with every latent at 0, not error
    regression). Targets ``(N, T, 2)``.
    """
    total = sum(sizes)
    ids = torch.randperm(total, generator=generator(seed, 9))
    splits, offset = [], 0
    for stream, size in enumerate(sizes):
        x, _ = pattern_sequences(
            size, cycles, generator(seed, stream), period=period, switch=switch
        )
        slot = ids[offset : offset + size, None].expand(size, x.shape[1]).contiguous()
        splits.append(Split(slot, x))
        offset += size
    train, valid, test = splits
    return TaskData(train, valid, test, {"period": period, "cycles": cycles, "slots": total})


def regress_metrics(
    outputs: Tensor, targets: Tensor, inputs: Tensor, info: Mapping[str, Any]
) -> Metrics:
    """``mse`` and ``zero_mse`` (the MSE of predicting 0, the data's mean, for reference)."""
    return {"mse": M.mse(outputs, targets), "zero_mse": M.mse(torch.zeros_like(targets), targets)}


TASKS: tuple[Task, ...] = (
    Task(
        name="patterns",
        description="PV-RNN: 3 Lissajous primitives switching by chance (2-D, 60 steps)",
        kind="regress",
        make_data=patterns_data,
        metric_fn=regress_metrics,
        primary="mse",
        higher_is_better=False,
        io={"output_size": 2, "vocab_size": 40},
        model="pvrnn",
        model_config={"seq_len": 60, "meta_prior": 0.01},
        budget=Budget(
            steps=400, batch_size=24, lr=1e-2, eval_every=100, clip=5.0, schedule="constant"
        ),
        reference=(
            "Ahmadi & Tani (Neural Computation 2019): low w ~ random process, high w ~ "
            "deterministic chaos, intermediate w generalises best (qualitative)"
        ),
        details=(
            "24 training sequences of 4 cycles of 15 steps; primitives (sin t, sin 2t), "
            "(sin 2t, sin t), (sin t, sin 3t) scaled by 0.8; switch probability 0.3 per cycle. "
            "Inputs name each row's posterior slot; the train score is the posterior "
            "reconstruction. Held-out rows have untrained slots (a roll-out with latents 0): the "
            "held-out evaluation is error regression, `rnnkit pvrnn`."
        ),
    ),
)
