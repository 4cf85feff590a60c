"""Next-item recommendation from implicit feedback, evaluated as in SASRec (Kang & McAuley,
ICDM 2018): a generated data set, leave-one-out splits and sampled ranking metrics.

**Data** (:func:`interaction_sequences`): ``items`` items are dealt into ``clusters`` latent
preference clusters; within a cluster items have Zipf-like popularity ``1 / (rank + 1)^0.8``
and a fixed successor (a random cycle through the cluster's items). Each user has a main
cluster (probability 0.75) and a second one (0.25) and a history of ``min_length`` to
``max_length`` distinct items: after an item the user takes its successor with probability
``follow`` (when not yet seen), otherwise a popular unseen item of one of the user's clusters.
So there is a sequential pattern (the successor) and a long-term one (the clusters) to learn.

**Splits** (leave-one-out, per user ``s_1..s_L``): train reads ``s_1..s_{L-3}`` and predicts
``s_2..s_{L-2}`` at every position; valid reads ``s_1..s_{L-2}`` and predicts ``s_{L-1}``;
test reads ``s_1..s_{L-1}`` and predicts ``s_L``. Inputs ``(N, n)`` int64 item ids, 0 =
padding on the left (``n = max_length - 1``); targets ``(N, n)`` int64, 0 = no target (on
valid and test only the last column is set).

**Loss** (:func:`sampled_bce_loss`): binary cross-entropy of the positive next item and of
one negative item drawn uniformly from the other items, at every position with a target.

**Metrics** (:func:`ranking_metrics`): the true item is ranked among 100 negatives drawn
uniformly without replacement from the items the input never holds (seeded: the same
negatives at every evaluation); ``hr_10 = mean 1{r < 10}`` and ``ndcg_10 = mean 1{r < 10} /
log2(r + 2)`` with ``r`` the 0-based rank, ties counted against the model.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnkit.core.validation import check_positive_int
from rnnkit.tasks import metrics as M
from rnnkit.tasks._util import drop_seen, generator
from rnnkit.tasks.base import Budget, Metrics, Split, Task, TaskData

#: negatives per user in the sampled ranking (the paper's protocol)
NEGATIVES = 100
#: cut-off of HR@k and NDCG@k
TOP_K = 10


def interaction_sequences(
    seed: int,
    *,
    users: int = 2000,
    items: int = 300,
    clusters: int = 10,
    min_length: int = 5,
    max_length: int = 21,
    follow: float = 0.6,
) -> list[list[int]]:
    """Each user's chronological item ids (in ``1..items``, no repeats); see the module
    docstring for the generative model."""
    for name, value in (("users", users), ("items", items), ("clusters", clusters)):
        check_positive_int(name, value)
    if not 4 <= min_length <= max_length:
        raise ValueError(
            f"need 4 <= min_length <= max_length, got min_length={min_length}, "
            f"max_length={max_length}"
        )
    if max_length > items:
        raise ValueError(f"max_length must be <= items={items} (no repeats), got {max_length}")
    if not items >= 2 * clusters:
        raise ValueError(f"items must be at least 2 * clusters={2 * clusters}, got {items}")
    if not 0.0 <= follow <= 1.0:
        raise ValueError(f"follow must be in [0, 1], got {follow!r}")
    rng = random.Random(seed * 1_000_003 + 12_345)
    ids = list(range(1, items + 1))
    rng.shuffle(ids)
    members = [ids[c::clusters] for c in range(clusters)]
    cum: list[list[float]] = []  # cumulative Zipf weights per cluster, for rng.choices
    for m in members:
        total, acc = 0.0, []
        for r in range(len(m)):
            total += 1.0 / (r + 1) ** 0.8
            acc.append(total)
        cum.append(acc)
    successor: dict[int, int] = {}
    for m in members:
        cycle = m[:]
        rng.shuffle(cycle)
        for k, item in enumerate(cycle):
            successor[item] = cycle[(k + 1) % len(cycle)]
    out = []
    for _ in range(users):
        main, second = rng.sample(range(clusters), 2)
        length = rng.randint(min_length, max_length)
        seq: list[int] = []
        seen: set[int] = set()
        while len(seq) < length:
            nxt = successor[seq[-1]] if seq else 0
            if not (seq and rng.random() < follow and nxt not in seen):
                c = main if rng.random() < 0.75 else second
                nxt = rng.choices(members[c], cum_weights=cum[c])[0]
                if nxt in seen:  # a popular item seen already: any unseen one of the cluster
                    rest = [i for i in members[c] if i not in seen] or [
                        i for i in ids if i not in seen
                    ]
                    nxt = rng.choice(rest)
            seq.append(nxt)
            seen.add(nxt)
        out.append(seq)
    return out


def _left_pad(rows: list[list[int]], n: int) -> Tensor:
    padded = [[0] * (n - len(row[-n:])) + row[-n:] for row in rows]
    return torch.tensor(padded, dtype=torch.long).reshape(len(rows), n)


def leave_one_out(sequences: list[list[int]], n: int) -> tuple[Split, Split, Split]:
    """Train, valid and test splits of the sequences (module docstring), width ``n``; every
    sequence needs at least 4 items and at most ``n + 1``."""
    if any(not 4 <= len(s) <= n + 1 for s in sequences):
        raise ValueError(f"every sequence needs 4 to n + 1 = {n + 1} items")
    train = Split(
        _left_pad([s[:-3] for s in sequences], n), _left_pad([s[1:-2] for s in sequences], n)
    )
    held = []
    for cut in (2, 1):
        x = _left_pad([s[:-cut] for s in sequences], n)
        y = torch.zeros_like(x)
        y[:, -1] = torch.tensor([s[-cut] for s in sequences])
        held.append(Split(x, y))
    return train, held[0], held[1]


def recsys_data(
    seed: int,
    *,
    users: int = 2000,
    items: int = 300,
    clusters: int = 10,
    max_length: int = 21,
    follow: float = 0.6,
) -> TaskData:
    """The generated interactions (:func:`interaction_sequences`) in leave-one-out splits of
    width ``max_length - 1``; ``info`` carries ``vocab_size`` (``items + 1``) and the seed of
    the evaluation negatives."""
    seqs = interaction_sequences(
        seed, users=users, items=items, clusters=clusters, max_length=max_length, follow=follow
    )
    train, valid, test = leave_one_out(seqs, max_length - 1)
    # a held-out history equal to some training row would be scored on a memorised input
    valid = drop_seen(valid, train)
    test = drop_seen(test, train)
    return TaskData(train, valid, test, {"vocab_size": items + 1, "negative_seed": seed})


def sampled_bce_loss(outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """SASRec's loss: ``-log sigmoid(r_pos) - log(1 - sigmoid(r_neg))`` summed over the
    positions with a target (``targets > 0``), one negative per position drawn uniformly from
    the items ``1..V-1`` other than the positive (torch's global generator).

    Args:
        outputs: ``(B, n, V)`` item logits (column 0 = padding, never drawn).
        targets: ``(B, n)`` int64 next items, 0 = no target.

    Returns:
        ``(sum, count)``.
    """
    v = outputs.shape[-1]
    if v < 3:
        raise ValueError(f"outputs need at least 2 items besides padding, got {v} columns")
    pos_id = targets.clamp_min(1)
    # uniform over 1..V-1 without the positive: draw from V-2 values and skip over it
    neg_id = torch.randint(1, v - 1, targets.shape, device=targets.device)
    neg_id = neg_id + (neg_id >= pos_id).long()
    logits = outputs.float()
    pos = logits.gather(-1, pos_id.unsqueeze(-1)).squeeze(-1)
    neg = logits.gather(-1, neg_id.unsqueeze(-1)).squeeze(-1)
    mask = targets > 0
    per = F.softplus(-pos) + F.softplus(neg)  # -log s(pos) - log(1 - s(neg))
    return per[mask].sum(), mask.sum().float()


def sample_negatives(
    inputs: Tensor, true: Tensor, *, vocab_size: int, count: int = NEGATIVES, seed: int = 0
) -> Tensor:
    """``count`` distinct negative items per row: uniform over ``1..vocab_size-1`` without the
    row's input items and its true item. ``inputs (N, n)``, ``true (N,)`` -> ``(N, count)``."""
    keys = torch.rand(inputs.shape[0], vocab_size, generator=generator(seed, 99))
    keys[:, 0] = float("inf")
    keys.scatter_(1, inputs, float("inf"))
    keys.scatter_(1, true.unsqueeze(1), float("inf"))
    free = torch.isfinite(keys).sum(1)
    if inputs.shape[0] and int(free.min()) < count:
        raise ValueError(f"count={count} negatives but a row has only {int(free.min())} items left")
    return keys.topk(count, 1, largest=False).indices


def ranking_metrics(
    outputs: Tensor, targets: Tensor, inputs: Tensor, info: Mapping[str, Any]
) -> Metrics:
    """``hr_10`` and ``ndcg_10`` of the true item (``targets[:, -1]``) ranked by the scores
    after the last position (``outputs[:, -1]``, ``(N, V)``) among :data:`NEGATIVES` sampled
    negatives (:func:`sample_negatives`, seeded by ``info["negative_seed"]``)."""
    scores = outputs[:, -1].double()
    true = targets[:, -1]
    neg = sample_negatives(
        inputs, true, vocab_size=scores.shape[-1], seed=int(info.get("negative_seed", 0))
    )
    pos_s = scores.gather(1, true.unsqueeze(1)).squeeze(1)
    hr, ndcg = M.sampled_ranking(pos_s, scores.gather(1, neg), TOP_K)
    return {"hr_10": hr, "ndcg_10": ndcg}


def popularity_scores(train: Split, vocab_size: int) -> Tensor:
    """Each item's number of occurrences in the training split (inputs and targets),
    ``(vocab_size,)`` float64: the most-popular baseline's scores."""
    ids = torch.cat([train.inputs.reshape(-1), train.targets.reshape(-1)])
    counts = torch.bincount(ids, minlength=vocab_size).double()
    counts[0] = 0.0
    return counts


def baseline_outputs(data: TaskData, split: str, kind: str = "popularity") -> Tensor:
    """Outputs ``(N, 1, V)`` of a non-learnt baseline for :func:`ranking_metrics`:
    ``"popularity"`` (training counts) or ``"markov"`` (counts of the training transitions
    from the input's last item, ties broken by popularity)."""
    v = int(data.info["vocab_size"])
    pop = popularity_scores(data.train, v)
    s = data.split(split)
    if kind == "popularity":
        return pop.expand(len(s), v).unsqueeze(1).clone()
    if kind != "markov":
        raise ValueError(f"kind must be 'popularity' or 'markov', got {kind!r}")
    x, y = data.train.inputs.reshape(-1), data.train.targets.reshape(-1)
    keep = (x > 0) & (y > 0)
    trans = torch.zeros(v, v, dtype=torch.float64)
    trans.index_put_((x[keep], y[keep]), torch.ones(int(keep.sum()), dtype=torch.float64), True)
    last = s.inputs[:, -1]
    return (trans[last] + pop / (pop.max() + 1.0)).unsqueeze(1)


# --- the task ------------------------------------------------------------------------------------

ITEMS = 300

TASKS: tuple[Task, ...] = (
    Task(
        name="next_item",
        description="SASRec: next item of generated implicit feedback, HR@10 / NDCG@10 of 101",
        kind="tag",
        make_data=functools.partial(recsys_data, items=ITEMS),
        metric_fn=ranking_metrics,
        primary="ndcg_10",
        io={"vocab_size": ITEMS + 1, "output_size": ITEMS + 1},
        model="sasrec",
        model_config={"hidden_size": 50, "num_blocks": 2, "dropout": 0.2, "max_length": 20},
        budget=Budget(steps=600, batch_size=128, lr=3e-3, clip=5.0, eval_every=100),
        loss_fn=sampled_bce_loss,
        reference=(
            "Kang & McAuley 2018: ML-1M HR@10 0.8245 / NDCG@10 0.5905 (pmixer re-run "
            "0.819-0.823 / 0.590-0.592); not comparable: generated data here"
        ),
        details=(
            "2,000 users, 300 items in 10 latent clusters, histories of 5-21 distinct items "
            "(successor followed with probability 0.6); leave-one-out splits, inputs (N, 20) "
            "item ids left-padded with 0; targets (N, 20), 0 = none. Loss: BCE with one "
            "uniform negative per position (the paper draws it from items the user never "
            "interacted with); evaluation negatives: 100 distinct items not in the input."
        ),
    ),
)
