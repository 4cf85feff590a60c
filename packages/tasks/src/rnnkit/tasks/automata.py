"""Deterministic finite automata read off a trained state-regularised RNN.

A :class:`~rnnkit.models.cells.StateRegularized` cell run in hard mode moves between its ``k``
centroids, so a classifier built on it (embedding -> one such cell -> linear head on the last
step, the ``sequence_classifier`` of a Tomita task) is a finite-state machine whose states are
centroids. :func:`extract_dfa` recovers it as in Wang & Niepert (2019):

1. each centroid is accepting when the classifier's head labels it ``1``;
2. the training strings are run in hard mode and every transition ``(centroid before,
   symbol) -> centroid after`` is counted (the start state is the initial zero state);
3. each ``(state, symbol)`` keeps its most frequent successor;
4. the states reachable from the start are kept, and the result is minimised (Moore's
   partition refinement; a missing transition goes to a rejecting sink).

:func:`dfa_accuracy` scores the automaton itself on fresh strings of the grammar, up to twice
the training length. ``rnnkit extract-dfa --run DIR`` does both for a finished Tomita run.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["DFA", "ExtractionReport", "centroid_sequences", "dfa_accuracy", "extract_dfa"]

EXTRACT_HELP = (
    "extract the automaton of a trained state-regularised RNN (srrnn cell) on a Tomita task "
    "and score it on strings up to twice the training length"
)


@dataclass(frozen=True)
class DFA:
    """A deterministic finite automaton over integer symbols.

    Attributes:
        start: the start state.
        transitions: ``(state, symbol) -> state``; a missing entry rejects the string.
        accepting: the accepting states.
    """

    start: int
    transitions: dict[tuple[int, int], int]
    accepting: frozenset[int]
    states: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not self.states:
            found = {self.start, *self.accepting}
            for (q, _), r in self.transitions.items():
                found |= {q, r}
            object.__setattr__(self, "states", frozenset(found))

    @property
    def alphabet(self) -> frozenset[int]:
        """The symbols some transition reads."""
        return frozenset(a for _, a in self.transitions)

    def run(self, symbols: Iterable[int]) -> int | None:
        """The state after ``symbols``, or ``None`` where a transition is missing."""
        q: int | None = self.start
        for a in symbols:
            q = self.transitions.get((q, a)) if q is not None else None
            if q is None:
                return None
        return q

    def accepts(self, symbols: Iterable[int]) -> bool:
        """Whether the automaton ends in an accepting state on ``symbols``."""
        q = self.run(symbols)
        return q is not None and q in self.accepting

    def minimise(self) -> DFA:
        """The equivalent DFA with the fewest states (reachable states only, Moore's
        refinement; a rejecting sink stands in for missing transitions and is dropped)."""
        alphabet = sorted(self.alphabet)
        reachable = {self.start}
        queue = deque([self.start])
        while queue:
            q = queue.popleft()
            for a in alphabet:
                r = self.transitions.get((q, a))
                if r is not None and r not in reachable:
                    reachable.add(r)
                    queue.append(r)
        sink = -1
        states = [*sorted(reachable), sink]

        def step(q: int, a: int) -> int:
            return sink if q == sink else self.transitions.get((q, a), sink)

        block = {q: int(q in self.accepting) for q in states}
        while True:
            signature = {q: (block[q], *(block[step(q, a)] for a in alphabet)) for q in states}
            names: dict[tuple[int, ...], int] = {}
            refined = {q: names.setdefault(signature[q], len(names)) for q in states}
            if len(names) == len(set(block.values())):
                break
            block = refined
        dead = block[sink]
        transitions = {
            (block[q], a): block[step(q, a)]
            for q in states
            if q != sink
            for a in alphabet
            if block[step(q, a)] != dead
        }
        accepting = frozenset(block[q] for q in states if q in self.accepting)
        live = {block[q] for q in states if block[q] != dead} | {block[self.start]}
        return DFA(block[self.start], transitions, accepting, frozenset(live))


def _single_sr_cell(model: nn.Module) -> Any:
    """The one state-regularised cell of ``model`` (embed -> rnn -> head), or a ValueError."""
    from rnnkit.models.cells import StateRegularized

    rnn = getattr(model, "rnn", None)
    cells = list(getattr(rnn, "cells", []))
    if (
        len(cells) != 1
        or not isinstance(cells[0], StateRegularized)
        or getattr(model, "embed", None) is None
        or getattr(model, "pooling", None) != "last"
    ):
        raise ValueError(
            "automaton extraction needs a token classifier with one state-regularised cell: "
            "embedding -> one unidirectional srrnn layer -> linear head on the last step "
            "(e.g. rnnkit train --task tomita4 --cell srrnn)"
        )
    return cells[0]


@torch.no_grad()
def centroid_sequences(
    model: nn.Module, strings: Sequence[Sequence[int]], *, hard: bool = False
) -> list[list[int]]:
    """For each string, the index of the most similar centroid after every symbol.

    The paper's extraction reads the argmax of the assignment while the network runs as
    trained (``hard=False``); ``hard=True`` runs the cell in hard mode instead. Strings of
    equal length run as one batch; the cell's ``hard`` flag is restored afterwards.
    """
    cell = _single_sr_cell(model)
    was_hard, cell.hard = cell.hard, hard
    try:
        out: list[list[int]] = [[] for _ in strings]
        by_length: dict[int, list[int]] = defaultdict(list)
        for i, s in enumerate(strings):
            by_length[len(s)].append(i)
        device = cell.centroids.device
        for length, rows in by_length.items():
            if length == 0:
                continue
            tokens = torch.tensor([list(strings[i]) for i in rows], device=device)
            embed: nn.Module = model.embed  # type: ignore[assignment]
            x = embed(tokens)
            state = cell.init_state(len(rows))
            picks = []
            for t in range(length):
                _, state = cell.step(x[:, t], state)
                picks.append(cell.assignment(state.h).argmax(-1))
            chosen = torch.stack(picks, 1).tolist()
            for row, states in zip(rows, chosen, strict=True):
                out[row] = states
        return out
    finally:
        cell.hard = was_hard


@torch.no_grad()
def extract_dfa(model: nn.Module, strings: Sequence[Sequence[int]], *, hard: bool = False) -> DFA:
    """The automaton of a classifier built on one :class:`StateRegularized` cell.

    Args:
        model: embedding -> one unidirectional ``srrnn`` layer -> linear head on the last step
            (``pooling="last"``); class ``1`` means accepted.
        strings: token sequences whose transitions are counted, exactly as the network reads
            them (a task's left padding included), typically the training inputs.
        hard: count the transitions of the cell run in hard mode rather than the argmax of
            its assignments in a normal run (see :func:`centroid_sequences`).

    Returns:
        The minimised DFA; its states are renumbered, the start state is the zero initial
        state and the others are centroids.
    """
    cell = _single_sr_cell(model)
    k = cell.centroids.shape[0]
    start = k  # the initial zero state is not a centroid
    head: nn.Module = model.head  # type: ignore[assignment]
    labels = head(cell.centroids).argmax(-1).tolist()
    accepting = frozenset(i for i in range(k) if labels[i] == 1)
    counts: dict[tuple[int, int], Counter[int]] = defaultdict(Counter)
    for s, states in zip(strings, centroid_sequences(model, strings, hard=hard), strict=True):
        before = start
        for symbol, after in zip(s, states, strict=True):
            counts[(before, int(symbol))][after] += 1
            before = after
    transitions = {key: c.most_common(1)[0][0] for key, c in counts.items()}
    return DFA(start, transitions, accepting).minimise()


@dataclass(frozen=True)
class ExtractionReport:
    """What ``rnnkit extract-dfa`` prints: sizes and accuracies on held-out strings."""

    grammar: int
    states: int
    dfa_accuracy: float
    network_hard_accuracy: float
    network_soft_accuracy: float
    max_length: int
    strings: int


def _held_out_strings(
    grammar: int, max_length: int, count: int, seed: int
) -> tuple[list[list[int]], list[int]]:
    """Balanced strings of every length ``1..max_length`` in task tokens (``1`` = '0',
    ``2`` = '1', end marker ``3``) with their labels."""
    from rnnkit.tasks.formal import TOMITA, _sample_string

    rng = random.Random(10_007 * grammar + seed)
    strings: list[list[int]] = []
    labels: list[int] = []
    while len(strings) < count:
        length = rng.randint(1, max_length)
        positive = len(strings) % 2 == 0
        s = _sample_string(TOMITA[grammar], length, positive, rng)
        if s is None:
            continue
        strings.append([1 + int(c) for c in s] + [3])
        labels.append(int(positive))
    return strings, labels


def dfa_accuracy(dfa: DFA, strings: Sequence[Sequence[int]], labels: Sequence[int]) -> float:
    """The fraction of ``strings`` the automaton classifies as ``labels`` (1 = accept)."""
    right = sum(int(dfa.accepts(s)) == y for s, y in zip(strings, labels, strict=True))
    return right / len(strings)


@torch.no_grad()
def _network_accuracy(model: nn.Module, rows: Tensor, labels: list[int]) -> float:
    logits = model(rows.to(next(model.parameters()).device))
    return int((logits.argmax(-1).cpu() == torch.tensor(labels)).sum()) / len(labels)


def extraction_report(
    model: nn.Module, train_inputs: Tensor, grammar: int, *, count: int = 2000
) -> tuple[DFA, ExtractionReport]:
    """Extract the DFA from the training inputs and score it (and the network, hard and soft)
    on ``count`` fresh strings of lengths up to twice the longest training string.

    ``train_inputs: (N, T)`` are the task's left-padded token rows, read as the network read
    them in training: the pad token is one more symbol of the automaton. The held-out strings
    are encoded the same way (left-padded to the longest), and the automaton and the network
    get the same rows.
    """
    from rnnkit.tasks.formal import encode_left_padded

    cell = _single_sr_cell(model)
    dfa = extract_dfa(model, train_inputs.tolist())
    longest = max(int((row != 0).sum()) for row in train_inputs)
    max_length = 2 * (longest - 1)  # string symbols, without the end marker
    strings, labels = _held_out_strings(grammar, max_length, count, seed=1)
    rows = encode_left_padded(strings)
    was_hard = cell.hard
    try:
        cell.hard = True
        hard = _network_accuracy(model, rows, labels)
        cell.hard = False
        soft = _network_accuracy(model, rows, labels)
    finally:
        cell.hard = was_hard
    report = ExtractionReport(
        grammar=grammar,
        states=len(dfa.states),
        dfa_accuracy=dfa_accuracy(dfa, rows.tolist(), labels),
        network_hard_accuracy=hard,
        network_soft_accuracy=soft,
        max_length=max_length,
        strings=count,
    )
    return dfa, report


def configure_extract(parser: argparse.ArgumentParser) -> None:
    """``rnnkit extract-dfa --run DIR [--strings N] [--json]``."""
    parser.add_argument("--run", required=True, help="a finished run of a tomita task")
    parser.add_argument(
        "--strings", type=int, default=2000, help="held-out strings to score on (default 2000)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


def run_extract(args: argparse.Namespace) -> int:
    """Run ``rnnkit extract-dfa``."""
    import sys

    from rnnkit.tasks.reuse import load_run

    loaded = load_run(args.run)
    grammar = loaded.config.get("task_info", {}).get("grammar")
    if not loaded.task.name.startswith("tomita") or grammar is None:
        print(
            f"rnnkit extract-dfa: {args.run} trained task {loaded.task.name!r}; automaton "
            "extraction scores tomita1 .. tomita7 runs",
            file=sys.stderr,
        )
        return 2
    try:
        seed = int(loaded.config.get("seed", 0))
        train = loaded.task.data(seed).train.inputs
        dfa, report = extraction_report(loaded.model, train, int(grammar), count=args.strings)
    except ValueError as e:
        print(f"rnnkit extract-dfa: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({**report.__dict__, "transitions": _table(dfa)}, indent=1))
        return 0
    print(
        f"tomita{report.grammar}: {report.states} states; on {report.strings} strings of "
        f"lengths 1-{report.max_length}: automaton {report.dfa_accuracy:.4f}, network hard "
        f"{report.network_hard_accuracy:.4f}, soft {report.network_soft_accuracy:.4f}"
    )
    names = {0: "pad", 1: "0", 2: "1", 3: "end"}
    for (q, a), r in sorted(dfa.transitions.items()):
        mark = "*" if r in dfa.accepting else " "
        print(f"  {q}{'<' if q == dfa.start else ' '} --{names.get(a, a)}--> {r}{mark}")
    return 0


def _table(dfa: DFA) -> dict[str, Any]:
    return {
        "start": dfa.start,
        "accepting": sorted(dfa.accepting),
        "edges": [[q, a, r] for (q, a), r in sorted(dfa.transitions.items())],
    }
