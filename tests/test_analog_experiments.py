"""Analog experiments that need rnnkit-tasks beside rnnkit-kernels, through the real CLI."""

from __future__ import annotations

import pytest

from rnnkit.core.cli import main


def test_analog_charlm_experiment_prints_its_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["analog", "charlm", "--steps", "3", "--finetune-steps", "1", "--bits", "5"]
    assert main([*argv, "--hidden-size", "16", "--eval-examples", "4"]) == 0
    out = capsys.readouterr().out
    assert "| config | BPC | delta vs digital |" in out
    for label in ("digital", "pcm 5-bit NL-ADC |", "pcm 5-bit NL-ADC + HW-aware"):
        assert label in out


def test_analog_cost_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analog", "cost"]) == 0
    assert "NL-ADC" in capsys.readouterr().out
