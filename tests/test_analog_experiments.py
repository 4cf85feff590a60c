"""Analog experiments: rnnkit-tasks' ``kws`` and ``charlm`` on rnnkit-kernels' simulator,
through the real CLI (``rnnkit analog``, owned by rnnkit-kernels, extended by rnnkit-tasks)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from rnnkit.core.cli import main
from rnnkit.core.plugins import PluginHost, module_plugin, use_host
from rnnkit.kernels.analog import cli as analog_cli
from rnnkit.tasks import get_task
from rnnkit.tasks.analog import experiments
from rnnkit.tasks.base import Split, TaskData


def test_analog_charlm_experiment_prints_its_table(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["analog", "charlm", "--steps", "3", "--finetune-steps", "1", "--bits", "5"]
    argv += ["--hidden-size", "16", "--eval-examples", "4", "--noise-seeds", "2"]
    argv += ["--out", str(tmp_path / "runs")]
    assert main([*argv, "--select-every", "2", "--plot", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert "| config | BPC (mean ± std, 2 noise seeds) | delta vs digital |" in out
    for label in ("| digital |", "| pcm 5-bit NL-ADC |", "| pcm 5-bit NL-ADC + HW-aware |"):
        assert label in out
    assert "best-valid checkpoint" in out
    # every training is a trainer run, kept under --out with the protocol's settings, beside
    # rows.json (the plot went where --plot said: a path with a directory)
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert runs == ["control", "digital", "pcm-5bit-hw-aware"]
    saved = json.loads((tmp_path / "runs" / "rows.json").read_text())
    assert saved["experiment"] == "charlm" and saved["settings"]["bits"] == [5]
    assert saved["rows"][0]["config"] == "digital"
    final = json.loads((tmp_path / "runs" / "digital" / "final.json").read_text())
    budget = final["config"]["budget"]
    assert (final["steps"], budget["lr"], budget["weight_decay"]) == (3, 5e-3, 0.01)
    assert (budget["clip"], budget["schedule"], budget["eval_every"]) == (1.0, "constant", 2)
    tuned = json.loads((tmp_path / "runs" / "pcm-5bit-hw-aware" / "final.json").read_text())
    assert (tuned["steps"], tuned["config"]["budget"]["lr"]) == (1, 1e-3)


def _tiny_kws(seed: int) -> TaskData:
    """A stand-in for the espeak-ng keyword set (building it takes a while): random MFCC-like
    sequences whose class shifts the mean of one coefficient, 10 classes, T=12."""
    gen = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        y = torch.arange(n) % 10
        x = torch.randn(n, 12, 13, generator=gen)
        x[:, :, 0] += y[:, None].float() - 4.5
        return Split(x, y)

    return TaskData(split(40), split(20), split(20))


def test_analog_kws_experiment_prints_its_table_and_plot(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # the tiny set registered as a task of its own by a test plugin, chosen with --task
    tiny = dataclasses.replace(get_task("kws"), name="kws_tiny", make_data=_tiny_kws)
    plugin = module_plugin(
        "tiny", rnnkit_register_tasks=lambda register: register("kws_tiny", tiny)
    )
    folder = tmp_path / "exp"
    plot = folder / "analog_kws.png"  # the default name, inside --out
    argv = ["analog", "kws", "--task", "kws_tiny", "--steps", "3", "--finetune-steps", "1"]
    argv += ["--bits", "3", "5", "--hidden-size", "8", "--noise-seeds", "2", "--batch-size", "8"]
    with use_host(PluginHost(plugins=[("tiny", plugin)])):
        assert main([*argv, "--out", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("kws_tiny LSTM, 3 digital steps, 1 HW-aware steps per config")
    assert "| config | accuracy % (mean ± std, 2 noise seeds) | delta vs digital |" in out
    for label in ("| digital |", "| pcm 3-bit NL-ADC |", "| pcm 5-bit NL-ADC + HW-aware |"):
        assert label in out
    rows = json.loads((folder / "rows.json").read_text())["rows"]
    assert [r["bits"] for r in rows] == [None, None, 3, 3, 5, 5]
    assert all(len(r["values"]) == 2 for r in rows[2:])
    pytest.importorskip("matplotlib")
    assert plot.is_file() and plot.stat().st_size > 0


def test_analog_experiment_rows_have_one_score_per_noise_seed() -> None:
    rows = experiments.hw_rows(
        "kws",
        steps=2,
        finetune_steps=1,
        bits=[4],
        noise_seeds=[1, 2, 3],
        batch_size=8,
        hidden_size=8,
        data=_tiny_kws(0),
    )
    assert [r["config"] for r in rows] == [
        "digital",
        "digital + fine-tune (control)",
        "pcm 4-bit NL-ADC",
        "pcm 4-bit NL-ADC + HW-aware",
    ]
    assert rows[0]["valid"] is None  # no checkpoint selection asked for
    assert rows[1]["values"] == [rows[1]["mean"]]
    for r in rows[2:]:
        vals = r["values"]
        assert len(vals) == 3 and all(0.0 <= v <= 1.0 for v in vals)
        assert r["mean"] == pytest.approx(sum(vals) / 3)
        assert r["delta"] == pytest.approx(r["mean"] - rows[0]["mean"])
    with pytest.raises(ValueError, match="noise_seeds"):
        experiments.hw_rows(
            "kws", steps=1, finetune_steps=1, bits=[4], noise_seeds=[], batch_size=8
        )
    with pytest.raises(ValueError, match="finetune_steps >= 0"):
        experiments.hw_rows(
            "kws", steps=1, finetune_steps=-1, bits=[4], noise_seeds=[1], batch_size=8
        )


def test_analog_experiment_is_deterministic_and_skips_hw_rows_without_finetuning() -> None:
    def rows() -> list[dict[str, object]]:
        return experiments.hw_rows(
            "kws",
            steps=3,
            finetune_steps=0,
            bits=[3],
            noise_seeds=[1, 2],
            batch_size=8,
            hidden_size=8,
            seed=1,
            data=_tiny_kws(0),
        )

    a, b = rows(), rows()
    # no fine-tuning: neither the control nor HW-aware rows (they would repeat others)
    assert [r["config"] for r in a] == ["digital", "pcm 3-bit NL-ADC"]
    assert [r["values"] for r in a] == [r["values"] for r in b]


def test_analog_experiments_are_registered_into_the_kernels_command() -> None:
    assert {"kws", "charlm"} <= set(analog_cli.experiments())
    assert analog_cli.experiments()["kws"].help == analog_cli.TASK_EXPERIMENTS["kws"]


def test_analog_kws_help_documents_the_quick_settings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["analog", "kws", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "quick check" in out and "rnnkit analog kws --steps 200 --select-every 50" in out
    assert "--out OUT" in out and "--task TASK" in out


def test_analog_kws_without_rnnkit_tasks_says_what_to_install() -> None:
    # rnnkit-tasks' plugin disabled: `rnnkit analog kws` still parses, explains, exits 1
    env = {**os.environ, "RNNKIT_DISABLE_PLUGINS": "tasks"}
    for args in (["--steps", "3", "--bits", "3", "5"], ["--help"]):
        proc = subprocess.run(
            [sys.executable, "-m", "rnnkit.core.cli", "analog", "kws", *args],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            check=False,
        )
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "rnnkit analog kws trains models" in proc.stderr
        assert "pip install rnnkit-tasks" in proc.stderr
        assert "RNNKIT_DISABLE_PLUGINS" in proc.stderr  # installed, so it says why it is off


def test_analog_cost_table(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["analog", "cost", "--out", str(tmp_path)]) == 0
    assert "NL-ADC" in capsys.readouterr().out
    saved = json.loads((tmp_path / "rows.json").read_text())
    assert saved["settings"]["hidden"] == 512
    assert {r["bits"] for r in saved["rows"]["comparison"]} == {3, 4, 5, 8}


def test_analog_commands_write_nothing_in_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["analog", "cost"]) == 0
    argv = ["analog", "adc-error", "--bits", "3", "--devices", "ideal", "--columns", "4"]
    assert main(argv) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["runs"]
    folders = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert [f.rsplit("-", 2)[0] for f in folders] == ["analog-adc-error", "analog-cost"]
    adc = next((tmp_path / "runs").glob("analog-adc-error-*"))
    assert (adc / "rows.json").is_file()
    if importlib.util.find_spec("matplotlib") is not None:
        assert (adc / "adc_error.png").is_file()


def test_analog_drift_writes_its_run_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tiny = dataclasses.replace(get_task("kws"), name="kws_tiny", make_data=_tiny_kws)
    plugin = module_plugin(
        "tiny", rnnkit_register_tasks=lambda register: register("kws_tiny", tiny)
    )
    out = tmp_path / "run"
    argv = ["analog", "drift", "--tasks", "kws_tiny", "--steps", "3", "--finetune-steps", "1"]
    argv += ["--hidden-size", "8", "--noise-seeds", "2", "--batch-size", "8"]
    argv += ["--times", "1", "31536000", "--out", str(out)]
    with use_host(PluginHost(plugins=[("tiny", plugin)])):
        assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| model | drift compensation | 1 s | 1 year |" in printed
    for label in ("| as trained | off |", "| HW-aware | global (probe) |"):
        assert label in printed
    run = json.loads((out / "rows.json").read_text())
    assert run["experiment"] == "drift" and run["settings"]["out"] == str(out)
    (result,) = run["rows"]
    assert result["task"] == "kws_tiny" and result["times"] == [1.0, 31536000.0]
    assert [(r["model"], r["compensation"]) for r in result["rows"]] == [
        ("as trained", False),
        ("as trained", True),
        ("HW-aware", False),
        ("HW-aware", True),
    ]
    for r in result["rows"]:
        assert [len(v) for v in r["values"]] == [2, 2]
        assert all(0.0 <= s <= 1.0 for v in r["values"] for s in v)
    assert (out / "drift.md").read_text().startswith("kws_tiny: accuracy %")
    pytest.importorskip("matplotlib")
    assert (out / "drift_kws_tiny.png").stat().st_size > 0


def _small_kws() -> TaskData:
    """As :func:`_tiny_kws` with 10x the examples (learnable in a few hundred steps)."""
    parts = [_tiny_kws(k) for k in range(10)]
    return TaskData(
        *(
            Split(
                torch.cat([getattr(p, name).inputs for p in parts]),
                torch.cat([getattr(p, name).targets for p in parts]),
            )
            for name in ("train", "valid", "test")
        )
    )


def test_drift_rows_compensation_holds_what_drift_takes(tmp_path: Path) -> None:
    # a year of uncompensated drift shrinks every pre-activation; compensated, the crossbar
    # scores as at one second (the same programming: paired seeds).
    from rnnkit.tasks.analog.drift import drift_rows

    result = drift_rows(
        "kws",
        steps=200,
        finetune_steps=0,
        noise_seeds=[1, 2],
        times=[1.0, 365 * 86400.0],
        batch_size=16,
        hidden_size=16,
        data=_small_kws(),
        out=tmp_path,
    )
    off, comp = result["rows"]
    assert (off["compensation"], comp["compensation"]) == (False, True)
    assert result["digital"] > 0.5  # the tiny set is learnable in 200 steps
    assert comp["mean"][1] > off["mean"][1]
    assert abs(comp["mean"][1] - comp["mean"][0]) < abs(off["mean"][1] - off["mean"][0])


@pytest.mark.parametrize("experiment", ["charlm", "drift"])
def test_analog_experiment_stops_when_its_training_is_interrupted(
    experiment: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A Ctrl-C during the digital training used to stop the training only: the experiment
    # went on to map, fine-tune and score the partly trained LSTM, and wrote rows.json and
    # its table as if the run had finished. (stop_after takes the signal's code path.)
    from rnnkit.tasks.trainer import Trainer

    original = Trainer._run

    def stopping(self: Trainer) -> Any:
        self.config = dataclasses.replace(self.config, stop_after=1)
        return original(self)

    monkeypatch.setattr(Trainer, "_run", stopping)
    out = tmp_path / "stopped"
    argv = ["analog", experiment, "--steps", "3", "--finetune-steps", "1", "--noise-seeds", "1"]
    argv += ["--hidden-size", "8", "--eval-examples", "4", "--out", str(out)]
    argv += ["--tasks", "charlm"] if experiment == "drift" else ["--bits", "5", "--plot", ""]
    assert main(argv) == 130
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip().startswith(
        f"rnnkit analog: interrupted (training stopped at step 1 (run folder {out}"
    ), captured.err
    assert not (out / "rows.json").exists()


def test_analog_charlm_json_and_quiet(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["analog", "charlm", "--steps", "2", "--finetune-steps", "1", "--bits", "5"]
    argv += ["--hidden-size", "8", "--eval-examples", "4", "--noise-seeds", "1", "--plot", ""]
    assert main([*argv, "--json", "--out", str(tmp_path / "j")]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)  # the whole of stdout: rows.json
    assert printed == json.loads((tmp_path / "j" / "rows.json").read_text())
    assert printed["experiment"] == "charlm" and printed["rows"][0]["config"] == "digital"
    assert main([*argv, "--quiet", "--out", str(tmp_path / "q")]) == 0
    assert capsys.readouterr() == ("", "")
    assert (tmp_path / "q" / "rows.json").is_file()


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any training run fails the test: a refusal must come before the training."""
    from rnnkit.tasks.trainer import Trainer

    def refuse(self: Trainer) -> None:
        raise AssertionError("trained before refusing the arguments")

    monkeypatch.setattr(Trainer, "run", refuse)


