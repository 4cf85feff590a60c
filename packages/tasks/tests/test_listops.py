"""ListOps: labels checked by an evaluator written here, lengths, padding, determinism."""

from __future__ import annotations

import statistics

import pytest
import torch

from rnnkit.tasks import get_task
from rnnkit.tasks.listops import (
    LISTOPS_VOCAB,
    listops_data,
    listops_metrics,
    listops_spread_data,
)

# the token layout of the module docstring, restated so that the test does not read it back
PAD, CLOSE = 0, 15
OPEN = {11: "MAX", 12: "MIN", 13: "MED", 14: "SUM_MOD"}


def _value(name: str, args: list[int]) -> int:
    if name == "MAX":
        return max(args)
    if name == "MIN":
        return min(args)
    if name == "MED":
        # lower median: of an even count, the smaller of the two middle values
        return int(statistics.median_low(args))
    return sum(args) % 10


def evaluate(tokens: list[int]) -> tuple[int, int]:
    """Value and nesting depth of one expression, by a stack machine over the tokens."""
    stack: list[tuple[str, list[int]]] = []
    result: int | None = None
    depth = 0
    for t in tokens:
        if t in OPEN:
            stack.append((OPEN[t], []))
            depth = max(depth, len(stack))
        elif t == CLOSE:
            name, args = stack.pop()
            assert len(args) >= 2, "an operator has at least two arguments"
            v = _value(name, args)
            if stack:
                stack[-1][1].append(v)
            else:
                result = v
        else:
            assert 1 <= t <= 10, t
            assert stack, "a bare digit outside any operator"
            stack[-1][1].append(t - 1)
    assert not stack and result is not None, "unbalanced expression"
    return result, depth


def test_labels_match_an_independent_evaluator_and_lengths_fit() -> None:
    d = listops_data(3, length=256, min_len=64, max_depth=6, max_args=5, sizes=(300, 50, 50))
    for split in (d.train, d.valid, d.test):
        assert split.inputs.shape[1] == 256
        for x, y in zip(split.inputs.tolist(), split.targets.tolist(), strict=True):
            n_pad = next(i for i, t in enumerate(x) if t != PAD)
            expr = x[n_pad:]
            assert PAD not in expr  # left padding only: the expression ends at the last step
            assert len(expr) <= 256
            value, depth = evaluate(expr)
            assert value == y
            assert 1 <= depth <= 6
    # the budget is spent: lengths spread over the range, most near the budget
    lengths = (d.train.inputs != PAD).sum(1).float()
    assert int(lengths.max()) <= 256
    assert float(lengths.mean()) > 0.6 * (64 + 256) / 2
    assert float(lengths.min()) < 0.6 * 256 < float(lengths.max())
    # every operator and every label occurs
    assert set(d.train.targets.tolist()) == set(range(10))
    for t in OPEN:
        assert bool((d.train.inputs == t).any())


def test_operator_arguments_respect_max_args() -> None:
    d = listops_data(0, length=128, min_len=100, max_depth=10, max_args=3, sizes=(100, 20, 20))
    for x in d.train.inputs.tolist():
        counts: list[int] = []
        for t in x:
            if t in OPEN:
                if counts:
                    counts[-1] += 1
                counts.append(0)
            elif t == CLOSE:
                assert 2 <= counts.pop() <= 3
            elif t != PAD:
                counts[-1] += 1


def test_deterministic_under_a_seed() -> None:
    kw = {"length": 128, "min_len": 32, "sizes": (60, 20, 20)}
    a, b, c = listops_data(5, **kw), listops_data(5, **kw), listops_data(6, **kw)  # type: ignore[arg-type]
    for s in ("train", "valid", "test"):
        assert torch.equal(a.split(s).inputs, b.split(s).inputs)
        assert torch.equal(a.split(s).targets, b.split(s).targets)
    assert not torch.equal(a.train.inputs, c.train.inputs)
    assert a.info == b.info


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="min_len"):
        listops_data(0, length=64, min_len=100)
    with pytest.raises(ValueError, match="max_args"):
        listops_data(0, length=64, min_len=32, max_args=1)


