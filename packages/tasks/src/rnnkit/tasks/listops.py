"""ListOps: nested list operations over digits, a long-range classification task.

A miniature of the Long Range Arena task of that name (Tay et al. 2021, after Nangia and
Bowman 2018), generated here. An expression is a digit ``0..9`` or an operator applied to
2..``max_args`` expressions, written prefix with brackets, e.g. ``[MAX 4 [MIN 2 3 ] 1 ]``
(value 4). The model reads the token ids and names the value (10 classes).

Operators (``values`` of the arguments, ``k`` of them):

========== ================================================================
``MAX``    the largest value
``MIN``    the smallest value
``MED``    the lower median: ``sorted(values)[(k - 1) // 2]`` (always a digit)
``SUM_MOD`` ``sum(values) % 10``
========== ================================================================

Tokens: ``0`` padding, ``1..10`` the digits 0-9, ``11..14`` the opening brackets of ``MAX``,
``MIN``, ``MED``, ``SUM_MOD``, ``15`` the closing bracket (:data:`LISTOPS_VOCAB` = 16).

Generation (per example, from a ``random.Random`` seeded by ``(seed, split)``): a token budget
``b ~ U{min_len, ..., max_len}``; :func:`_expression` spends it top down. An expression given
``b >= 4`` tokens at depth ``< max_depth`` is an operator (uniform among the four) with ``k ~
U{2, ..., min(max_args, b - 2)}`` arguments; the ``b - 2`` tokens left after its brackets are
cut into ``k`` positive shares uniformly over all such cuts, and argument ``i`` is an
expression with budget ``share_i``. Otherwise (``b < 4`` or at ``max_depth``) it is a uniform
digit. Arguments are built left to right and the tokens an argument leaves of its share
(a digit given 2 or 3 tokens uses 1) are added to the next argument's share; an expression
never uses more tokens than its budget, and only the last argument's leftover is lost, so the
realised length is close to ``b`` (see ``docs/tasks.md`` for the measured
distribution). The root is always an operator. Sequences are left-padded with ``0`` to
``length`` tokens, so the expression ends at the last step (where a causal model reads its
answer).

``listops_spread`` (:func:`listops_spread_data`) is the long-range variant whose expressions
are easy: ``MAX``/``MIN`` only, depth at most 2, 2-3 arguments, 8-17 tokens of budget, at the
start of the sequence with padding after them to 1,024 tokens, so the difficulty is carrying
the expression (or its value) over about a thousand steps rather than the combinatorics.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import torch

from rnnkit.tasks import metrics as M
from rnnkit.tasks.base import Budget, Metrics, Split, Task, TaskData
from rnnkit.tasks.synthetic import _disjoint, _oversample

LISTOPS_PAD = 0
LISTOPS_DIGIT0 = 1  # digit d is token 1 + d
LISTOPS_OPS: tuple[str, ...] = ("MAX", "MIN", "MED", "SUM_MOD")
LISTOPS_OPEN0 = 11  # operator i opens with token 11 + i
LISTOPS_CLOSE = 15
LISTOPS_VOCAB = 16


def apply_op(op: int, values: list[int]) -> int:
    """The value of operator ``LISTOPS_OPS[op]`` on ``values`` (digits, at least one)."""
    if op == 0:
        return max(values)
    if op == 1:
        return min(values)
    if op == 2:
        return sorted(values)[(len(values) - 1) // 2]
    if op == 3:
        return sum(values) % 10
    raise ValueError(f"operator index must be 0..3, got {op}")


def _cuts(rng: random.Random, total: int, parts: int) -> list[int]:
    """``parts`` positive integers summing to ``total``, uniform over all such compositions."""
    points = sorted(rng.sample(range(1, total), parts - 1))
    bounds = [0, *points, total]
    return [bounds[i + 1] - bounds[i] for i in range(parts)]


def _expression(
    rng: random.Random,
    budget: int,
    depth: int,
    max_depth: int,
    max_args: int,
    out: list[int],
    ops: tuple[int, ...] = (0, 1, 2, 3),
) -> int:
    """Append the tokens of one expression of at most ``budget`` tokens to ``out``; return
    its value (see the module docstring for the rule)."""
    if budget < 4 or depth >= max_depth:
        d = int(rng.random() * 10)
        out.append(LISTOPS_DIGIT0 + d)
        return d
    op = ops[int(rng.random() * len(ops))]
    k = rng.randint(2, min(max_args, budget - 2))
    out.append(LISTOPS_OPEN0 + op)
    values = []
    spare = 0
    leaf = depth + 1 >= max_depth
    for share in _cuts(rng, budget - 2, k):
        # what an argument leaves of its share goes to the next one, so that the
        # expression comes close to its budget
        share += spare
        if leaf or share < 4:  # a digit, inline (the common case: most tokens are digits)
            d = int(rng.random() * 10)
            out.append(LISTOPS_DIGIT0 + d)
            values.append(d)
            spare = share - 1
        else:
            start = len(out)
            values.append(_expression(rng, share, depth + 1, max_depth, max_args, out, ops))
            spare = share - (len(out) - start)
    out.append(LISTOPS_CLOSE)
    return apply_op(op, values)


def listops_expressions(
    rng: random.Random,
    count: int,
    *,
    min_len: int,
    max_len: int,
    max_depth: int,
    max_args: int,
    ops: tuple[int, ...] = (0, 1, 2, 3),
) -> tuple[list[list[int]], list[int]]:
    """``count`` expressions (token lists, each at most ``max_len`` long) and their values;
    operators are drawn uniformly from ``ops`` (indices into :data:`LISTOPS_OPS`)."""
    exprs, values = [], []
    for _ in range(count):
        out: list[int] = []
        budget = rng.randint(min_len, max_len)
        # depth 0 with budget >= 4 is always an operator: the answer is never a bare digit
        values.append(_expression(rng, budget, 0, max_depth, max_args, out, ops))
        exprs.append(out)
    return exprs, values


def listops_data(
    seed: int,
    *,
    length: int = 1024,
    min_len: int = 512,
    max_depth: int = 10,
    max_args: int = 10,
    sizes: tuple[int, int, int] = (6000, 500, 500),
) -> TaskData:
    """ListOps expressions of a budget in ``[min_len, length]`` tokens, left-padded to
    ``length``.

    Inputs ``(N, length)`` int64 token ids (see the module docstring); targets ``(N,)`` the
    value 0-9. ``info`` holds ``vocab_size``, ``length`` and ``majority`` (the most frequent
    training label, for the ``majority_accuracy`` baseline).
    """
    if not 4 <= min_len <= length:
        raise ValueError(f"need 4 <= min_len <= length, got min_len={min_len}, length={length}")
    if max_depth < 1 or max_args < 2:
        raise ValueError(f"need max_depth >= 1 and max_args >= 2, got {max_depth}, {max_args}")
    splits = []
    # expressions hundreds of tokens long practically never repeat, so the held-out splits
    # are drawn at their size (not oversampled); _disjoint still drops any repeat
    for stream, size in enumerate(sizes):
        rng = random.Random(int(seed) * 1_000_003 + stream * 7919 + 17)
        exprs, values = listops_expressions(
            rng, size, min_len=min_len, max_len=length, max_depth=max_depth, max_args=max_args
        )
        x = torch.full((size, length), LISTOPS_PAD, dtype=torch.long)
        for i, e in enumerate(exprs):
            x[i, length - len(e) :] = torch.tensor(e, dtype=torch.long)
        splits.append(Split(x, torch.tensor(values, dtype=torch.long)))
    majority = int(torch.bincount(splits[0].targets, minlength=10).argmax())
    info = {"vocab_size": LISTOPS_VOCAB, "length": length, "majority": majority}
    return _disjoint(splits, info, sizes)


def listops_spread_data(
    seed: int,
    *,
    length: int = 1024,
    min_len: int = 8,
    max_len: int = 17,
    max_depth: int = 2,
    max_args: int = 3,
    ops: tuple[int, ...] = (0, 1),
    span: int = 0,
    sizes: tuple[int, int, int] = (6000, 500, 500),
) -> TaskData:
    """Short ListOps expressions at the start of a long sequence: the range is the hard part.

    Each expression has a budget of ``U{min_len..max_len}`` tokens, depth at most
    ``max_depth``, 2 to ``max_args`` arguments per operator and operators drawn uniformly from
    ``ops`` (indices into :data:`LISTOPS_OPS`; default ``MAX`` and ``MIN``), by the rule of
    :func:`listops_expressions`. Its tokens keep their order; the first is at step 0 and the
    others at steps drawn uniformly without replacement from ``1..max(span, n) - 1`` (``n``
    the expression's length; ``span=0``, the default, packs them at steps ``0..n - 1``). All
    other steps up to ``length`` are padding ``0``, so a model reading the last step must
    carry the expression over at least ``length - max(span, max_len)`` steps.

    Inputs ``(N, length)`` int64 token ids (the vocabulary of :data:`LISTOPS_VOCAB`); targets
    ``(N,)`` the value 0-9. ``info`` as :func:`listops_data`'s. Short expressions repeat, so
    the held-out splits are drawn with spares and cut to ``sizes`` after dropping inputs seen
    in training.
    """
    if not 4 <= min_len <= max_len <= length or span > length:
        raise ValueError(
            "need 4 <= min_len <= max_len <= length and span <= length, got "
            f"min_len={min_len}, max_len={max_len}, length={length}, span={span}"
        )
    if max_depth < 1 or max_args < 2:
        raise ValueError(f"need max_depth >= 1 and max_args >= 2, got {max_depth}, {max_args}")
    if not ops or not all(0 <= op < len(LISTOPS_OPS) for op in ops):
        raise ValueError(f"ops must be a non-empty tuple of indices 0..3, got {ops}")
    splits = []
    for stream, size in enumerate(_oversample(sizes)):
        rng = random.Random(int(seed) * 1_000_003 + stream * 7919 + 29)
        exprs, values = listops_expressions(
            rng,
            size,
            min_len=min_len,
            max_len=max_len,
            max_depth=max_depth,
            max_args=max_args,
            ops=ops,
        )
        x = torch.full((size, length), LISTOPS_PAD, dtype=torch.long)
        for i, e in enumerate(exprs):
            width = max(span, len(e))
            steps = [0, *sorted(rng.sample(range(1, width), len(e) - 1))]
            x[i, steps] = torch.tensor(e, dtype=torch.long)
        splits.append(Split(x, torch.tensor(values, dtype=torch.long)))
    majority = int(torch.bincount(splits[0].targets, minlength=10).argmax())
    info = {"vocab_size": LISTOPS_VOCAB, "length": length, "majority": majority}
    return _disjoint(splits, info, sizes)


def listops_lengths(inputs: torch.Tensor) -> torch.Tensor:
    """The expression length (non-padding tokens) of each example, ``(N,)`` int64."""
    return (inputs != LISTOPS_PAD).sum(1)


def listops_metrics(
    outputs: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor, info: Mapping[str, Any]
) -> Metrics:
    """``accuracy``; ``majority_accuracy``, the accuracy of always answering the most
    frequent training label (the level a model that ignores its input reaches); and
    ``accuracy_long``, over the examples longer than the split's median length."""
    majority = torch.full_like(targets, int(info["majority"]))
    lengths = listops_lengths(inputs)
    long = lengths > lengths.median()
    return {
        "accuracy": M.accuracy(outputs, targets),
        "majority_accuracy": float((majority == targets).float().mean()),
        "accuracy_long": M.accuracy(outputs[long], targets[long]),
    }


# --- the tasks this module declares (collected by rnnkit.tasks.registry) ----------------

TASKS: tuple[Task, ...] = (
    Task(
        name="listops",
        description="ListOps: value of nested MAX/MIN/MED/SUM_MOD expressions, T=1024",
        kind="classify",
        make_data=listops_data,
        metric_fn=listops_metrics,
        primary="accuracy",
        io={"input_size": 0, "vocab_size": LISTOPS_VOCAB, "output_size": 10},
        model="ssm_classifier",
        model_config={"cell": "s4d", "hidden_size": 64, "num_layers": 2, "state_size": 64},
        budget=Budget(steps=300, batch_size=32, lr=3e-3, weight_decay=0.01, eval_every=100),
        target=None,
        reference=(
            "Long Range Arena ListOps (Tay et al. 2021; T up to 2,000, 96k training "
            "examples): LSTM and Transformers about 36-37 %, S4 about 59 %, S5 about 62 % "
            "[recalled, not checked]; not comparable (smaller data and budget here)"
        ),
        details=(
            "Generated: expressions with a token budget U{512..1024}, operators MAX, MIN, "
            "MED (lower median), SUM_MOD with 2-10 arguments, depth <= 10, left-padded "
            "to 1,024 tokens; 6,000 / 500 / 500 examples. Metrics also give the "
            "majority-label baseline."
        ),
    ),
    Task(
        name="listops_spread",
        description="ListOps: short MAX/MIN expressions, then padding to T=1024 (long range)",
        kind="classify",
        make_data=listops_spread_data,
        metric_fn=listops_metrics,
        primary="accuracy",
        io={"input_size": 0, "vocab_size": LISTOPS_VOCAB, "output_size": 10},
        model="ssm_classifier",
        model_config={"cell": "s4d", "hidden_size": 64, "num_layers": 2, "state_size": 64},
        budget=Budget(steps=300, batch_size=32, lr=1e-2, weight_decay=0.01, eval_every=100),
        target=None,
        reference="no published counterpart (a variant generated here)",
        details=(
            "Generated: MAX/MIN expressions of 8-17 tokens of budget, depth <= 2, 2-3 "
            "arguments, at steps 0..n-1, padding to 1,024 tokens after them; 6,000 / 500 / "
            "500 examples. Metrics also give the majority-label baseline."
        ),
    ),
)

__all__ = [
    "LISTOPS_VOCAB",
    "TASKS",
    "apply_op",
    "listops_data",
    "listops_expressions",
    "listops_lengths",
    "listops_metrics",
    "listops_spread_data",
]
