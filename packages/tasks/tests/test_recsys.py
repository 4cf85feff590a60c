"""Next-item recommendation: the generator, leave-one-out splits, the sampled BCE loss, the
sampled ranking metrics, and that SASRec learns the task."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from rnnkit.models import create_model
from rnnkit.tasks import TrainConfig, Trainer
from rnnkit.tasks.metrics import sampled_ranking
from rnnkit.tasks.recsys import (
    baseline_outputs,
    interaction_sequences,
    leave_one_out,
    ranking_metrics,
    recsys_data,
    sample_negatives,
    sampled_bce_loss,
)


def test_sequences_are_distinct_items_within_bounds() -> None:
    seqs = interaction_sequences(3, users=50, items=40, clusters=4, min_length=5, max_length=9)
    assert len(seqs) == 50
    for s in seqs:
        assert 5 <= len(s) <= 9
        assert len(set(s)) == len(s)  # no repeats
        assert all(1 <= i <= 40 for i in s)
    assert seqs == interaction_sequences(3, users=50, items=40, clusters=4, max_length=9)
    assert seqs != interaction_sequences(4, users=50, items=40, clusters=4, max_length=9)


def test_sequences_follow_successors() -> None:
    # with follow=1 every step after the first is the fixed successor while it is unseen:
    # the same item is always followed by the same item
    seqs = interaction_sequences(0, users=100, items=40, clusters=4, max_length=8, follow=1.0)
    nxt: dict[int, set[int]] = {}
    for s in seqs:
        for a, b in itertools.pairwise(s):
            nxt.setdefault(a, set()).add(b)
    assert all(len(v) == 1 for v in nxt.values())


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"users": 0}, "users"),
        ({"min_length": 3}, "min_length"),
        ({"items": 10, "max_length": 11}, "max_length"),
        ({"items": 10, "clusters": 6, "max_length": 8}, "items"),
        ({"follow": 1.5}, "follow"),
    ],
)
def test_generator_bad_arguments_raise(kwargs: dict[str, int | float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        interaction_sequences(0, **kwargs)  # type: ignore[arg-type]


def test_data_is_deterministic_in_the_seed() -> None:
    a, b, c = (recsys_data(seed, users=60, items=120, max_length=9) for seed in (0, 0, 1))
    for split in ("train", "valid", "test"):
        assert torch.equal(a.split(split).inputs, b.split(split).inputs)
        assert torch.equal(a.split(split).targets, b.split(split).targets)
    assert not torch.equal(a.train.inputs, c.train.inputs)
    assert a.train.inputs.dtype == torch.long and a.train.inputs.shape == (60, 8)


def test_leave_one_out_splits() -> None:
    train, valid, test = leave_one_out([[1, 2, 3, 4, 5], [6, 7, 8, 9]], 5)
    assert train.inputs.tolist() == [[0, 0, 0, 1, 2], [0, 0, 0, 0, 6]]
    assert train.targets.tolist() == [[0, 0, 0, 2, 3], [0, 0, 0, 0, 7]]
    assert valid.inputs.tolist() == [[0, 0, 1, 2, 3], [0, 0, 0, 6, 7]]
    assert valid.targets.tolist() == [[0, 0, 0, 0, 4], [0, 0, 0, 0, 8]]
    assert test.inputs.tolist() == [[0, 1, 2, 3, 4], [0, 0, 6, 7, 8]]
    assert test.targets.tolist() == [[0, 0, 0, 0, 5], [0, 0, 0, 0, 9]]
    with pytest.raises(ValueError, match="4 to n"):
        leave_one_out([[1, 2, 3]], 5)


def test_sampled_ranking_by_hand() -> None:
    pos = torch.tensor([5.0, 0.0, 1.0], dtype=torch.float64)
    neg = torch.tensor(
        [[1.0, 2.0, 3.0], [1.0, 2.0, -1.0], [1.0, 0.0, 2.0]], dtype=torch.float64
    )  # ranks 0, 2, 2 (the tie counts against the true item)
    hr, ndcg = sampled_ranking(pos, neg, k=2)
    assert hr == 1 / 3
    assert ndcg == pytest.approx(1 / 3, rel=1e-15)  # only rank 0 is a hit: 1/log2(2) = 1
    hr, ndcg = sampled_ranking(pos, neg, k=3)
    assert hr == 1.0
    assert ndcg == pytest.approx((1 + 2 / math.log2(4)) / 3, rel=1e-15)
    with pytest.raises(ValueError, match="k must"):
        sampled_ranking(pos, neg, k=0)
    with pytest.raises(ValueError, match="negatives"):
        sampled_ranking(pos, neg[:2], k=1)


def test_negatives_avoid_the_history_and_the_true_item() -> None:
    inputs = torch.tensor([[0, 0, 3, 4], [5, 6, 7, 8]])
    true = torch.tensor([9, 1])
    neg = sample_negatives(inputs, true, vocab_size=15, count=8, seed=2)
    assert neg.shape == (2, 8)
    for row, hist, t in zip(neg.tolist(), inputs.tolist(), true.tolist(), strict=True):
        assert len(set(row)) == 8
        assert not set(row) & (set(hist) | {t, 0})
    assert torch.equal(neg, sample_negatives(inputs, true, vocab_size=15, count=8, seed=2))
    with pytest.raises(ValueError, match="count"):
        sample_negatives(inputs, true, vocab_size=15, count=10)


def test_sampled_bce_loss_matches_its_definition() -> None:
    torch.manual_seed(0)
    out = torch.randn(2, 3, 6, dtype=torch.float64)
    tgt = torch.tensor([[0, 2, 5], [0, 0, 1]])
    torch.manual_seed(7)
    total, count = sampled_bce_loss(out, tgt)
    assert count.item() == 3
    torch.manual_seed(7)
    neg = torch.randint(1, 5, tgt.shape)
    neg = neg + (neg >= tgt.clamp_min(1)).long()
    assert not (neg == tgt).any() and (neg >= 1).all() and (neg <= 5).all()
    want = 0.0
    for b, t in ((0, 1), (0, 2), (1, 2)):
        p, q = out[b, t, tgt[b, t]], out[b, t, neg[b, t]]
        want += -math.log(torch.sigmoid(p).item()) - math.log(1 - torch.sigmoid(q).item())
    assert total.item() == pytest.approx(want, rel=1e-5)


def test_sasrec_beats_popularity_in_a_short_run() -> None:
    # 100 steps of batch 32 (~11 epochs of 300 users, ~2 s): valid NDCG@10 must exceed the
    # most-popular baseline's (0.07 here) by at least 0.25 (measured: 0.44)
    data = recsys_data(0, users=300, items=120, clusters=4, max_length=9)
    torch.manual_seed(0)
    v = int(data.info["vocab_size"])
    model = create_model(
        "sasrec", vocab_size=v, max_length=8, hidden_size=16, num_blocks=1, dropout=0.0
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        idx = torch.randint(len(data.train), (32,), generator=g)
        s, c = sampled_bce_loss(model(data.train.inputs[idx]), data.train.targets[idx])
        opt.zero_grad()
        (s / c).backward()
        opt.step()
    model.eval()
    valid = data.valid
    with torch.no_grad():
        got = ranking_metrics(model(valid.inputs), valid.targets, valid.inputs, data.info)
    pop = ranking_metrics(baseline_outputs(data, "valid"), valid.targets, valid.inputs, data.info)
    assert got["ndcg_10"] > pop["ndcg_10"] + 0.25, (got, pop)


@pytest.mark.experiment
@pytest.mark.parametrize(
    ("model", "least"),
    [("sasrec", 0.67), ("gru4rec", 0.63)],
)
def test_default_budget_scores(model: str, least: float, tmp_path: Path) -> None:
    cfg = TrainConfig(
        task="next_item", model=model, out=str(tmp_path), verbose=False, plot=False, seed=0
    )
    result = Trainer(cfg).run()
    assert result.test["ndcg_10"] >= least, result.test
