"""``rnnkit train`` and ``rnnkit compare`` end to end through ``rnnkit.core.cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rnnkit.core.cli import main

TINY = [
    "--steps",
    "6",
    "--eval-every",
    "3",
    "--batch-size",
    "16",
    "--hidden-size",
    "8",
    "--no-progress",
]


def test_train_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "task digits_rows" in text and "metric" in text and "target 0.95" in text
    assert str(out) in text
    for name in (
        "final.json",
        "metrics.jsonl",
        "checkpoint.safetensors",
        "checkpoint.json",
        "curves.png",
    ):
        assert (out / name).is_file(), name
    final = json.loads((out / "final.json").read_text())
    assert final["steps"] == 6 and "accuracy" in final["test"]
    # a finished run is not overwritten
    assert main(["train", *TINY, "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_train_with_cell_and_set(tmp_path: Path) -> None:
    args = [
        "train",
        "--task",
        "tomita1",
        *TINY,
        "--cell",
        "gru",
        "--set",
        "num_layers=2",
        "--no-plot",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    cfg = json.loads((tmp_path / "final.json").read_text())["config"]
    # what was asked, and the resolved keywords the model was built with (defaults filled in)
    assert cfg["model_overrides"] == {"hidden_size": 8, "num_layers": 2, "cell": "gru"}
    resolved = cfg["model_config"]
    assert {k: resolved[k] for k in ("hidden_size", "num_layers", "cell")} == {
        "hidden_size": 8,
        "num_layers": 2,
        "cell": "gru",
    }
    assert resolved["pooling"] == "last" and resolved["vocab_size"] == 4
    assert [(k["cell"], k["hidden_size"]) for k in cfg["kernels"]] == [("gru", 8), ("gru", 8)]


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--task", "partiy"], "parity"),
        (["--model", "sequence_clasifier"], "sequence_classifier"),
        (["--cell", "lstn"], "lstm"),
    ],
)
def test_unknown_names_suggest_the_closest(
    args: list[str], hint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", *args, *TINY, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "unknown" in err and hint in err
    assert not (tmp_path / "x").exists()


def test_corrupt_checkpoint_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "checkpoint.safetensors").write_bytes(b"not a checkpoint")
    assert main(["train", *TINY, "--resume", "--out", str(tmp_path)]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors"]


def test_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "compare",
        "--task",
        "digits_rows",
        "--models",
        "lstm,gru",
        *TINY,
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "lstm" in text and "gru" in text and "test accuracy" in text
    assert (tmp_path / "compare.png").is_file()
    summary = json.loads((tmp_path / "compare.json").read_text())
    assert [r["entry"] for r in summary["rows"]] == ["lstm", "gru"]
    assert main(["compare", "--models", "lstm,nope", *TINY, "--out", str(tmp_path / "y")]) == 2


def test_train_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--list"]) == 0
    assert "tomita7" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # a language model on images: it cannot read the inputs
        (["--task", "digits_rows", "--model", "char_lm"], "does not fit task 'digits_rows'"),
        # a classifier on a language model's task: its outputs do not fit the targets
        (["--task", "charlm", "--model", "sequence_classifier"], "does not fit task 'charlm'"),
        # a recommender on a series: it takes none of the task's keywords
        (["--task", "lorenz63", "--model", "sasrec"], "takes no keyword 'input_size'"),
        (["--model", "gru"], "pass --cell gru"),
        (["--set", "hiden=3"], "cell 'lstm' takes no keyword 'hiden'"),
        # a backend that cannot run the model's cell is that, not a mismatch with the task
        (
            ["--model", "mamba_classifier", "--backend", "s4d_conv"],
            "backend 's4d_conv' has no kernel for cell 'mamba'",
        ),
    ],
)
def test_a_model_that_does_not_fit_is_one_line(
    args: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new user's mismatches end in one line naming the fix, before anything is written."""
    assert main(["train", *args, *TINY, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert ("does not fit" in err) == ("does not fit" in expected or "input_size" in expected)
    if "does not fit" in err:
        assert "the task's own model" in err
    assert not (tmp_path / "x").exists()
