"""Formal languages: the Tomita grammars 1-7 and Dyck-n (balanced brackets).

Tomita strings are sampled exactly uniformly among the accepted (or rejected) strings of a
length with a DFA and a counting table, half positives and half negatives; the model reads the
string (left-padded) and classifies it at the last step. Splits are disjoint by length: the
valid and test strings are longer than the training strings (generalisation to length).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from rnnkit.tasks import metrics as M
from rnnkit.tasks._util import classify_metrics, lstm_config
from rnnkit.tasks.base import Budget, Metrics, Split, Task, TaskData

# DFA over {0, 1}: (transitions[state] = (next on '0', next on '1'), accepting states).
# State 0 is the start state.
_DFA = tuple[tuple[tuple[int, int], ...], frozenset[int]]

TOMITA: dict[int, _DFA] = {
    # 1*
    1: (((1, 0), (1, 1)), frozenset({0})),
    # (10)*
    2: (((2, 1), (0, 2), (2, 2)), frozenset({0})),
    # no odd block of 1s immediately followed by an odd block of 0s.
    # 0: free, 1: odd 1s, 2: even 1s, 3: odd 0s after odd 1s, 4: even 0s after odd 1s, 5: dead
    3: (((0, 1), (3, 2), (0, 1), (4, 5), (3, 1), (5, 5)), frozenset({0, 1, 2, 4})),
    # no 000 (state = trailing zeros; 3 dead)
    4: (((1, 0), (2, 0), (3, 0), (3, 3)), frozenset({0, 1, 2})),
    # even number of 0s and even number of 1s (state = 2 * (#0 mod 2) + (#1 mod 2))
    5: (((2, 1), (3, 0), (0, 3), (1, 2)), frozenset({0})),
    # (#0 - #1) mod 3 == 0
    6: (((1, 2), (2, 0), (0, 1)), frozenset({0})),
    # 0*1*0*1*
    7: (((0, 1), (2, 1), (2, 3), (4, 3), (4, 4)), frozenset({0, 1, 2, 3})),
}

TOMITA_DESCRIPTIONS: dict[int, str] = {
    1: "1*",
    2: "(10)*",
    3: "no odd block of 1s directly followed by an odd block of 0s",
    4: "no substring 000",
    5: "even number of 0s and of 1s",
    6: "(#0 - #1) divisible by 3",
    7: "0*1*0*1*",
}


def tomita_accepts(grammar: int, s: str) -> bool:
    """Whether the binary string ``s`` is in Tomita language ``grammar`` (1..7)."""
    trans, accept = TOMITA[grammar]
    q = 0
    for ch in s:
        q = trans[q][int(ch)]
    return q in accept


def _counts(dfa: _DFA, length: int, positive: bool) -> list[list[int]]:
    """``counts[r][q]``: strings of length ``r`` leading from ``q`` to (non-)acceptance."""
    trans, accept = dfa
    nq = len(trans)
    counts = [[int((q in accept) == positive) for q in range(nq)]]
    for _ in range(length):
        prev = counts[-1]
        counts.append([prev[trans[q][0]] + prev[trans[q][1]] for q in range(nq)])
    return counts


def _sample_string(dfa: _DFA, length: int, positive: bool, rng: random.Random) -> str | None:
    """A uniform random string of ``length`` that the DFA accepts (or rejects), or None."""
    trans, _ = dfa
    counts = _counts(dfa, length, positive)
    if counts[length][0] == 0:
        return None
    q, out = 0, []
    for r in range(length, 0, -1):
        c0, c1 = counts[r - 1][trans[q][0]], counts[r - 1][trans[q][1]]
        bit = 1 if rng.random() * (c0 + c1) >= c0 else 0
        out.append(str(bit))
        q = trans[q][bit]
    return "".join(out)


def encode_left_padded(strings: Sequence[Sequence[int]], pad: int = 0) -> Tensor:
    """Token lists -> ``(N, max_len)`` int64, left-padded with ``pad``."""
    width = max((len(s) for s in strings), default=0)
    x = torch.full((len(strings), width), pad, dtype=torch.long)
    for i, s in enumerate(strings):
        if s:
            x[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
    return x


def tomita_data(
    seed: int,
    *,
    grammar: int,
    lengths: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] = (
        (1, 16),
        (17, 22),
        (23, 30),
    ),
    sizes: tuple[int, int, int] = (4000, 600, 600),
) -> TaskData:
    """Balanced accept/reject data for Tomita ``grammar``; splits by string length.

    Tokens: 0 pad, 1 = '0', 2 = '1', 3 = end marker (appended so that every string, even
    the empty one, ends on a real token). Inputs ``(N, T)`` int64 left-padded; targets
    ``(N,)`` (1 = accepted).
    """
    dfa = TOMITA[grammar]
    rng = random.Random(seed * 7919 + grammar)
    splits = []
    for (lo, hi), size in zip(lengths, sizes, strict=True):
        strings: list[list[int]] = []
        labels: list[int] = []
        while len(strings) < size:
            length = rng.randint(lo, hi)
            positive = len(strings) % 2 == 0
            s = _sample_string(dfa, length, positive, rng)
            if s is None:
                continue
            strings.append([1 + int(c) for c in s] + [3])
            labels.append(int(positive))
        splits.append(Split(encode_left_padded(strings), torch.tensor(labels)))
    return TaskData(splits[0], splits[1], splits[2], info={"grammar": grammar, "vocab_size": 4})


# --- Dyck-n ------------------------------------------------------------------------------------


def _dyck_string(n_types: int, max_len: int, rng: random.Random) -> list[int] | None:
    """A string of the PCFG S -> (S) | [S] | SS | ε (probabilities 1/2, 1/4, 1/4).

    Bracket ``i`` opens with token ``i`` and closes with ``n_types + i``. Returns None when the
    string would exceed ``max_len``.
    """
    out: list[int] = []
    stack: list[int] = [-1]  # -1: an S to expand; otherwise a closing token to emit
    pending = 0  # closing tokens on the stack
    while stack:
        item = stack.pop()
        if item >= 0:
            out.append(item)
            pending -= 1
            continue
        u = rng.random()
        if u < 0.5:
            b = rng.randrange(n_types)
            stack.extend([n_types + b, -1])
            pending += 1
            out.append(b)
            if len(out) + pending > max_len:
                return None
        elif u < 0.75:
            stack.extend([-1, -1])
    return out


def dyck_next_sets(tokens: Sequence[int], n_types: int) -> list[list[float]]:
    """The k-hot set of legal next symbols after each prefix ``tokens[:t+1]``.

    Columns: ``n_types`` opens, ``n_types`` closes, end-of-string. Any open is always legal;
    the close matching the top of the stack is legal when the stack is not empty; end is
    legal when it is empty.
    """
    stack: list[int] = []
    sets = []
    for tok in tokens:
        if tok < n_types:
            stack.append(tok)
        elif stack and stack[-1] == tok - n_types:
            stack.pop()
        else:
            raise ValueError(f"not a Dyck-{n_types} prefix: {list(tokens)}")
        row = [1.0] * n_types + [0.0] * (n_types + 1)
        if stack:
            row[n_types + stack[-1]] = 1.0
        else:
            row[2 * n_types] = 1.0
        sets.append(row)
    return sets


def dyck_data(
    seed: int,
    *,
    n_types: int,
    lengths: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] = (
        (2, 24),
        (26, 40),
        (26, 40),
    ),
    sizes: tuple[int, int, int] = (4000, 500, 500),
) -> TaskData:
    """Dyck-``n_types``: predict the set of legal next symbols at every step (Suzgun et al.).

    Inputs ``(N, T)`` int64 (tokens ``1..2 n_types``, 0 = right padding); targets
    ``(N, T, 2 n_types + 1)`` k-hot floats, ``-1`` at padding. Strings come from a PCFG and
    are filtered by length; valid and test share the longer length range but not strings
    (training strings may repeat: short ones are frequent).
    """
    rng = random.Random(seed * 104729 + n_types)
    k = 2 * n_types + 1
    seen: set[tuple[int, ...]] = set()
    splits = []
    splits_strings: list[list[list[int]]] = []
    for (lo, hi), size in zip(lengths, sizes, strict=True):
        strings: list[list[int]] = []
        splits_strings.append(strings)
        tries = 0
        while len(strings) < size:
            tries += 1
            if tries > 2000 * size:
                raise RuntimeError("dyck: could not sample enough strings of that length")
            s = _dyck_string(n_types, hi, rng)
            if s is None or len(s) < lo:
                continue
            if strings is not splits_strings[0]:  # held-out strings are all distinct
                if tuple(s) in seen:
                    continue
                seen.add(tuple(s))
            strings.append(s)
        width = max(len(s) for s in strings)
        x = torch.zeros(size, width, dtype=torch.long)
        y = torch.full((size, width, k), -1.0)
        for i, s in enumerate(strings):
            x[i, : len(s)] = torch.tensor(s) + 1
            y[i, : len(s)] = torch.tensor(dyck_next_sets(s, n_types))
        splits.append(Split(x, y))
    return TaskData(
        splits[0], splits[1], splits[2], info={"n_types": n_types, "vocab_size": 2 * n_types + 1}
    )


def multilabel_metrics(
    outputs: Tensor, targets: Tensor, inputs: Tensor, info: Mapping[str, Any]
) -> Metrics:
    """``step_accuracy`` and ``sequence_accuracy`` of k-hot next-symbol sets."""
    step, seq = M.multilabel_accuracy(outputs, targets)
    return {"step_accuracy": step, "sequence_accuracy": seq}


# --- palindromes -------------------------------------------------------------------------------


def _palindrome_string(length: int, positive: bool, rng: random.Random) -> list[int]:
    """A binary palindrome of ``length`` (uniform), or a non-palindrome (``length >= 2``).

    Half of the negatives are uniform non-palindromes; the other half are palindromes with one
    bit of the first half flipped (they differ from their reverse in exactly one pair).
    """
    half = [rng.randrange(2) for _ in range(length // 2)]
    middle = [rng.randrange(2)] if length % 2 else []
    pal = half + middle + half[::-1]
    if positive:
        return pal
    if rng.random() < 0.5:
        while True:
            s = [rng.randrange(2) for _ in range(length)]
            if s != s[::-1]:
                return s
    pal[rng.randrange(length // 2)] ^= 1
    return pal


def palindrome_data(
    seed: int,
    *,
    lengths: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] = (
        (2, 16),
        (17, 22),
        (23, 30),
    ),
    sizes: tuple[int, int, int] = (4000, 600, 600),
) -> TaskData:
    """Palindromes over ``{0, 1}``: accept iff the string reads the same backwards.

    Balanced positives and negatives (see :func:`_palindrome_string`), encoded like the Tomita
    data (0 pad, 1 = '0', 2 = '1', 3 end marker; left-padded); splits by length. Inputs
    ``(N, T)`` int64, targets ``(N,)`` (1 = palindrome).
    """
    rng = random.Random(seed * 6151 + 97)
    splits = []
    for (lo, hi), size in zip(lengths, sizes, strict=True):
        strings: list[list[int]] = []
        labels: list[int] = []
        while len(strings) < size:
            positive = len(strings) % 2 == 0
            s = _palindrome_string(rng.randint(lo, hi), positive, rng)
            strings.append([1 + b for b in s] + [3])
            labels.append(int(positive))
        splits.append(Split(encode_left_padded(strings), torch.tensor(labels)))
    return TaskData(splits[0], splits[1], splits[2], info={"vocab_size": 4})


# --- the tasks this module declares (collected by rnnkit.tasks.registry) ----------------


def _tomita_task(g: int) -> Task:
    return Task(
        name=f"tomita{g}",
        description=f"Tomita grammar {g}: {TOMITA_DESCRIPTIONS[g]}",
        kind="classify",
        make_data=functools.partial(tomita_data, grammar=g),
        metric_fn=classify_metrics,
        primary="accuracy",
        io={"input_size": 0, "vocab_size": 4, "output_size": 2},
        model_config=lstm_config(32),
        budget=Budget(steps=600, batch_size=64, lr=5e-3, eval_every=100),
        target=0.9,
        reference="Wang & Niepert (SR-RNN, ICML 2019): tables not retrieved",
        details=(
            "Balanced, uniformly sampled strings; train lengths 1-16, valid 17-22, "
            "test 23-30 (generalisation to longer strings)."
        ),
    )


def _dyck_task(n: int) -> Task:
    return Task(
        name=f"dyck{n}",
        description=f"Dyck-{n}: predict the set of legal next brackets",
        kind="multilabel",
        make_data=functools.partial(dyck_data, n_types=n),
        metric_fn=multilabel_metrics,
        primary="sequence_accuracy",
        io={"input_size": 0, "vocab_size": 2 * n + 1, "output_size": 2 * n + 1},
        model="sequence_tagger",
        # Dyck-2 generalises to longer strings only with a wider LSTM trained longer
        # (LSTM 64, 800 x 32: 0.53; LSTM 128, 2,500 x 64: 0.72; see docs/tasks.md)
        model_config=lstm_config(32) if n == 1 else lstm_config(128),
        budget=(
            Budget(steps=800, batch_size=32, lr=5e-3, eval_every=100)
            if n == 1
            else Budget(steps=2500, batch_size=64, lr=5e-3, eval_every=250)
        ),
        target=0.9 if n == 1 else 0.55,  # dyck2: 0.72 (seed 0), 0.62 (seed 1)
        reference=(
            "Suzgun et al. (2019) [recalled, unverified]: LSTMs learn Dyck-1 "
            "and fail to generalise on Dyck-2"
        ),
        details="Train lengths 2-24, valid/test 26-40 (paper: <=50 and 52-100).",
    )


TASKS: tuple[Task, ...] = (
    Task(
        name="palindrome",
        description="binary palindromes: accept iff the string equals its reverse",
        kind="classify",
        make_data=palindrome_data,
        metric_fn=classify_metrics,
        primary="accuracy",
        io={"input_size": 0, "vocab_size": 4, "output_size": 2},
        model_config=lstm_config(64),
        budget=Budget(steps=800, batch_size=64, lr=5e-3, eval_every=100),
        target=None,
        reference="Wang & Niepert (SR-RNN, ICML 2019): palindrome details not retrieved",
        details=(
            "Balanced; half the negatives are palindromes with one bit flipped. Train "
            "lengths 2-16, valid 17-22, test 23-30 (generalisation to length)."
        ),
    ),
    *(_tomita_task(g) for g in range(1, 8)),
    *(_dyck_task(n) for n in (1, 2)),
)
