"""Emissions of a hidden Markov model: predict the next emission (Torre et al.'s HMMs).

The HMM is the 4-state cyclic one of Torre et al. (NeurIPS 2025): stay 0.95, move to either
neighbour on the cycle 0.025; emission rows ``[.9,.1,0], [.1,.9,0], [0,.1,.9], [0,.9,.1]``;
uniform start. Unlike the paper (which trains a noise-driven RNN generator with a Sinkhorn
loss) the model here is trained to predict each next emission, so its cross-entropy can be
compared with the exact optimum, which the forward algorithm computes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from rnnkit.tasks import metrics as M
from rnnkit.tasks._util import drop_seen, generator, lstm_config
from rnnkit.tasks.base import Budget, Metrics, Split, Task, TaskData

BOS = 3


def cyclic_hmm() -> tuple[Tensor, Tensor, Tensor]:
    """``(start (S,), transition (S, S), emission (S, 3))`` of the cyclic 4-state HMM."""
    s = 4
    trans = torch.zeros(s, s, dtype=torch.float64)
    for i in range(s):
        trans[i, i] = 0.95
        trans[i, (i + 1) % s] += 0.025
        trans[i, (i - 1) % s] += 0.025
    emit = torch.tensor(
        [[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.0, 0.1, 0.9], [0.0, 0.9, 0.1]], dtype=torch.float64
    )
    return torch.full((s,), 1.0 / s, dtype=torch.float64), trans, emit


def sample_hmm(n: int, length: int, g: torch.Generator) -> Tensor:
    """``n`` emission sequences ``(n, length)`` int64 in ``{0, 1, 2}``."""
    start, trans, emit = cyclic_hmm()
    states = torch.multinomial(start.expand(n, -1), 1, generator=g)[:, 0]
    out = torch.empty(n, length, dtype=torch.long)
    for t in range(length):
        out[:, t] = torch.multinomial(emit[states], 1, generator=g)[:, 0]
        states = torch.multinomial(trans[states], 1, generator=g)[:, 0]
    return out


def optimal_bits(emissions: Tensor) -> float:
    """Mean ``-log2 p(o_t | o_<t)`` under the true HMM (forward algorithm); ``(N, T)`` input."""
    start, trans, emit = cyclic_hmm()
    belief = start.expand(emissions.shape[0], -1).clone()  # p(state_t | o_<t)
    total = 0.0
    for t in range(emissions.shape[1]):
        lik = emit[:, emissions[:, t]].T  # (N, S)
        joint = belief * lik
        p = joint.sum(-1)
        total -= float(p.log().sum())
        belief = (joint / p[:, None]) @ trans
    return total / emissions.numel() / math.log(2.0)


def hmm_data(
    seed: int, *, length: int = 40, sizes: tuple[int, int, int] = (6000, 1000, 1000)
) -> TaskData:
    """Inputs ``(N, length)``: BOS (3) then the emissions shifted right; targets the emissions."""
    splits = []
    for stream, size in enumerate(sizes):
        o = sample_hmm(size, length, generator(seed, stream))
        x = torch.cat([torch.full((size, 1), BOS, dtype=torch.long), o[:, :-1]], 1)
        splits.append(Split(x, o))
    train, valid, test = splits
    valid = drop_seen(valid, train)
    test = drop_seen(test, train, valid)
    return TaskData(train, valid, test, {"vocab_size": 4})


def hmm_metrics(
    outputs: Tensor, targets: Tensor, inputs: Tensor, info: Mapping[str, Any]
) -> Metrics:
    """``bits`` per emission, the HMM's ``optimal_bits`` and ``excess_bits`` = the difference."""
    bits = M.cross_entropy_bits(outputs, targets)
    best = optimal_bits(targets)
    return {"bits": bits, "optimal_bits": best, "excess_bits": bits - best}


# --- the tasks this module declares (collected by rnnkit.tasks.registry) ----------------

TASKS: tuple[Task, ...] = (
    Task(
        name="hmm",
        description="next emission of a 4-state cyclic HMM; excess bits over the optimum",
        kind="tag",
        make_data=hmm_data,
        metric_fn=hmm_metrics,
        primary="excess_bits",
        higher_is_better=False,
        io={"input_size": 0, "vocab_size": 4, "output_size": 3},
        model="sequence_tagger",
        model_config=lstm_config(32),
        budget=Budget(steps=600, batch_size=64, lr=5e-3, eval_every=100),
        target=0.02,
        reference=(
            "Torre et al. (NeurIPS 2025): RNNs match HMM emission statistics (trained as "
            "generators with a Sinkhorn loss; no comparable number)"
        ),
        details="Length 40; the optimum is the forward algorithm's predictive entropy.",
    ),
)