def test_metrics_report_the_majority_baseline() -> None:
    x = torch.tensor([[0, 11, 1, 2, 15], [11, 3, 4, 2, 15], [0, 0, 12, 5, 6]])
    y = torch.tensor([1, 3, 4])
    logits = torch.nn.functional.one_hot(torch.tensor([1, 0, 4]), 10).float()
    m = listops_metrics(logits, y, x, {"majority": 3})
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["majority_accuracy"] == pytest.approx(1 / 3)
    # lengths 4, 5, 3: only the second is above the median (4), and it is wrong
    assert m["accuracy_long"] == 0.0


def test_registered_task_is_long_range() -> None:
    task = get_task("listops")
    assert task.kind == "classify"
    assert task.io["vocab_size"] == LISTOPS_VOCAB
    assert task.io["output_size"] == 10
    assert task.model == "ssm_classifier"


# --- listops_spread: short expressions at the start of a long sequence ------------------------


def _tokens_and_steps(x: list[int]) -> tuple[list[int], list[int]]:
    steps = [i for i, t in enumerate(x) if t != PAD]
    return [x[i] for i in steps], steps


def test_spread_labels_match_the_evaluator_and_sit_at_the_start() -> None:
    d = listops_spread_data(2, length=300, sizes=(200, 40, 40))
    for split in (d.train, d.valid, d.test):
        assert split.inputs.shape == (len(split), 300)
        for x, y in zip(split.inputs.tolist(), split.targets.tolist(), strict=True):
            expr, steps = _tokens_and_steps(x)
            # compact (span 0): the expression fills steps 0..n-1, padding after it
            assert steps == list(range(len(expr)))
            assert 4 <= len(expr) <= 17
            value, depth = evaluate(expr)
            assert value == y
            assert 1 <= depth <= 2
            # the default operators are MAX and MIN only
            assert all(t not in (13, 14) for t in expr)
    assert set(d.train.targets.tolist()) == set(range(10))


def test_spread_span_spreads_the_tokens_in_order() -> None:
    d = listops_spread_data(
        1, length=512, span=400, max_depth=3, max_args=4, ops=(0, 1, 2, 3), max_len=40,
        sizes=(100, 20, 20),
    )  # fmt: skip
    last_steps = []
    for x, y in zip(d.train.inputs.tolist(), d.train.targets.tolist(), strict=True):
        expr, steps = _tokens_and_steps(x)
        assert steps[0] == 0 and steps[-1] < 400
        value, depth = evaluate(expr)
        assert value == y and depth <= 3
        last_steps.append(steps[-1])
    # the tokens are spread over the span, not packed at its start
    assert statistics.mean(last_steps) > 300
    assert bool((d.train.inputs == 14).any())  # SUM_MOD appears when asked for


def test_spread_deterministic_under_a_seed() -> None:
    kw = {"length": 64, "sizes": (50, 20, 20)}
    a, b, c = (listops_spread_data(s, **kw) for s in (4, 4, 5))  # type: ignore[arg-type]
    for s in ("train", "valid", "test"):
        assert torch.equal(a.split(s).inputs, b.split(s).inputs)
        assert torch.equal(a.split(s).targets, b.split(s).targets)
    assert not torch.equal(a.train.inputs, c.train.inputs)
    assert a.info == b.info


def test_spread_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="max_len"):
        listops_spread_data(0, length=16, max_len=17)
    with pytest.raises(ValueError, match="ops"):
        listops_spread_data(0, length=64, ops=(0, 4))


def test_registered_spread_task_is_long_range() -> None:
    task = get_task("listops_spread")
    assert task.kind == "classify" and task.model == "ssm_classifier"
    assert task.io["vocab_size"] == LISTOPS_VOCAB and task.io["output_size"] == 10
    data = task.data(0)
    assert data.train.inputs.shape[1] >= 1024
