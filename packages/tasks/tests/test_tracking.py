"""Tracking and output (issue 17, item 5): trainer callbacks, TensorBoard, logging, and the
``-q/--quiet`` and ``--json`` options of ``rnnkit train`` and ``rnnkit compare``."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from rnnkit.core.cli import main
from rnnkit.tasks import Callback, RunResult, Trainer, train

TINY = ["--steps", "6", "--eval-every", "3", "--batch-size", "16", "--hidden-size", "8"]
TINY_KW: dict[str, Any] = {
    "steps": 6,
    "eval_every": 3,
    "batch_size": 16,
    "model_config": {"hidden_size": 8},
    "progress": False,
    "plot": False,
}


class Recorder(Callback):
    """Writes down every call it receives."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def on_step(self, trainer: Trainer, step: int, loss: float) -> None:
        assert trainer.state.step == step
        self.calls.append(("step", step, loss))

    def on_eval(self, trainer: Trainer, step: int, metrics: Mapping[str, float]) -> None:
        assert trainer.state.history[-1]["valid"] == metrics
        self.calls.append(("eval", step, dict(metrics)))

    def on_end(self, trainer: Trainer, result: RunResult) -> None:
        assert (Path(result.out) / "final.json").is_file()  # written before on_end
        self.calls.append(("end", result))


def test_callbacks_see_every_step_every_validation_and_the_end(tmp_path: Path) -> None:
    rec = Recorder()
    result = train(task="digits_rows", out=str(tmp_path), callbacks=[rec], **TINY_KW)
    kinds = [(c[0], c[1] if c[0] != "end" else None) for c in rec.calls]
    assert kinds == [
        ("step", 1),
        ("step", 2),
        ("step", 3),
        ("eval", 3),
        ("step", 4),
        ("step", 5),
        ("step", 6),
        ("eval", 6),
        ("end", None),
    ]
    history = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [c[2] for c in rec.calls if c[0] == "eval"] == [h["valid"] for h in history]
    losses = [c[2] for c in rec.calls if c[0] == "step"]
    assert all(isinstance(x, float) and x > 0 for x in losses)
    # the mean of steps 1-3 is what metrics.jsonl records as the train loss at step 3
    assert sum(losses[:3]) / 3 == pytest.approx(history[0]["train_loss"], rel=1e-6)
    assert rec.calls[-1][1] is result


def test_a_callback_can_stop_the_run(tmp_path: Path) -> None:
    class StopAtFirstEval(Callback):
        def on_eval(self, trainer: Trainer, step: int, metrics: Mapping[str, float]) -> None:
            trainer.state.stopped_early = True

    result = train(task="digits_rows", out=str(tmp_path), callbacks=[StopAtFirstEval()], **TINY_KW)
    assert result.steps == 3 and result.stopped_early and not result.interrupted


def test_an_exception_in_a_callback_is_not_swallowed(tmp_path: Path) -> None:
    class Boom(Callback):
        def on_step(self, trainer: Trainer, step: int, loss: float) -> None:
            if step == 2:
                raise RuntimeError("callback failed at step 2")

    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="callback failed at step 2"):
        train(task="digits_rows", out=str(out), callbacks=[Boom()], **TINY_KW)
    assert not out.exists()  # failed before its first checkpoint: nothing left behind

    class BoomAtEnd(Callback):
        def on_end(self, trainer: Trainer, result: RunResult) -> None:
            raise KeyError("end")

    with pytest.raises(KeyError, match="end"):
        train(task="digits_rows", out=str(tmp_path / "b"), callbacks=[BoomAtEnd()], **TINY_KW)


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_event_files_hold_the_runs_scalars(tmp_path: Path) -> None:
    pytest.importorskip("torch.utils.tensorboard")
    out = tmp_path / "run"
    assert main(["train", *TINY, "--no-progress", "--tensorboard", "-q", "--out", str(out)]) == 0
    scalars = _scalars(out / "tb")
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((out / "final.json").read_text())
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in scalars["train/lr"]] == [1, 2, 3, 4, 5, 6]
    for name in ("accuracy", "loss"):
        got = scalars[f"valid/{name}"]
        assert [s for s, _ in got] == [3, 6]
        assert [v for _, v in got] == pytest.approx([h["valid"][name] for h in history])
    mean = scalars["train/mean_loss"]
    assert [v for _, v in mean] == pytest.approx([h["train_loss"] for h in history])
    assert scalars["test/accuracy"] == [(6, pytest.approx(final["test"]["accuracy"]))]