def _assert_refused(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str, out: Path
) -> None:
    """``argv`` (with ``--out out``) exits 2 with one line starting with ``message`` on stderr,
    nothing on stdout, and leaves no folder (the one the command made for the run is gone)."""
    assert main([*argv, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"rnnkit analog: error: {message}"), captured.err
    assert captured.err.count("\n") == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "digits_rows"], "task 'digits_rows' has no 'bpc' metric (its metrics: "),
        (["--bits", "3", "0"], "--bits must be whole numbers of bits in [1, 10], got [3, 0]"),
        (["--t-inference", "-1"], "--t-inference must be finite seconds >= 0 since programming"),
        (["--t-inference", "nan"], "--t-inference must be finite seconds >= 0 since programming"),
        (["--eval-examples", "0"], "--eval-examples must be a positive integer, got 0"),
        (["--hidden-size", "0"], "--hidden-size must be a positive integer, got 0"),
        (["--steps", "0"], "--steps must be a positive integer, got 0"),
        (["--finetune-steps", "-1"], "--finetune-steps must be a whole number >= 0, got -1"),
        (["--select-every", "-1"], "--select-every must be a whole number >= 0"),
        (["--noise-seeds", "0"], "--noise-seeds must be a positive integer, got 0"),
        # the optimiser refused these only after the digital training, or never (NaN)
        (["--finetune-lr", "-1"], "--finetune-lr must be a finite number >= 0, got -1.0"),
        (["--finetune-lr", "nan"], "--finetune-lr must be a finite number >= 0, got nan"),
        (["--lr", "inf"], "--lr must be a finite number >= 0, got inf"),
    ],
)
def test_analog_charlm_refuses_bad_arguments_before_training(
    extra: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    no_training: None,
) -> None:
    # the digital training (minutes at the default budget) must not start: a bad --bits or a
    # task without the metric used to fail after it, with a traceback for the metric
    argv = ["analog", "charlm", "--steps", "2", "--finetune-steps", "1", "--bits", "3"]
    argv += ["--hidden-size", "8", "--eval-examples", "4", "--noise-seeds", "1", "--plot", ""]
    _assert_refused(capsys, [*argv, *extra], message, tmp_path / "refused")
    kept = tmp_path / "kept"
    kept.mkdir()
    assert main([*argv, *extra, "--out", str(kept)]) == 2
    assert kept.is_dir()  # a folder that was there before is left alone


