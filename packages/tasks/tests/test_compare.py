"""``rnnkit compare`` as a research tool (issue 17, item 3): seeds with mean and standard
deviation, a failing model reported while the others finish, finished runs reused, and a
``report.md`` whose links resolve."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from rnnkit.core.cli import main
from rnnkit.tasks.compare import parse_seeds

TINY = ["--steps", "6", "--eval-every", "3", "--batch-size", "16", "--hidden-size", "8"]
# ssm_classifier takes state_size; the LSTM cell of sequence_classifier does not: that model
# fails to build, on every seed, and the comparison must go on without it
ARGS = ["compare", "--models", "lstm,ssm_classifier", "--seeds", "0,1", *TINY]
ARGS += ["--set", "state_size=4", "--no-progress"]


def _links(report: Path) -> list[str]:
    return re.findall(r"\]\(([^)]+)\)", report.read_text())


def test_compare_seeds_failure_reuse_and_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*ARGS, "--out", str(tmp_path)]) == 1  # one model failed
    text = capsys.readouterr().out
    assert "status" in text and "failed: UnknownKeywordError" in text and "state_size" in text
    data = json.loads((tmp_path / "compare.json").read_text())
    lstm, ssm = data["rows"]
    assert lstm["entry"] == "lstm" and lstm["seeds_ok"] == 0
    assert lstm["status"].startswith("failed: UnknownKeywordError") and "\n" not in lstm["status"]
    assert not (tmp_path / "lstm").exists()
    assert ssm["status"] == "ok" and ssm["seeds_ok"] == 2
    # mean and sample standard deviation against the runs' own final.json
    finals = [
        json.loads((tmp_path / "ssm_classifier" / f"seed-{s}" / "final.json").read_text())
        for s in (0, 1)
    ]
    assert [f["config"]["seed"] for f in finals] == [0, 1]
    tests = [f["test"]["accuracy"] for f in finals]
    valids = [f["valid"]["accuracy"] for f in finals]
    assert ssm["test_mean"] == pytest.approx(statistics.fmean(tests), abs=1e-12)
    assert ssm["test_std"] == pytest.approx(statistics.stdev(tests), abs=1e-12)
    assert ssm["valid_mean"] == pytest.approx(statistics.fmean(valids), abs=1e-12)
    assert ssm["valid_std"] == pytest.approx(statistics.stdev(valids), abs=1e-12)
    assert f"{statistics.fmean(tests):.4f} ± {statistics.stdev(tests):.4f}" in text
    # compare.json carries the record too
    assert data["record"]["versions"]["rnnkit-tasks"] and data["seeds"] == [0, 1]
    # the report: table with the status column, plot, a link to each finished run's report
    report = tmp_path / "report.md"
    body = report.read_text()
    assert "| model | seeds |" in body and "| status |" in body
    assert "failed: UnknownKeywordError" in body
    links = _links(report)
    assert "compare.png" in links and "ssm_classifier/seed-1/report.md" in links
    for link in links:
        assert not Path(link).is_absolute() and (tmp_path / link).is_file(), link
    for f in finals:
        run_report = Path(f["out"]) / "report.md"
        for link in _links(run_report):
            assert (run_report.parent / link).is_file(), link

    # a second call reuses the finished runs: nothing retrained, nothing rewritten
    stamps = {
        p: p.stat().st_mtime_ns for p in (tmp_path / "ssm_classifier").rglob("*") if p.is_file()
    }
    assert main([*ARGS, "--out", str(tmp_path)]) == 1
    messages = capsys.readouterr().err  # progress messages: logged to stderr, not on stdout
    assert messages.count("reused the finished run") == 2 and "rnnkit train:" not in messages
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    again = json.loads((tmp_path / "compare.json").read_text())
    assert [r["reused"] for r in again["rows"][1]["runs"]] == [True, True]
    assert again["rows"][1]["test_mean"] == ssm["test_mean"]


def test_compare_refuses_to_reuse_a_run_with_other_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["compare", "--models", "gru", *TINY, "--no-progress", "--no-plot"]
    assert main([*base, "--out", str(tmp_path)]) == 0
    capsys.readouterr()
    assert main([*base, "--lr", "0.01", "--out", str(tmp_path)]) == 1
    text = capsys.readouterr().out
    assert "holds a finished run with other arguments (lr)" in text
    assert "| gru" not in text  # a plain-text table on stdout; Markdown is for report.md


def test_compare_argument_errors_create_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for bad in (
        ["--backend", "nonsense"],
        ["--steps", "0"],
        ["--seeds", "0,x"],
        ["--seeds", "1,1"],
    ):
        assert main(["compare", "--models", "lstm", *TINY, *bad]) == 2, bad
    err = capsys.readouterr().err
    assert "unknown backend 'nonsense'" in err and "--steps" in err and "--seeds" in err
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "bad", [["--hidden-size", "0"], ["--hidden-size", "-1"], ["--layers", "0"]], ids=" ".join
)
def test_compare_refuses_bad_widths_before_any_run(
    bad: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--hidden-size`` and ``--layers`` out of range are one error naming the option, before
    any folder: not one failed run per model and seed (a folder of failures, exit status 1)."""
    out = tmp_path / "cmp"
    args = ["compare", "--models", "lstm,gru", *TINY, *bad, "--no-progress", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"rnnkit compare: error: {bad[0]} must be a positive integer, got {bad[1]}" in err
    assert not out.exists()


@pytest.mark.parametrize("bad", [["--seed", str(2**40)], ["--seeds", f"0,-{2**40}"]])
def test_compare_refuses_out_of_range_seeds_before_any_run(
    bad: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A seed whose data-order generator seed would overflow 64 bits is one error naming the
    option, before any folder (it was torch's "Overflow when unpacking long long" per run)."""
    out = tmp_path / "cmp"
    args = ["compare", "--models", "lstm", *TINY, *bad, "--no-progress", "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"error: {bad[0]} must be an integer of absolute value below 2**40" in err
    assert not out.exists()


@pytest.mark.parametrize("bad", [["--seed", str(2**40)], ["--seeds", f"0,-{2**40}"]])
def test_compare_print_config_refuses_out_of_range_seeds(
    bad: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``--print-config`` runs nothing, and still refuses the seed by its option's name."""
    assert main(["compare", "--models", "lstm", *TINY, *bad, "--print-config"]) == 2
    out, err = capsys.readouterr()
    assert f"error: {bad[0]} must be an integer of absolute value below 2**40" in err
    assert out == ""


def test_parse_seeds() -> None:
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    with pytest.raises(ValueError, match="at least one"):
        parse_seeds(" , ")


def test_compare_lstm_and_state_space_lms_on_charlm(tmp_path: Path) -> None:
    """Issue 15: ``rnnkit compare --task charlm --models lstm,mamba,mamba2,jamba`` runs at the
    task's default model width (two training steps here) and writes its table and report."""
    args = ["compare", "--task", "charlm", "--models", "lstm,mamba,mamba2,jamba"]
    args += ["--steps", "2", "--eval-every", "2", "--no-plot", "--no-progress", "-q"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "compare.json").read_text())
    rows = {r["entry"]: r for r in data["rows"]}
    assert list(rows) == ["lstm", "mamba", "mamba2", "jamba"]
    for entry, row in rows.items():
        assert row["status"] == "ok", (entry, row["status"])
        # a finite score, at most a little above chance (log2 of the vocabulary) after 2 steps
        assert 0.0 < row["test_mean"] < data["chance"] + 1.0, (entry, row["test_mean"])
    # mamba and mamba2 are cells in the task's model; jamba is a registered model
    assert (rows["mamba"]["cell"], rows["mamba"]["model"]) == ("mamba", None)
    assert (rows["jamba"]["cell"], rows["jamba"]["model"]) == (None, "jamba")
    report = (tmp_path / "report.md").read_text()
    for entry in rows:
        assert f"| {entry} " in report or f"{entry}/seed-0" in report, entry


def test_compare_entries_carry_their_own_model_keywords() -> None:
    from rnnkit.tasks.compare import _resolve_entry, entry_options

    assert entry_options("hybrid_rnn:update=additive:attention=8") == (
        "hybrid_rnn",
        {"update": "additive", "attention": 8},
    )
    assert entry_options("lstm") == ("lstm", {})
    assert _resolve_entry("hybrid_rnn:attention=2") == (None, "hybrid_rnn")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        entry_options("hybrid_rnn:attention")
    with pytest.raises(ValueError, match="model or cell"):
        _resolve_entry("no_such_cell:attention=2")
