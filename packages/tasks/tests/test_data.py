"""Generators are seeded and deterministic, splits are disjoint, labels are right."""

from __future__ import annotations

import random
import re

import pytest
import torch
from conftest import task_data

from rnnkit.tasks import get_task, list_tasks
from rnnkit.tasks._util import row_keys
from rnnkit.tasks.forecasting import AR_COEFFS, ar_data, implied_ar_coefficients, lorenz_data
from rnnkit.tasks.formal import (
    TOMITA,
    _sample_string,
    dyck_data,
    dyck_next_sets,
    tomita_accepts,
)
from rnnkit.tasks.hmm import optimal_bits
from rnnkit.tasks.synthetic import dms_data, parity_data, s5_data, s5_table

ALL = list_tasks()
FIXED_DATA = {"charlm"}  # the text is fixed: only training order depends on the seed
SLOW_DATA = {"dyck1", "dyck2", "lorenz63"}  # seed dependence checked for the others only


def test_all_tasks_registered() -> None:
    for name in [
        "parity",
        "dms",
        "copy",
        "mqar",
        "s5",
        "hmm",
        "ar",
        "lorenz63",
        "charlm",
        "digits_rows",
        "digits_pixels",
        "dyck1",
        "dyck2",
        *(f"tomita{g}" for g in range(1, 8)),
    ]:
        assert name in ALL
    assert list_tasks("tomita*") == [f"tomita{g}" for g in range(1, 8)]


def test_unknown_task_suggests_closest() -> None:
    with pytest.raises(ValueError, match="parity"):
        get_task("parit")


@pytest.mark.parametrize("name", ALL)
def test_deterministic_shapes_and_disjoint(name: str) -> None:
    task = get_task(name)
    a = task_data(name, 0)
    b = a if name in SLOW_DATA else task.data(0)  # see test_slow_generators_deterministic
    for split in ("train", "valid", "test"):
        sa, sb = a.split(split), b.split(split)
        assert len(sa) > 0
        assert torch.equal(sa.inputs, sb.inputs)
        assert torch.equal(sa.targets.nan_to_num(-7.0), sb.targets.nan_to_num(-7.0))
        # shapes by kind
        n = len(sa)
        if task.kind == "classify":
            assert sa.targets.shape == (n,)
            assert int(sa.targets.max()) < task.io["output_size"]
        elif task.kind == "tag":
            assert sa.targets.shape == sa.inputs.shape[:2]
        elif task.kind == "regress":
            assert sa.targets.shape == (*sa.inputs.shape[:2], task.io["output_size"])
        else:
            assert sa.targets.shape[-1] == task.io["output_size"]
        if "vocab_size" in task.io:
            assert int(sa.inputs.max()) < task.io["vocab_size"]
        else:
            assert sa.inputs.shape[-1] == task.io["input_size"]
    # held-out inputs never appear in training (compare only same-shaped rows)
    train = set(row_keys(a.train.inputs))
    for split in (a.valid, a.test):
        if split.inputs.shape[1:] == a.train.inputs.shape[1:]:
            assert not train & set(row_keys(split.inputs)), name
    if name not in FIXED_DATA | SLOW_DATA:
        c = task.data(1)
        assert not torch.equal(c.train.inputs, a.train.inputs)


def test_slow_generators_deterministic() -> None:
    for n in (1, 2):
        a, b, c = (dyck_data(seed, n_types=n, sizes=(200, 50, 50)) for seed in (0, 0, 1))
        assert torch.equal(a.test.targets, b.test.targets)
        assert not torch.equal(a.train.inputs[:, :20], c.train.inputs[:, :20])
    a, b = lorenz_data(0, length=2000), lorenz_data(0, length=2000)
    assert torch.equal(a.train.inputs, b.train.inputs)
    assert not torch.equal(a.train.inputs, lorenz_data(1, length=2000).train.inputs)