def test_analog_drift_names_itself_in_a_refusal(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analog", "drift", "--noise-seeds", "0"]) == 2
    expected = "rnnkit analog: error: --noise-seeds must be a positive integer, got 0\n"
    assert capsys.readouterr().err == expected


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        # --eval-examples 0 was a traceback from statistics.stdev after the training
        (["--eval-examples", "0"], "--eval-examples must be a positive integer, got 0"),
        (["--times", "1", "inf"], "--times must be finite seconds >= 0 since programming"),
        (["--bits", "0"], "--bits must be whole numbers of bits in [1, 10], got 0"),
        (["--steps", "0"], "--steps must be a positive integer, got 0"),
        (["--finetune-steps", "-1"], "--finetune-steps must be a whole number >= 0, got -1"),
        (["--hidden-size", "-4"], "--hidden-size must be a positive integer, got -4"),
        (["--lr", "-0.1"], "--lr must be a finite number >= 0, got -0.1"),
    ],
)
def test_analog_drift_refuses_bad_arguments_before_training(
    extra: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    no_training: None,
) -> None:
    argv = ["analog", "drift", "--tasks", "charlm", *extra]
    _assert_refused(capsys, argv, message, tmp_path / "refused")


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"eval_examples": 0}, "eval_examples must be >= 1"),
        ({"hidden_size": 0}, "hidden_size must be >= 1"),
        ({"times": [1.0, float("inf")]}, "times must be finite seconds >= 0"),
        ({"nl_bits": 0}, "nl_bits must be"),
    ],
)
def test_drift_rows_refuses_bad_keywords_before_training(
    keywords: dict[str, object], message: str, tmp_path: Path, no_training: None
) -> None:
    from rnnkit.tasks.analog.drift import drift_rows

    base: dict[str, Any] = {"steps": 2, "finetune_steps": 0, "noise_seeds": [1], "out": tmp_path}
    with pytest.raises(ValueError, match=message):
        drift_rows("charlm", **{**base, **keywords})


