"""Listings across the installed packages: the CLI and every ``list_*`` API select alike, and
``rnnkit list backends --cell lstm`` ranks the kernels rnnkit-kernels registers."""

from __future__ import annotations

import pytest

from rnnkit.core import list_cells
from rnnkit.core.cli import main
from rnnkit.core.dispatch import select
from rnnkit.core.kernel import Priority
from rnnkit.core.ranking import probe_call
from rnnkit.models import list_models
from rnnkit.tasks import list_tasks


def _names(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    assert main(list(argv)) == 0
    out = capsys.readouterr().out
    return [line.split()[0] for line in out.splitlines()[2:] if line.strip()]


@pytest.mark.parametrize("pattern", ["gru", "lstm", "*lstm", "TOMITA", "tomita*", "seq", "*_lm"])
def test_cli_and_api_agree(pattern: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _names(capsys, "list", "cells", pattern) == list_cells(pattern)
    assert _names(capsys, "list", "models", pattern) == list_models(pattern)
    assert _names(capsys, "list", "tasks", pattern) == list_tasks(pattern)


def test_a_bare_word_is_a_substring_everywhere() -> None:
    assert list_cells("gru") == ["gru", "mingru", "paragru"]
    assert list_tasks("charlm") == ["charlm", "charlm_shakespeare"]
    assert list_models("sequence") == ["sequence_classifier", "sequence_tagger"]
    assert list_tasks("tomita*") == [f"tomita{g}" for g in range(1, 8)]


def test_lstm_ranking_shows_the_kernels_of_rnnkit_kernels(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["list", "backends", "--cell", "lstm", "--batch", "2", "--time", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split(None, 5) for line in lines[3:-1]}
    assert {"fused", "fused_cpp", "torch", "triton", "reference"} <= set(rows)
    assert all(r[1] in ("lstm", "gated", "*") for r in rows.values())
    priorities = [int(r[2]) for r in rows.values()]
    assert priorities == sorted(priorities, reverse=True)
    assert all(r[3] == Priority(int(r[2])).name for r in rows.values())  # named tiers only
    picked = [name for name, r in rows.items() if r[4] == "picked"]
    auto = select(probe_call("lstm", batch=2, time=5), "auto").backend
    assert picked == [auto] and lines[-1] == f'backend="auto" picks {auto}'
    # torch's native op is dense: with heads it says why it cannot run
    assert main(["list", "backends", "torch", "--cell", "lstm", "--heads", "2"]) == 0
    out = capsys.readouterr().out
    assert "no: heads=2 is not supported" in out
