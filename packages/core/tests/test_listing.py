"""One pattern semantics and one table printer for every listing; the CLI and the API agree."""

from __future__ import annotations

import pytest

from rnnkit.core import list_cells
from rnnkit.core.cli import main
from rnnkit.core.listing import format_table, match_names, matches
from rnnkit.core.plugins import get_host
from rnnkit.core.testing.suite import registered_cases

NAMES = ["gru", "lstm", "mingru", "paragru", "slstm", "GRU_big"]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (None, NAMES),
        ("", NAMES),
        # no glob characters: the names containing the pattern, any case
        ("gru", ["gru", "mingru", "paragru", "GRU_big"]),
        ("GRU", ["gru", "mingru", "paragru", "GRU_big"]),
        ("stm", ["lstm", "slstm"]),
        # glob characters: fnmatch over the whole name, any case
        ("gru*", ["gru", "GRU_big"]),
        ("*lstm", ["lstm", "slstm"]),
        ("?lstm", ["slstm"]),
        ("[lm]*", ["lstm", "mingru"]),
        ("lstm?", []),
        ("nothing", []),
    ],
)
def test_pattern_semantics(pattern: str | None, expected: list[str]) -> None:
    assert match_names(NAMES, pattern) == expected
    assert [n for n in NAMES if matches(n, pattern)] == expected


def test_format_table_aligns_columns_and_strips_trailing_blanks() -> None:
    text = format_table([["a", 1, ""], ["long name", 22, "x"]], ["name", "n", "note"])
    assert text.splitlines() == [
        "name       n   note",
        "---------  --  ----",
        "a          1",
        "long name  22  x",
    ]
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        format_table([["a", "b"]], ["x", "y", "z"])


def _cli_names(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    assert main(list(argv)) == 0
    out = capsys.readouterr().out
    return [line.split()[0] for line in out.splitlines()[2:] if line.strip()]


@pytest.mark.parametrize("pattern", ["gru", "LSTM", "*lstm", "e*", "[gl]*", "nothing"])
def test_cli_and_api_select_the_same_cells(
    pattern: str, capsys: pytest.CaptureFixture[str]
) -> None:
    names = list_cells(pattern)
    assert _cli_names(capsys, "list", "cells", pattern) == names
    assert sorted({c.name for c in registered_cases(pattern)}) == names
    assert get_host().cells.names(pattern) == names


def test_a_bare_word_selects_every_cell_containing_it() -> None:
    assert {"lstm", "slstm"} <= set(list_cells("lstm"))
    assert "gru" not in list_cells("lstm")
    assert list_cells("lstm*") == ["lstm"]


def test_cli_backends_pattern_uses_the_same_semantics(capsys: pytest.CaptureFixture[str]) -> None:
    backends = [e.obj.backend for e in get_host().kernels]  # one row per kernel
    for pattern in ("REF", "ref*"):
        names = _cli_names(capsys, "list", "backends", pattern)
        assert names == match_names(backends, pattern)
        assert "reference" in names
    assert _cli_names(capsys, "list", "backends", "ref*") == ["reference"]