def test_a_refusal_keeps_what_the_command_wrote(tmp_path: Path) -> None:
    # only an empty folder the command made goes; one with files stays, and the error that
    # stopped the command is the one raised (not an OSError from removing a full folder)
    from rnnkit.tasks.analog.cli import _removed_if_left_empty

    made = tmp_path / "made"

    def refuse(write: bool) -> None:
        with _removed_if_left_empty(made, existed=False):
            if write:
                (made / "digital").mkdir()
            raise ValueError("stopped")

    made.mkdir()
    with pytest.raises(ValueError, match="stopped"):
        refuse(write=True)
    assert (made / "digital").is_dir()
    (made / "digital").rmdir()
    with pytest.raises(ValueError, match="stopped"):
        refuse(write=False)
    assert not made.exists()


def test_shared_flags_take_their_bounds() -> None:
    """The least value each shared flag takes passes (``--finetune-steps 0``: no fine-tuning,
    ``--lr 0``, 1 and 10 bits), and ``None`` for the sizes that default to the task's."""
    import argparse

    from rnnkit.tasks.analog.cli import _check_flags

    least = argparse.Namespace(
        steps=1,
        lr=0.0,
        finetune_lr=0.0,
        finetune_steps=0,
        noise_seeds=1,
        bits=[1, 10],
        hidden_size=1,
        eval_examples=1,
    )
    _check_flags(least)
    _check_flags(argparse.Namespace(**{**vars(least), "hidden_size": None, "eval_examples": None}))
