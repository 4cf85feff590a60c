"""Automaton extraction from a state-regularised RNN: the DFA class on hand-made automata,
and an end-to-end run on Tomita 4 whose extracted automaton classifies strings up to twice
the training length."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rnnkit.core.cli import main
from rnnkit.tasks import TrainConfig, Trainer
from rnnkit.tasks.automata import DFA, dfa_accuracy, extract_dfa
from rnnkit.tasks.formal import tomita_accepts


def _even_ones(redundant: bool) -> DFA:
    """Strings over {0, 1} with an even number of 1s; ``redundant`` adds a copy of the even
    state, an unreachable state and a dead state."""
    t = {(0, 0): 0, (0, 1): 1, (1, 0): 1, (1, 1): 0}
    if redundant:
        t = {(0, 0): 2, (0, 1): 1, (1, 0): 1, (1, 1): 2, (2, 0): 0, (2, 1): 1}
        t |= {(7, 0): 0, (7, 1): 7, (8, 0): 8, (8, 1): 8}  # 7 unreachable, 8 dead
    return DFA(0, t, frozenset({0, 2}) if redundant else frozenset({0}))


@pytest.mark.parametrize("redundant", [False, True])
def test_minimise_keeps_the_language_and_the_fewest_states(redundant: bool) -> None:
    dfa = _even_ones(redundant)
    small = dfa.minimise()
    assert len(small.states) == 2
    for n in range(7):
        for bits in range(2**n):
            s = [(bits >> i) & 1 for i in range(n)]
            want = sum(s) % 2 == 0
            assert dfa.accepts(s) == small.accepts(s) == want


def test_missing_transitions_reject() -> None:
    dfa = DFA(0, {(0, 1): 1}, frozenset({1}))
    assert dfa.accepts([1]) and not dfa.accepts([0]) and not dfa.accepts([1, 1])
    assert dfa.run([1, 1]) is None
    assert dfa_accuracy(dfa, [[1], [0]], [1, 0]) == 1.0


def test_extraction_needs_one_state_regularised_cell() -> None:
    from rnnkit.models import create_model

    lstm = create_model("sequence_classifier", input_size=0, vocab_size=4, output_size=2)
    with pytest.raises(ValueError, match="one state-regularised cell"):
        extract_dfa(lstm, [[1, 2, 3]])


@pytest.mark.slow
def test_tomita4_automaton_classifies_longer_strings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A straight-through SR-GRU trained on Tomita 4 (train lengths 1-16) yields an automaton
    that classifies fresh strings of lengths 1-32 like the grammar (the acceptance test is
    the grammar's own, ``tomita_accepts``, not the network)."""
    cfg = TrainConfig(
        task="tomita4",
        cell="srrnn",
        model_config={"straight_through": True},  # the task's budget: 600 steps
        out=str(tmp_path / "run"),
        verbose=False,
        plot=False,
    )
    Trainer(cfg).run()
    assert main(["extract-dfa", "--run", str(tmp_path / "run"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["max_length"] == 32
    assert report["dfa_accuracy"] >= 0.95
    assert abs(report["dfa_accuracy"] - report["network_hard_accuracy"]) <= 0.01
    assert 3 <= report["states"] <= 16
    # the automaton read back from the table agrees with the grammar on short strings
    table = report["transitions"]
    dfa = DFA(
        table["start"],
        {(q, a): r for q, a, r in table["edges"]},
        frozenset(table["accepting"]),
    )
    wrong = [
        s
        for n in range(1, 9)
        for bits in range(2**n)
        for s in ["".join("1" if (bits >> i) & 1 else "0" for i in range(n))]
        if dfa.accepts([0, *(1 + int(c) for c in s), 3]) != tomita_accepts(4, s)
    ]
    assert len(wrong) <= 5, wrong[:5]


def test_extract_refuses_other_tasks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = TrainConfig(
        task="parity", steps=2, eval_every=2, out=str(tmp_path / "p"), verbose=False, plot=False
    )
    Trainer(cfg).run()
    assert main(["extract-dfa", "--run", str(tmp_path / "p")]) == 2
    assert "tomita1 .. tomita7" in capsys.readouterr().err
