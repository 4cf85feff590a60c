"""``--config FILE`` and ``--print-config`` of ``rnnkit train`` and ``rnnkit compare``."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from rnnkit.core.cli import main
from rnnkit.tasks import get_task
from rnnkit.tasks.runconfig import COMMON_KEYS, TRAIN_KEYS, format_toml

TOML = """
task = "tomita1"
cell = "gru"
steps = 6
eval_every = 3
batch_size = 16
lr = 0.01
seed = 2
plot = false
progress = false

[model_config]
hidden_size = 8
num_layers = 2
pooling = "last"
"""


def _printed(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out


def test_train_from_a_toml_file_with_command_line_overrides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(TOML)
    out = tmp_path / "run"
    argv = ["train", "--config", str(cfg), "--lr", "0.02", "--layers", "1", "--out", str(out)]
    assert main([*argv, "-q"]) == 0
    final = json.loads((out / "final.json").read_text())
    args = final["config"]["arguments"]
    assert (args["task"], args["cell"], args["steps"], args["seed"]) == ("tomita1", "gru", 6, 2)
    assert args["lr"] == 0.02  # the command line wins
    assert final["config"]["budget"]["batch_size"] == 16
    assert args["model_config"] == {"hidden_size": 8, "num_layers": 1, "pooling": "last"}
    assert not (out / "curves.png").exists()  # plot = false


@pytest.mark.parametrize("fmt", ["toml", "json"])
def test_print_config_round_trips(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_flag = ["--json"] if fmt == "json" else []
    argv = ["train", "--task", "tomita3", "--hidden-size", "12", "--set", "pooling=last"]
    argv += ["--set", 'extra={"a": [1, 2.5], "b c": "x"}', "--lr", "1e-5", "--no-amp"]
    argv += ["--threads", "2", "--out", str(tmp_path / "x"), *json_flag]
    first = _printed(capsys, [*argv, "--print-config"])
    doc = json.loads(first) if fmt == "json" else tomllib.loads(first)
    # resolved: the task's model, budget and cell filled in, the options given kept
    assert doc["model"] == "sequence_classifier" and doc["cell"] == "lstm"
    assert doc["steps"] == get_task("tomita3").budget.steps and doc["lr"] == 1e-5
    assert doc["amp"] is False and doc["threads"] == 2 and doc["seed"] == 0
    assert doc["out"] == str(tmp_path / "x")
    assert doc["model_config"] == {
        "hidden_size": 12,
        "pooling": "last",
        "extra": {"a": [1, 2.5], "b c": "x"},
    }
    saved = tmp_path / f"saved.{fmt}"
    saved.write_text(first)
    again = _printed(capsys, ["train", "--config", str(saved), "--print-config", *json_flag])
    assert again == first
    assert not (tmp_path / "x").exists()  # nothing trained, nothing created


def test_compare_config_and_print_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "cmp.json"
    cfg.write_text(json.dumps({"task": "tomita1", "models": ["lstm", "gru"], "seeds": [0, 1]}))
    text = _printed(capsys, ["compare", "--config", str(cfg), "--print-config"])
    doc = tomllib.loads(text)
    assert doc["models"] == ["lstm", "gru"] and doc["seeds"] == [0, 1]
    assert "cell" not in doc and "model" not in doc
    saved = tmp_path / "cmp.toml"
    saved.write_text(text)
    assert _printed(capsys, ["compare", "--config", str(saved), "--print-config"]) == text
    # the command line's --seed replaces the file's seeds
    argv = ["compare", "--config", str(cfg), "--seed", "4", "--print-config"]
    doc = tomllib.loads(_printed(capsys, argv))
    assert doc["seeds"] == [4]


def test_compare_runs_from_a_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "cmp.toml"
    cfg.write_text(
        'task = "tomita1"\nmodels = "lstm"\nseeds = [0]\nsteps = 4\neval_every = 2\n'
        "batch_size = 16\nplot = false\n[model_config]\nhidden_size = 8\n"
    )
    out = tmp_path / "cmp"
    assert main(["compare", "--config", str(cfg), "--json", "--out", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["entry"] for r in data["rows"]] == ["lstm"]
    assert data["arguments"]["steps"] == 4
    assert data["arguments"]["model_config"] == {"hidden_size": 8}


@pytest.mark.parametrize(
    ("command", "text", "message"),
    [
        (
            "train",
            "batch-size = 3\n",
            "unknown key 'batch-size' for rnnkit train; did you mean 'batch_size'",
        ),
        ("train", "models = ['lstm']\n", "unknown key 'models' for rnnkit train"),
        ("compare", 'model = "lstm"\n', "unknown key 'model' for rnnkit compare"),
        ("train", 'steps = "ten"\n', "key 'steps' must be an integer, got 'ten'"),
        ("train", "amp = 1\n", "key 'amp' must be true or false"),
        ("train", "model_config = 3\n", "key 'model_config' must be a table"),
        ("train", "steps = \n", "not valid TOML"),
    ],
)
def test_bad_files_name_the_key_and_the_file(
    command: str,
    text: str,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    out = tmp_path / "run"
    extra = ["--models", "lstm"] if command == "compare" else []
    assert main([command, "--config", str(cfg), *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"rnnkit {command}: error: --config {cfg}: " in err and message in err
    assert not out.exists()


def test_missing_file_and_json_null(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--config", str(tmp_path / "nope.toml"), "--print-config"]) == 2
    assert "cannot read it" in capsys.readouterr().err
    cfg = tmp_path / "c.json"
    cfg.write_text('{"steps": null, "task": "tomita2"}')  # null: not set
    doc = tomllib.loads(_printed(capsys, ["train", "--config", str(cfg), "--print-config"]))
    assert doc["task"] == "tomita2" and doc["steps"] == get_task("tomita2").budget.steps


def test_every_train_option_has_a_config_key(capsys: pytest.CaptureFixture[str]) -> None:
    """Each option of `rnnkit train --help` that sets up a run is a key of the file."""
    from rnnkit.core.cli import build_parser
    from rnnkit.core.plugins import get_host

    parser = build_parser(get_host())
    train = next(a for a in parser._actions if a.dest == "command").choices["train"]  # type: ignore[attr-defined]
    actions = {a.dest for a in train._actions}
    not_settings = {"help", "resume", "list", "config", "print_config", "quiet", "json"}
    model_keywords = {"hidden_size", "num_layers", "set"}  # the model_config table
    keys = {dest for dest, _ in {**COMMON_KEYS, **TRAIN_KEYS}.values()}
    assert actions - not_settings - model_keywords <= keys
    assert "config_model_config" in keys


def test_format_toml_refuses_null_inside_values() -> None:
    assert format_toml({"a": None, "b": 1.0, "t": {"x": 5}}) == "b = 1.0\n\n[t]\nx = 5\n"
    with pytest.raises(ValueError, match=r"t\.x: .*cannot be written as TOML"):
        format_toml({"t": {"x": None}})
