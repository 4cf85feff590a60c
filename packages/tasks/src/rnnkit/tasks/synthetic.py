"""Synthetic memory tasks: N-parity, N-DMS, copy, multi-query associative recall, S5, and the
word problems of small groups (S3, Z<m>).

Every generator is a pure function of ``seed``; held-out splits never repeat a training input.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from rnnkit.tasks import metrics as M
from rnnkit.tasks._util import classify_metrics, drop_seen, generator, lstm_config, tag_metrics
from rnnkit.tasks.base import IGNORE_INDEX, Budget, Metrics, Split, Task, TaskData

# --- N-parity and N-DMS (Khajehabdollahi, Zeraati et al., ICLR 2024) -----------------------


def _bit_sequences(
    n: int, t_min: int, t_max: int, g: torch.Generator, *, random_p: bool
) -> tuple[Tensor, Tensor]:
    """``n`` bit strings of lengths ``U{t_min..t_max}``, left-padded with zeros to ``t_max``.

    Returns ``(bits (n, t_max) float, lengths (n,) int64)``. With ``random_p`` each string's
    bits are Bernoulli(p) with ``p ~ U(0, 1)`` drawn per string, else Bernoulli(0.5).
    """
    lengths = torch.randint(t_min, t_max + 1, (n,), generator=g)
    p = torch.rand(n, 1, generator=g) if random_p else torch.full((n, 1), 0.5)
    bits = (torch.rand(n, t_max, generator=g) < p).float()
    pos = torch.arange(t_max).expand(n, t_max)
    bits = torch.where(pos >= t_max - lengths[:, None], bits, torch.zeros(()))
    return bits, lengths


def parity_data(
    seed: int, *, n: int = 6, sizes: tuple[int, int, int] = (8000, 1000, 1000)
) -> TaskData:
    """N-parity: the parity of the last ``n`` bits, read at the last step.

    Lengths ``T ~ U{n+2, ..., ceil(n+2+1.5n)-1}`` (left-padded with zeros, which does not
    change the answer), bits Bernoulli(p) with ``p ~ U(0,1)`` per sequence, as in the paper.
    Inputs ``(N, T_max, 1)`` float, targets ``(N,)`` in ``{0, 1}``.
    """
    t_min, t_max = n + 2, math.ceil(n + 2 + 1.5 * n) - 1
    splits = []
    for stream, size in enumerate(_oversample(sizes)):
        bits, _ = _bit_sequences(size, t_min, t_max, generator(seed, stream), random_p=True)
        y = bits[:, -n:].sum(-1).long() % 2
        splits.append(Split(bits[..., None], y))
    return _disjoint(splits, {"n": n}, sizes)


def dms_data(
    seed: int, *, n: int = 10, sizes: tuple[int, int, int] = (8000, 1000, 1000)
) -> TaskData:
    """N-delayed-match-to-sample: 1 iff the last bit equals the bit ``n - 1`` steps earlier.

    Lengths ``T ~ U{n+2, ..., n+2+3n}``, Bernoulli(0.5) bits, left-padded with zeros.
    Inputs ``(N, T_max, 1)`` float, targets ``(N,)`` in ``{0, 1}``.
    """
    t_min, t_max = n + 2, n + 2 + 3 * n
    splits = []
    for stream, size in enumerate(_oversample(sizes)):
        bits, _ = _bit_sequences(size, t_min, t_max, generator(seed, stream), random_p=False)
        y = (bits[:, -n] == bits[:, -1]).long()
        splits.append(Split(bits[..., None], y))
    return _disjoint(splits, {"n": n}, sizes)


def _disjoint(splits: list[Split], info: dict[str, int], sizes: tuple[int, ...]) -> TaskData:
    """Drop held-out examples seen in training (or valid), then cut to the requested sizes.

    The held-out splits are generated with spare examples (see :func:`_oversample`).
    """
    train, valid, test = splits
    valid = drop_seen(valid, train)
    test = drop_seen(test, train, valid)
    valid = valid.take(torch.arange(min(len(valid), sizes[1])))
    test = test.take(torch.arange(min(len(test), sizes[2])))
    for name, split, size in (("valid", valid, sizes[1]), ("test", test, sizes[2])):
        if size > 0 and len(split) == 0:
            raise ValueError(
                f"no {name} example is left that training has not seen (sizes {sizes}): "
                f"too few distinct examples at these lengths; ask for longer ones or fewer "
                f"training examples"
            )
    return TaskData(train, valid, test, info)


def _oversample(sizes: tuple[int, int, int]) -> tuple[int, int, int]:
    """Generate 4x the held-out examples so that enough remain after dropping repeats."""
    return sizes[0], 4 * sizes[1], 4 * sizes[2]


# --- copy ------------------------------------------------------------------------------------


def copy_data(
    seed: int,
    *,
    length: int = 10,
    delay: int = 10,
    alphabet: int = 8,
    sizes: tuple[int, int, int] = (8000, 1000, 1000),
) -> TaskData:
    """Copy: read ``length`` symbols, wait ``delay`` blanks, then a delimiter, then recall.

    Tokens: 0 blank, ``1..alphabet`` symbols, ``alphabet + 1`` delimiter. Inputs ``(N, T)``
    int64 with ``T = 2 * length + delay``; targets ``(N, T)`` hold the symbols on the last
    ``length`` steps (from the delimiter on) and ``-100`` elsewhere.
    """
    total = 2 * length + delay
    delim = alphabet + 1
    splits = []
    for stream, size in enumerate(_oversample(sizes)):
        g = generator(seed, stream)
        sym = torch.randint(1, alphabet + 1, (size, length), generator=g)
        x = torch.zeros(size, total, dtype=torch.long)
        x[:, :length] = sym
        x[:, length + delay] = delim
        y = torch.full((size, total), IGNORE_INDEX, dtype=torch.long)
        y[:, length + delay :] = sym
        splits.append(Split(x, y))
    return _disjoint(splits, {"vocab_size": alphabet + 2}, sizes)


# --- multi-query associative recall (Zoology) ------------------------------------------------


def mqar_data(
    seed: int,
    *,
    vocab: int = 64,
    seq_len: int = 32,
    pairs: int = 4,
    sizes: tuple[int, int, int] = (10000, 1000, 1000),
) -> TaskData:
    """Multi-query associative recall.

    The sequence starts with ``pairs`` distinct key-value pairs (keys from ``1..vocab/2-1``,
    values from ``vocab/2..vocab-1``); the rest is filler 0 with every key queried once, each
    query followed by its value, at random pair-aligned places. Inputs are ``seq[:-1]`` and
    labels ``seq[1:]``, kept only where the input is a query key (``-100`` elsewhere), as in
    Zoology. Inputs and targets ``(N, seq_len)`` int64.
    """
    half = vocab // 2
    if pairs > half - 1 or 2 * pairs + 2 * pairs > seq_len + 1:
        raise ValueError("mqar: too many pairs for the vocabulary or the sequence length")
    slots = (seq_len + 1 - 2 * pairs) // 2
    splits = []
    for stream, size in enumerate(_oversample(sizes)):
        g = generator(seed, stream)
        keys = torch.argsort(torch.rand(size, half - 1, generator=g), -1)[:, :pairs] + 1
        values = torch.randint(half, vocab, (size, pairs), generator=g)
        seq = torch.zeros(size, seq_len + 1, dtype=torch.long)
        seq[:, 0 : 2 * pairs : 2] = keys
        seq[:, 1 : 2 * pairs : 2] = values
        slot = torch.argsort(torch.rand(size, slots, generator=g), -1)[:, :pairs]
        pos = 2 * pairs + 2 * slot  # (size, pairs): where each query key goes
        rows = torch.arange(size)[:, None].expand_as(pos)
        seq[rows, pos] = keys
        seq[rows, pos + 1] = values
        x, labels = seq[:, :-1], seq[:, 1:]
        is_query = torch.zeros_like(x, dtype=torch.bool)
        is_query[rows, pos] = True
        y = torch.where(is_query, labels, torch.full_like(labels, IGNORE_INDEX))
        splits.append(Split(x.contiguous(), y.contiguous()))
    return _disjoint(splits, {"vocab_size": vocab}, sizes)


def mqar_metrics(
    outputs: Tensor, targets: Tensor, inputs: Tensor, info: Mapping[str, Any]
) -> Metrics:
    """``token_accuracy``, ``sequence_accuracy`` and ``first_query_accuracy``.

    Every key is queried once and each query is followed by its value, so a model that only
    remembers the set of values and strikes out those already shown again answers the last
    query for free (and the earlier ones with chance 1/4, 1/3, 1/2 for 4 pairs) without
    binding keys to values: about 0.53 token accuracy. ``first_query_accuracy`` (each
    sequence's first query, where that shortcut is at 1/pairs) measures recall proper.
    ``outputs (N, T, vocab)``, ``targets (N, T)`` with ``-100`` off the queries.
    """
    result = tag_metrics(outputs, targets, inputs, info)
    queried = targets != IGNORE_INDEX
    rows = queried.any(1).nonzero()[:, 0]
    first = queried[rows].long().argmax(1)  # position of each sequence's first query
    result["first_query_accuracy"] = M.accuracy(outputs[rows, first], targets[rows, first])
    return result


# --- S5 word problem (Merrill, Petty, Sabharwal, ICML 2024) ----------------------------------


def s5_table() -> Tensor:
    """The group S5: ``table[a, b]`` is the index of ``a · b`` (apply ``a``, then ``b``).

    Elements are the 120 permutations of ``range(5)`` in lexicographic order; index 0 is the
    identity. Returns ``(120, 120)`` int64.
    """
    return _symmetric_table(5)


def _symmetric_table(n: int) -> Tensor:
    """``S_n``'s table (apply ``a``, then ``b``), permutations of ``range(n)`` in lexicographic
    order: ``(n!, n!)`` int64."""
    perms = list(itertools.permutations(range(n)))
    index = {p: i for i, p in enumerate(perms)}
    table = torch.empty(len(perms), len(perms), dtype=torch.long)
    for i, a in enumerate(perms):
        for j, b in enumerate(perms):
            table[i, j] = index[tuple(b[a[k]] for k in range(n))]
    return table


S5_ENCODINGS: tuple[str, ...] = ("token", "permutation")


def s5_permutation_matrices() -> Tensor:
    """The permutation matrices of S5: ``m[e, i, j] = 1`` iff element ``e`` maps ``i`` to ``j``.

    Same element order as :func:`s5_table`; with "apply ``a``, then ``b``" the product is the
    matrix product, ``m[a · b] = m[a] @ m[b]``. Returns ``(120, 5, 5)`` float32.
    """
    perms = torch.tensor(list(itertools.permutations(range(5))))  # (120, 5): e maps i -> p[e, i]
    return torch.nn.functional.one_hot(perms, 5).float()


def _running_products(
    table: Tensor, size: int, length: int, g: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``size`` uniform words over the group of ``table`` (see :func:`group_table`), element ids
    ``(size, length)`` int64, and their running products ``g1 · … · gt``, same shape."""
    x = torch.randint(0, table.shape[0], (size, length), generator=g)
    y = torch.empty_like(x)
    acc = torch.zeros(size, dtype=torch.long)
    for t in range(length):
        acc = table[acc, x[:, t]]
        y[:, t] = acc
    return x, y


def s5_data(
    seed: int,
    *,
    length: int = 8,
    sizes: tuple[int, int, int] = (20000, 1000, 1000),
    encoding: str = "token",
) -> TaskData:
    """S5 composition: at every step the running product ``g1 · … · gt`` (tagging mode).

    ``encoding="token"``: inputs ``(N, length)`` int64 element ids in ``0..119`` (as in the
    paper). ``encoding="permutation"``: inputs ``(N, length, 25)`` float, each element's 5x5
    permutation matrix (row ``i`` one-hot of the image of ``i``) flattened row by row, so the
    model sees the group's structure instead of having to learn 120 unrelated embeddings. The
    examples are the same for both encodings. Targets ``(N, length)`` int64 in ``0..119``.
    """
    if encoding not in S5_ENCODINGS:
        raise ValueError(f"s5: encoding must be one of {S5_ENCODINGS}, got {encoding!r}")
    table = s5_table()
    splits = []
    for stream, size in enumerate(_oversample(sizes)):
        splits.append(Split(*_running_products(table, size, length, generator(seed, stream))))
    data = _disjoint(splits, {"vocab_size": 120}, sizes)
    if encoding == "token":
        return data
    flat = s5_permutation_matrices().reshape(120, 25)

    def encode(s: Split) -> Split:
        return Split(flat[s.inputs], s.targets)

    return TaskData(encode(data.train), encode(data.valid), encode(data.test), data.info)


# --- word problems of small groups, tested past the training length ------------------------


def group_table(group: str) -> Tensor:
    """The multiplication table of a small group: ``table[a, b]`` is ``a · b``.

    ``group`` is ``"S<n>"`` (the symmetric group on ``n`` points, ``2 <= n <= 5``; "apply
    ``a``, then ``b``", elements as in :func:`s5_table`) or ``"Z<m>"`` (the integers modulo
    ``m >= 2`` under addition: modular counting). Index 0 is the identity. Returns ``(|G|,
    |G|)`` int64.
    """
    kind, digits = group[:1], group[1:]
    if kind in ("S", "Z") and digits.isdigit():
        n = int(digits)
        if kind == "S" and 2 <= n <= 5:
            return _symmetric_table(n)
        if kind == "Z" and n >= 2:
            a = torch.arange(n)
            return (a[:, None] + a[None, :]) % n
    raise ValueError(f"group must be 'S2'..'S5' or 'Z<m>' with m >= 2, got {group!r}")


def _word_problem(table: Tensor, size: int, length: int, g: torch.Generator) -> Split:
    """``size`` uniform words of ``length`` elements, one-hot ``(size, length, |G|)`` float,
    and their running products ``(size, length)`` int64."""
    x, y = _running_products(table, size, length, g)
    return Split(torch.nn.functional.one_hot(x, table.shape[0]).float(), y)


def group_data(
    seed: int,
    *,
    group: str = "S3",
    length: int = 16,
    test_length: int = 64,
    sizes: tuple[int, int, int] = (10000, 500, 500),
) -> TaskData:
    """The word problem of ``group`` (see :func:`group_table`) in tagging mode: at every step
    the running product ``g1 · … · gt``; train and valid words have ``length`` elements, test
    words ``test_length`` (length generalisation).

    Inputs ``(N, T, |G|)`` float, each element one-hot; targets ``(N, T)`` int64 in
    ``0..|G|-1``. Held-out words never repeat a training word. ``info`` holds ``group_size``,
    ``train_length`` and ``test_length``.
    """
    if length < 1 or test_length < 1:
        raise ValueError(f"lengths must be >= 1, got {length!r} and {test_length!r}")
    table = group_table(group)
    lengths = (length, length, test_length)
    splits = [
        _word_problem(table, size, n, generator(seed, stream))
        for stream, (size, n) in enumerate(zip(_oversample(sizes), lengths, strict=True))
    ]
    info = {"group_size": table.shape[0], "train_length": length, "test_length": test_length}
    return _disjoint(splits, info, sizes)


# --- the tasks this module declares (collected by rnnkit.tasks.registry) ----------------

TASKS: tuple[Task, ...] = (
    Task(
        name="parity",
        description="N-parity (N=6): parity of the last 6 bits, lengths 8-15",
        kind="classify",
        make_data=functools.partial(parity_data, n=6),
        metric_fn=classify_metrics,
        primary="accuracy",
        io={"input_size": 1, "output_size": 2},
        model_config=lstm_config(64),
        budget=Budget(steps=1500, batch_size=64, lr=5e-3, eval_every=100),
        target=0.95,
        reference=(
            "Khajehabdollahi, Zeraati et al. (ICLR 2024): curricula to large N "
            "(N reached per epoch budget not retrieved)"
        ),
        details=(
            "Paper's data: T ~ U{N+2..ceil(2.5N+2)-1}, Bernoulli(p), p ~ U(0,1) per "
            "sequence; fixed N=6 without curriculum; 8,000 training sequences."
        ),
    ),
    Task(
        name="dms",
        description="N-delayed match-to-sample (N=5): last bit == bit N-1 steps back",
        kind="classify",
        make_data=functools.partial(dms_data, n=5),
        metric_fn=classify_metrics,
        primary="accuracy",
        io={"input_size": 1, "output_size": 2},
        model_config=lstm_config(64),
        budget=Budget(steps=1000, batch_size=64, lr=5e-3, eval_every=100),
        target=0.95,
        reference="Khajehabdollahi, Zeraati et al. (ICLR 2024): see parity",
        details=(
            "T ~ U{N+2..4N+2}, Bernoulli(0.5) bits, fixed N=5 (N=10 is not learnt in 1,000 steps)."
        ),
    ),
    Task(
        name="copy",
        description="copy 5 symbols (alphabet 8) after a delay of 10 blanks",
        kind="tag",
        make_data=functools.partial(copy_data, length=5, delay=10),
        metric_fn=tag_metrics,
        primary="token_accuracy",
        io={"input_size": 0, "vocab_size": 10, "output_size": 10},
        model="sequence_tagger",
        model_config=lstm_config(128),
        budget=Budget(steps=2500, batch_size=64, lr=5e-3, eval_every=250),
        target=0.9,
        details=(
            "T = 20; scored on the 5 recall steps; chance is 1/8 "
            "(LSTM 64 does not learn it in 1,000 steps)."
        ),
    ),
    Task(
        name="mqar",
        description="multi-query associative recall: 4 key-value pairs, L=32, vocab 64",
        kind="tag",
        make_data=functools.partial(mqar_data, vocab=64, seq_len=32, pairs=4),
        metric_fn=mqar_metrics,
        primary="token_accuracy",
        io={"input_size": 0, "vocab_size": 64, "output_size": 64},
        model="sequence_tagger",
        model_config={"cell": "deltanet", "hidden_size": 64},
        budget=Budget(steps=300, batch_size=64, lr=3e-3, eval_every=50),
        target=0.95,
        reference=(
            "Arora et al. (Zoology, ICLR 2024): attention solves MQAR at every d_model; "
            "gated convolutions and RNNs need d_model growing with L (paper grid from "
            "L=64, K=4, vocab 8,192)"
        ),
        details=(
            "Smaller than the paper's smallest setting (vocab 64 not 8,192, L=32 not 64) "
            "and queries placed uniformly, not with the power-law gaps. Every key is "
            "queried once and followed by its value, so remembering only the set of "
            "values answers about 0.53 of the queries (the last one always) without any "
            "recall; first_query_accuracy (shortcut level about 0.27) measures recall "
            "proper. Default model: one DeltaNet layer (matrix memory 64 x 64, delta "
            "rule, keys from a width-2 causal convolution), which recalls; an LSTM 128 "
            "(--cell lstm --hidden-size 128 --steps 1500) stays at the shortcut level "
            "(docs/tasks.md)."
        ),
    ),
    Task(
        name="s5",
        description="S5 word problem: running product of 8 permutations of 5 elements",
        kind="tag",
        make_data=functools.partial(s5_data, length=8, encoding="permutation"),
        metric_fn=tag_metrics,
        primary="token_accuracy",
        io={"input_size": 25, "output_size": 120},
        model="sequence_tagger",
        model_config=lstm_config(256),
        budget=Budget(steps=1200, batch_size=64, lr=5e-3, eval_every=200),
        target=0.98,  # measured 0.9992 (seed 0) and 0.9996 (seed 1)
        reference=(
            "Merrill, Petty, Sabharwal (ICML 2024): an RNN solves S5 with one layer; "
            "transformers and S4/Mamba need depth growing with length"
        ),
        details=(
            "Tagging mode, random sequences of length 8 (paper: all lengths 2..20), "
            "20,000 training sequences. Each element is given as its 5x5 permutation "
            "matrix (25 inputs; the paper embeds 120 token ids, s5_data(encoding="
            "'token')): with token ids the same LSTM memorises training pairs and stays "
            "near chance after the first step in this budget (test token accuracy "
            "0.18). One LSTM layer of 256 reaches 0.999 token / 0.997 sequence "
            "accuracy in 1,200 steps (seeds 0 and 1); LSTM 128: 0.961; GRU 256: 0.991."
        ),
    ),
    Task(
        name="s3",
        description="S3 word problem: running product, trained on 16 elements, tested on 64",
        kind="tag",
        make_data=functools.partial(group_data, group="S3", length=16, test_length=64),
        metric_fn=tag_metrics,
        primary="token_accuracy",
        io={"input_size": 6, "output_size": 6},
        model="sequence_tagger",
        model_config=lstm_config(32),
        budget=Budget(steps=1000, batch_size=32, lr=1e-2, eval_every=200),
        target=0.98,  # measured 0.997 (seed 0) and 1.000 (seed 1)
        reference=(
            "M2RNN (Mishra et al. 2026): perfect length generalisation on state tracking "
            "(S3 trained at 128, near-perfect at 512, per a third-party note)"
        ),
        details=(
            "Tagging mode: uniform words of the 6 permutations of 3 points, one-hot, "
            "10,000 training words of 16 elements; valid at 16, test at 64 (4x the "
            "training length). group_data(group=..., test_length=...) gives other groups "
            "(Z<m>: modular counting) and lengths. Scores for LSTM, DeltaNet and M2RNN at "
            "16x the training length: docs/tasks.md (M2RNN and JRT-RNN)."
        ),
    ),
)