def test_tensorboard_after_a_resume_holds_each_step_once(tmp_path: Path) -> None:
    pytest.importorskip("torch.utils.tensorboard")
    from rnnkit.tasks.callbacks import TensorBoardCallback

    class CrashAt5(Callback):
        def on_step(self, trainer: Trainer, step: int, loss: float) -> None:
            if step == 5 and not trainer.config.resume:
                raise RuntimeError("crash")

    out = str(tmp_path)
    tb = TensorBoardCallback()
    # steps 1-5 are logged, the checkpoint is at step 3 (the first validation)
    with pytest.raises(RuntimeError, match="crash"):
        train(task="digits_rows", out=out, callbacks=[tb, CrashAt5()], **TINY_KW)
    result = train(task="digits_rows", out=out, resume=True, callbacks=[tb, CrashAt5()], **TINY_KW)
    assert result.steps == 6 and not result.interrupted
    # the resumed run logs 4-6 again; what the crashed one logged after step 3 is discarded
    scalars = _scalars(tmp_path / "tb")
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in scalars["valid/accuracy"]] == [3, 6]


def test_missing_tensorboard_names_the_extra_before_anything_is_created(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--tensorboard", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "rnnkit train: error:" in err and "pip install 'rnnkit-tasks[tensorboard]'" in err
    assert not out.exists()
    assert main(["compare", "--models", "lstm", *TINY, "--tensorboard", "--out", str(out)]) == 2
    assert "rnnkit-tasks[tensorboard]" in capsys.readouterr().err
    assert not out.exists()


def test_trainer_messages_are_logged_not_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rnnkit.tasks")
    train(task="digits_rows", out=str(tmp_path), **{**TINY_KW, "batch_size": 5000})
    assert capsys.readouterr().out == ""
    records = [r for r in caplog.records if r.name == "rnnkit.tasks"]
    text = [r.getMessage() for r in records]
    assert text[0].startswith("rnnkit train: task digits_rows")
    clamp = [r for r in records if "above the" in r.getMessage()]
    assert len(clamp) == 1 and clamp[0].levelno == logging.WARNING
    assert [m.split()[:2] for m in text if m.startswith("step")] == [
        ["step", "3/6"],
        ["step", "6/6"],
    ]


def test_cli_keeps_results_on_stdout_and_messages_on_stderr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", *TINY, "--no-progress", "--no-plot", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "step      3/6" in captured.err and "step      3/6" not in captured.out
    assert "metric" in captured.out and "rnnkit train: task" in captured.err


def test_train_json_prints_final_json_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", *TINY, "--no-plot", "--json", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)  # the whole of stdout is one document
    assert printed == json.loads((tmp_path / "final.json").read_text())
    assert "step      6/6" in captured.err  # the messages are still on stderr


def test_train_quiet_prints_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", *TINY, "--no-plot", "-q", "--out", str(tmp_path)]) == 0
    assert capsys.readouterr() == ("", "")
    assert (tmp_path / "final.json").is_file()
    # errors still show, and the exit status says so
    assert main(["train", *TINY, "-q", "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "already holds a run" in captured.err


def test_train_list_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert "tomita7" in {r["task"] for r in rows}
    assert all(set(r) == {"task", "description"} for r in rows)


def test_compare_json_and_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["compare", "--models", "lstm,nope_cell", *TINY, "--no-plot", "--out", str(tmp_path)]
    # an unknown name is an argument error (exit 2) before anything runs
    assert main([*args, "--json"]) == 2
    assert capsys.readouterr().out == ""
    args[2] = "lstm"
    assert main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == json.loads((tmp_path / "compare.json").read_text())
    assert "== lstm, seed 0 ==" in captured.err
    assert main([*args, "--quiet"]) == 0  # reuses the finished run
    assert capsys.readouterr() == ("", "")