def test_parity_and_dms_labels() -> None:
    d = parity_data(3, n=4, sizes=(200, 50, 50))
    bits = d.train.inputs[..., 0]
    assert torch.equal(d.train.targets, bits[:, -4:].sum(-1).long() % 2)
    d = dms_data(3, n=5, sizes=(200, 50, 50))
    bits = d.train.inputs[..., 0]
    assert torch.equal(d.train.targets, (bits[:, -5] == bits[:, -1]).long())


def test_s5_running_product() -> None:
    table = s5_table()
    assert torch.equal(table[0], torch.arange(120))  # identity
    assert len(set(table[5].tolist())) == 120  # a group row is a permutation
    d = s5_data(0, length=4, sizes=(10, 10, 10))
    x, y = d.train.inputs[0].tolist(), d.train.targets[0].tolist()
    acc = 0
    for t in range(4):
        acc = int(table[acc, x[t]])
        assert y[t] == acc


TOMITA_REFERENCE = {
    1: lambda s: re.fullmatch("1*", s) is not None,
    2: lambda s: re.fullmatch("(10)*", s) is not None,
    3: lambda s: (
        not any(
            len(a) % 2 == 1 and len(b) % 2 == 1
            for a, b in re.findall(r"(?=(?:^|0)(1+)(0+)(?:1|$))", s)
        )
    ),
    4: lambda s: "000" not in s,
    5: lambda s: s.count("0") % 2 == 0 and s.count("1") % 2 == 0,
    6: lambda s: (s.count("0") - s.count("1")) % 3 == 0,
    7: lambda s: re.fullmatch("0*1*0*1*", s) is not None,
}


@pytest.mark.parametrize("grammar", range(1, 8))
def test_tomita_dfa_matches_definition(grammar: int) -> None:
    ref = TOMITA_REFERENCE[grammar]
    for length in range(11):
        for i in range(2**length):
            s = format(i, f"0{length}b") if length else ""
            assert tomita_accepts(grammar, s) == ref(s), (grammar, s)
    rng = random.Random(0)
    for positive in (True, False):
        s = _sample_string(TOMITA[grammar], 12, positive, rng)
        assert s is None or tomita_accepts(grammar, s) == positive


def test_tomita_data_balanced_and_longer_heldout() -> None:
    d = task_data("tomita3")
    assert float(d.train.targets.float().mean()) == pytest.approx(0.5, abs=0.01)
    lengths = [(d.split(s).inputs != 0).sum(1) for s in ("train", "valid", "test")]
    assert int(lengths[0].max()) < int(lengths[1].min())
    assert int(lengths[1].max()) < int(lengths[2].min())


def test_dyck_next_sets() -> None:
    # Dyck-2: tokens 0 '(' 1 '[' 2 ')' 3 ']'; columns ( [ ) ] end
    sets = dyck_next_sets([0, 1, 3, 2], 2)
    assert sets == [[1, 1, 1, 0, 0], [1, 1, 0, 1, 0], [1, 1, 1, 0, 0], [1, 1, 0, 0, 1]]
    with pytest.raises(ValueError, match="not a Dyck-2 prefix"):
        dyck_next_sets([0, 3], 2)


def test_ar_implied_coefficients_of_the_true_predictor() -> None:
    d = ar_data(0, length=6000)
    x = d.test.inputs
    a = torch.tensor(AR_COEFFS)
    # the optimal forecast a1 x_t + a2 x_{t-1} + a3 x_{t-2}
    lags = torch.stack([torch.roll(x[..., 0], i, 1) for i in range(3)], -1)
    pred = (lags * a).sum(-1, keepdim=True)
    est = implied_ar_coefficients(x, pred, d.test.targets, 3)
    assert torch.allclose(est.float(), a, atol=1e-4)


def test_hmm_optimum_below_marginal_entropy() -> None:
    d = task_data("hmm")
    best = optimal_bits(d.test.targets)
    freq = torch.bincount(d.test.targets.reshape(-1), minlength=3).float()
    p = freq / freq.sum()
    marginal = float(-(p * p.log2()).sum())
    assert 0.3 < best < marginal
