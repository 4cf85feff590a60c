"""The run record (issue 17, item 2): ``final.json`` says what ran and with what, ``--resume
--out DIR`` alone continues a run with its stored arguments, and argument errors come before
the run folder exists."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from rnnkit.core.cli import main
from rnnkit.core.dispatch import backend_names
from rnnkit.tasks import TrainConfig, Trainer, train
from rnnkit.tasks.checkpoint import CHECKPOINT, read_checkpoint
from rnnkit.tasks.record import git_commit, versions

TINY = ["--steps", "6", "--eval-every", "3", "--batch-size", "16", "--no-progress", "--no-plot"]


def test_final_json_holds_the_resolved_config_and_the_record(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["train", *TINY, "--cell", "gru", "--hidden-size", "12", "--out", str(out)]
    assert main(argv) == 0
    final = json.loads((out / "final.json").read_text())
    cfg = final["config"]
    # the model as built: the cell and width asked for, the defaults filled in
    mc = cfg["model_config"]
    assert (mc["cell"], mc["hidden_size"], mc["num_layers"]) == ("gru", 12, 1)
    assert mc["input_size"] == 8 and mc["output_size"] == 10 and mc["pooling"] == "last"
    (kernel,) = cfg["kernels"]
    assert (kernel["cell"], kernel["hidden_size"], kernel["input_size"]) == ("gru", 12, 8)
    # the backend that ran, not "auto"
    assert cfg["backend_requested"] == "auto"
    assert cfg["backend"] != "auto" and cfg["backend"] in backend_names()
    assert kernel["train"] == cfg["backend"] and kernel["eval"] in backend_names()
    rec = final["record"]
    assert rec["versions"]["rnnkit-tasks"] and rec["versions"]["torch"] == torch.__version__
    assert set(versions()) >= {"rnnkit-core", "rnnkit-models", "rnnkit-tasks", "torch"}
    iso = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
    assert iso.fullmatch(rec["started"]) and iso.fullmatch(rec["ended"])
    assert rec["started"] <= rec["ended"]
    assert rec["threads"] == cfg["threads"] == 1 and rec["device"] == "cpu"
    assert rec["resumed_at_step"] is None
    # run from this checkout (the tests run from one): its commit, as git reports it
    head = subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    if head.returncode == 0:
        assert rec["git"]["commit"] == head.stdout.strip()
    report = (out / "report.md").read_text()
    assert report.startswith("# digits_rows / sequence_classifier (gru, hidden 12)")


def test_git_commit_is_none_outside_a_checkout_or_without_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert git_commit(tmp_path) is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on the PATH
    assert git_commit() is None


def test_the_kernel_of_a_named_backend_is_recorded(tmp_path: Path) -> None:
    result = train(
        steps=3,
        eval_every=3,
        batch_size=16,
        model_config={"hidden_size": 8},
        backend="reference",
        out=str(tmp_path),
        progress=False,
        verbose=False,
        plot=False,
    )
    assert result.config["backend"] == "reference"
    assert [(k["train"], k["eval"]) for k in result.config["kernels"]] == [
        ("reference", "reference")
    ]


def test_bad_backend_is_refused_before_the_run_folder_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    # the trainer refuses it while it is being built, before run() creates anything
    with pytest.raises(ValueError, match="backend"):
        Trainer(TrainConfig(steps=3, backend="nonsense", out=str(tmp_path / "x")))
    assert main(["train", *TINY, "--backend", "nonsense"]) == 2
    assert "unknown backend 'nonsense'" in capsys.readouterr().err
    assert main(["train", *TINY, "--backend", "nonsense", "--out", "given/run"]) == 2
    assert main(["train", *TINY, "--steps", "0", "--out", "given/run"]) == 2
    assert "--steps must be a positive integer" in capsys.readouterr().err
    assert sorted(tmp_path.iterdir()) == []  # no runs/, no given/


def _final(out: Path) -> dict[str, object]:
    data: dict[str, object] = json.loads((out / "final.json").read_text())
    return data


def test_resume_with_only_out_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    args = [*TINY, "--hidden-size", "8", "--seed", "3", "--lr", "0.01"]
    assert main(["train", *args, "--out", str(tmp_path / "whole")]) == 0
    stopped = tmp_path / "stopped"
    train(
        TrainConfig(
            steps=6,
            eval_every=3,
            batch_size=16,
            model_config={"hidden_size": 8},
            seed=3,
            lr=0.01,
            out=str(stopped),
            stop_after=4,
            progress=False,
            verbose=False,
        )
    )
    assert not (stopped / "final.json").exists()
    assert main(["train", "--resume", "--out", str(stopped), "--no-progress"]) == 0
    whole, resumed = _final(tmp_path / "whole"), _final(stopped)
    assert resumed["test"] == whole["test"] and resumed["valid"] == whole["valid"]
    assert resumed["steps"] == 6 and resumed["record"]["resumed_at_step"] == 4  # type: ignore[index]
    a, _ = read_checkpoint(tmp_path / "whole" / CHECKPOINT)
    b, _ = read_checkpoint(stopped / CHECKPOINT)
    for name in (k for k in a if k.startswith(("model.", "best."))):
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--lr", "0.02"], "--lr 0.02"),
        (["--hidden-size", "9"], "--hidden-size 9"),
        (["--set", "num_layers=2"], "--set num_layers=2"),
        (["--layers", "2"], "--layers 2"),
        (["--seed", "4"], "--seed 4"),
        (["--backend", "reference"], "--backend 'reference'"),
        (["--task", "parity"], "--task 'parity'"),
    ],
)
def test_resume_refuses_a_conflicting_argument_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], named: str
) -> None:
    train(
        TrainConfig(
            steps=6,
            eval_every=3,
            batch_size=16,
            model_config={"hidden_size": 8},
            seed=3,
            lr=0.01,
            out=str(tmp_path),
            stop_after=3,
            progress=False,
            verbose=False,
        )
    )
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert main(["train", "--resume", "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert named in err and "conflicts with the run in" in err
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == before


def test_resume_accepts_the_same_values_given_again(tmp_path: Path) -> None:
    train(
        TrainConfig(
            steps=6,
            eval_every=3,
            batch_size=16,
            model_config={"hidden_size": 8},
            lr=0.01,
            out=str(tmp_path),
            stop_after=3,
            progress=False,
            verbose=False,
        )
    )
    # --seed 0 and --task digits_rows were the defaults; --lr and the width were given
    again = ["--lr", "0.01", "--hidden-size", "8", "--seed", "0", "--task", "digits_rows"]
    argv = ["train", "--resume", "--out", str(tmp_path), *TINY, *again]
    assert main(argv) == 0
    assert _final(tmp_path)["steps"] == 6
