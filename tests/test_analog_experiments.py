"""Analog experiments that need rnnkit-tasks beside rnnkit-kernels, through the real CLI."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from rnnkit.core.cli import main
from rnnkit.kernels.analog import experiments
from rnnkit.tasks import get_task
from rnnkit.tasks.base import Split, TaskData


def test_analog_charlm_experiment_prints_its_table(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    argv = ["analog", "charlm", "--steps", "3", "--finetune-steps", "1", "--bits", "5"]
    argv += ["--hidden-size", "16", "--eval-examples", "4", "--noise-seeds", "2"]
    assert main([*argv, "--select-every", "2", "--plot", str(tmp_path / "c.png")]) == 0
    out = capsys.readouterr().out
    assert "| config | BPC (mean ± std, 2 noise seeds) | delta vs digital |" in out
    for label in ("| digital |", "| pcm 5-bit NL-ADC |", "| pcm 5-bit NL-ADC + HW-aware |"):
        assert label in out
    assert "best-valid checkpoint" in out


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
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    task = dataclasses.replace(get_task("kws"), make_data=_tiny_kws)

    def load(name: str) -> Any:
        assert name == "kws"
        return task

    monkeypatch.setattr(experiments, "load_task", load)
    plot = tmp_path / "kws.png"
    argv = ["analog", "kws", "--steps", "3", "--finetune-steps", "1", "--bits", "3", "5"]
    argv += ["--hidden-size", "8", "--noise-seeds", "2", "--batch-size", "8"]
    assert main([*argv, "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "| config | accuracy % (mean ± std, 2 noise seeds) | delta vs digital |" in out
    for label in ("| digital |", "| pcm 3-bit NL-ADC |", "| pcm 5-bit NL-ADC + HW-aware |"):
        assert label in out
    pytest.importorskip("matplotlib")
    assert plot.is_file() and plot.stat().st_size > 0


def test_analog_experiment_rows_have_one_score_per_noise_seed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = dataclasses.replace(get_task("kws"), make_data=_tiny_kws)
    monkeypatch.setattr(experiments, "load_task", lambda name: task)
    rows = experiments.hw_rows(
        "kws",
        metric="accuracy",
        steps=2,
        finetune_steps=1,
        bits=[4],
        noise_seeds=[1, 2, 3],
        batch_size=8,
        hidden_size=8,
    )
    assert [r["config"] for r in rows] == [
        "digital",
        "digital + fine-tune (control)",
        "pcm 4-bit NL-ADC",
        "pcm 4-bit NL-ADC + HW-aware",
    ]
    assert rows[1]["values"] == [rows[1]["mean"]]
    for r in rows[2:]:
        vals = r["values"]
        assert len(vals) == 3 and all(0.0 <= v <= 1.0 for v in vals)
        assert r["mean"] == pytest.approx(sum(vals) / 3)
        assert r["delta"] == pytest.approx(r["mean"] - rows[0]["mean"])
    with pytest.raises(ValueError, match="noise_seeds"):
        experiments.hw_rows(
            "kws",
            metric="accuracy",
            steps=1,
            finetune_steps=1,
            bits=[4],
            noise_seeds=[],
            batch_size=8,
        )


def test_analog_cost_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analog", "cost"]) == 0
    assert "NL-ADC" in capsys.readouterr().out
