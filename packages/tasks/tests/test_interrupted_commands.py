"""A Ctrl-C (or SIGTERM) that stops a training run inside a larger command stops the command:
it must not go on to score, prune or rank a model trained for fewer steps than asked, and
print that score as if the run had finished. The trainer's ``stop_after`` stands in for the
signal (the same code path: the step finishes, the checkpoint is written, ``interrupted``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from rnnkit.core.cli import main
from rnnkit.tasks import checkpoint as ckpt
from rnnkit.tasks.trainer import RunInterrupted, TrainConfig, Trainer


@pytest.fixture
def runs_stop_after_one_step(monkeypatch: pytest.MonkeyPatch) -> list[Trainer]:
    """Every run stops after its first step as if interrupted; returns the trainers run."""
    started: list[Trainer] = []
    original = Trainer._run

    def stopping(self: Trainer) -> Any:
        self.config = dataclasses.replace(self.config, stop_after=1)
        started.append(self)
        return original(self)

    monkeypatch.setattr(Trainer, "_run", stopping)
    return started


def _config(out: Path, **kw: Any) -> TrainConfig:
    fields: dict[str, Any] = {
        "task": "digits_rows",
        "steps": 4,
        "batch_size": 8,
        "eval_every": 2,
        "out": str(out),
        "model_config": {"hidden_size": 8},
        "verbose": False,
        "progress": False,
        "plot": False,
    }
    return TrainConfig(**{**fields, **kw})


def test_run_to_end_raises_for_an_interrupted_run_and_keeps_its_checkpoint(
    tmp_path: Path,
) -> None:
    with pytest.raises(RunInterrupted, match=r"training stopped at step 1 \(run folder ") as exc:
        Trainer(_config(tmp_path / "stopped", stop_after=1)).run_to_end()
    assert exc.value.result.interrupted and exc.value.result.steps == 1
    assert isinstance(exc.value, KeyboardInterrupt)  # what lets a Ctrl-C through lets it through
    assert (tmp_path / "stopped" / ckpt.CHECKPOINT).is_file()
    done = Trainer(_config(tmp_path / "done")).run_to_end()
    assert not done.interrupted and done.steps == 4


@pytest.mark.parametrize(
    "argv",
    [
        ["passkey", "--steps", "3", "--hidden-size", "8", "--size", "4", "--no-progress"],
        ["nas", "--cells", "elman,gru", "--steps", "3", "--hidden-size", "4", "--batch", "8"],
        ["prune", "--steps", "3", "--hidden-size", "4", "--sparsity", "0.5"],
    ],
    ids=["passkey", "nas", "prune"],
)
def test_a_command_whose_training_is_interrupted_stops_with_status_130(
    argv: list[str],
    runs_stop_after_one_step: list[Trainer],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # passkey's run folder goes under ./runs
    assert main(argv) == 130
    out, err = capsys.readouterr()
    assert len(runs_stop_after_one_step) == 1  # nothing trained after the interrupted run
    assert out == ""  # no table of scores of a model trained for 1 step of 3
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(f"rnnkit {argv[0]}: interrupted (training stopped at step 1 (run folder ")
    ), err
    assert "Traceback" not in err


def test_prune_stops_when_a_fine_tuning_run_is_interrupted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dense run completes, the first fine-tuning run of a pruned model is stopped: no
    retrained score of a model fine-tuned for 1 step of 2, and the status of a Ctrl-C."""
    started: list[Trainer] = []
    original = Trainer._run

    def second_stops(self: Trainer) -> Any:
        started.append(self)
        if len(started) == 2:
            self.config = dataclasses.replace(self.config, stop_after=1)
        return original(self)

    monkeypatch.setattr(Trainer, "_run", second_stops)
    argv = ["prune", "--steps", "2", "--hidden-size", "4", "--sparsity", "0.5"]
    argv += ["--methods", "magnitude", "--retrain-steps", "2"]
    assert main(argv) == 130
    out, err = capsys.readouterr()
    assert len(started) == 2 and out == ""
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("rnnkit prune: interrupted (training stopped at step 1 (run folder ")
    ), err
