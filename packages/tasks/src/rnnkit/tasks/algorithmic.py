"""Length generalisation on algorithmic tasks: copy, reverse and addition (Universal Transformer).

The Universal Transformer paper (Dehghani et al., ICLR 2019) trains copy, reverse and integer
addition on short strings and tests on strings ten times longer. Here the training strings have
lengths ``1..L`` and the test strings length ``2L`` (the issue's setting); validation uses held-out
strings of the training lengths, so model selection never sees a test length.

Every example is one token sequence read by an encoder that outputs a symbol per position:
the operands, a delimiter ``=``, then one answer slot ``?`` per output symbol, where the targets
are (``-100`` elsewhere). Shorter training examples are left-padded with token 0 (``pad``):

- ``copy``: ``s_1 .. s_n = ? .. ?`` -> ``s_1 .. s_n`` on the ``n`` slots;
- ``reverse``: the same with ``s_n .. s_1``;
- ``addition``: ``a_1 .. a_n + b_1 .. b_n = ? .. ?`` (``n`` digits each, most significant
  first, leading zeros allowed) -> the ``n + 1`` digits of ``a + b`` on ``n + 1`` slots.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from rnnkit.tasks._util import drop_seen, generator, tag_metrics
from rnnkit.tasks.base import IGNORE_INDEX, Budget, Split, Task, TaskData

PAD = 0
#: symbols of copy and reverse (tokens ``1..ALPHABET``, classes ``0..ALPHABET-1``)
ALPHABET = 8


def _left_pad(rows: list[Tensor], width: int, value: int) -> Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, width - r.shape[0] :] = r
    return out


def _copy_example(sym: Tensor, reverse: bool) -> tuple[Tensor, Tensor]:
    """One copy/reverse example: ``sym`` holds class ids ``0..ALPHABET-1``."""
    n = sym.shape[0]
    delim, slot = ALPHABET + 1, ALPHABET + 2
    x = torch.cat([sym + 1, torch.tensor([delim]), torch.full((n,), slot)])
    y = torch.full((2 * n + 1,), IGNORE_INDEX, dtype=torch.long)
    y[n + 1 :] = sym.flip(0) if reverse else sym
    return x, y


def _addition_example(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """One addition example: ``a``, ``b`` digit tensors (most significant first)."""
    n = a.shape[0]
    plus, eq, slot = 11, 12, 13
    weights = 10 ** torch.arange(n - 1, -1, -1, dtype=torch.long)
    total = int((a * weights).sum() + (b * weights).sum())
    digits = torch.tensor([int(c) for c in f"{total:0{n + 1}d}"], dtype=torch.long)
    x = torch.cat(
        [a + 1, torch.tensor([plus]), b + 1, torch.tensor([eq]), torch.full((n + 1,), slot)]
    )
    y = torch.full((x.shape[0],), IGNORE_INDEX, dtype=torch.long)
    y[2 * n + 2 :] = digits
    return x, y


def _split(op: str, size: int, lengths: tuple[int, int], width: int, g: torch.Generator) -> Split:
    ns = torch.randint(lengths[0], lengths[1] + 1, (size,), generator=g).tolist()
    xs, ys = [], []
    for n in ns:
        if op == "addition":
            a = torch.randint(0, 10, (n,), generator=g)
            b = torch.randint(0, 10, (n,), generator=g)
            x, y = _addition_example(a, b)
        else:
            x, y = _copy_example(torch.randint(0, ALPHABET, (n,), generator=g), op == "reverse")
        xs.append(x)
        ys.append(y)
    return Split(_left_pad(xs, width, PAD), _left_pad(ys, width, IGNORE_INDEX))


def seq_length(op: str, n: int) -> int:
    """Tokens of an example whose operands have ``n`` symbols."""
    return 3 * n + 3 if op == "addition" else 2 * n + 1


def lengen_data(
    seed: int,
    *,
    op: str,
    length: int = 8,
    sizes: tuple[int, int, int] = (10000, 1000, 1000),
) -> TaskData:
    """Train and valid: operands of ``1..length`` symbols; test: exactly ``2 * length``.

    Inputs ``(N, T)`` int64 tokens, left-padded with 0 to ``T = seq_length(op, length)``
    (train, valid) or ``seq_length(op, 2 * length)`` (test, no padding); targets ``(N, T)``
    class ids on the answer slots and ``-100`` elsewhere. ``info["test_length"]`` is ``2L``.
    """
    if op not in ("copy", "reverse", "addition"):
        raise ValueError(f"op must be 'copy', 'reverse' or 'addition', got {op!r}")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length!r}")
    short = seq_length(op, length)
    train = _split(op, sizes[0], (1, length), short, generator(seed, 0))
    valid = drop_seen(_split(op, sizes[1], (1, length), short, generator(seed, 1)), train)
    test = _split(
        op, sizes[2], (2 * length, 2 * length), seq_length(op, 2 * length), generator(seed, 2)
    )
    return TaskData(train, valid, test, {"train_length": length, "test_length": 2 * length})


#: the training length ``L`` of the three tasks (tested at ``2L``)
TRAIN_LENGTH = 8


def _ut_config(op: str) -> dict[str, object]:
    # position offsets up to the test sequence length, so that every test position was
    # seen in training (the paper's randomised offsets)
    return {
        "hidden_size": 64,
        "heads": 4,
        "max_steps": 8,
        "tau": 0.01,
        "dropout": 0.1,
        "pad_id": PAD,
        "position_offset": seq_length(op, 2 * TRAIN_LENGTH),
    }


_REFERENCE = (
    "Dehghani et al. (ICLR 2019), trained on length 40 and tested on 400 [recalled, not "
    "checked]: char/seq accuracy copy UT 0.91/0.35 vs LSTM 0.45/0.09; reverse 0.96/0.46 vs "
    "0.66/0.11; addition 0.34/0.02 vs 0.08/0.0 (not comparable: 2x here, not 10x)"
)


def _task(op: str, what: str, vocab: int, classes: int, steps: int) -> Task:
    return Task(
        name=f"{op}_lengen",
        description=f"{what}: train lengths 1-{TRAIN_LENGTH}, test length {2 * TRAIN_LENGTH}",
        kind="tag",
        make_data=functools.partial(lengen_data, op=op, length=TRAIN_LENGTH),
        metric_fn=tag_metrics,
        primary="token_accuracy",
        io={"input_size": 0, "vocab_size": vocab, "output_size": classes},
        model="universal_transformer",
        model_config=_ut_config(op),
        budget=Budget(steps=steps, batch_size=64, lr=3e-3, eval_every=250),
        reference=_REFERENCE,
        details=(
            "Token accuracy on the answer slots (sequence accuracy beside it). Training and "
            "valid strings are left-padded with token 0; the test strings are twice the "
            "longest training string. Valid holds training lengths only, so early stopping "
            "never sees the test length. Compare an LSTM at the same budget with "
            "--model sequence_tagger."
        ),
    )


TASKS: tuple[Task, ...] = (
    _task("copy", "copy a string (alphabet 8)", ALPHABET + 3, ALPHABET, 1000),
    _task("reverse", "reverse a string (alphabet 8)", ALPHABET + 3, ALPHABET, 1000),
    _task("addition", "add two decimal numbers", 14, 10, 1000),
)
