"""Passkey beyond the training length: state tracing, statistics and ``rnnkit passkey``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from rnnkit.core.cli import main
from rnnkit.models import create_model
from rnnkit.tasks.passkey_length import (
    STATISTICS,
    blocks_for,
    evaluate_lengths,
    passkey_length,
    state_statistics,
    trace_states,
)
from rnnkit.tasks.recall import PASSKEY_VOCAB, passkey_data


def _mamba(layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(
        "ssm_tagger",
        input_size=0,
        output_size=10,
        vocab_size=PASSKEY_VOCAB,
        cell="mamba",
        mix=False,
        hidden_size=8,
        state_size=16,
        num_layers=layers,
        d_state=4,
    )


def _lstm() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(
        "sequence_tagger",
        input_size=0,
        output_size=10,
        vocab_size=PASSKEY_VOCAB,
        cell="lstm",
        hidden_size=8,
        num_layers=2,
    )


def test_lengths_scale_with_the_filler() -> None:
    assert passkey_length(9) == 47  # the passkey task's T
    assert passkey_length(blocks_for(1, 9)) == 47
    for factor in (4, 16):
        assert abs(passkey_length(blocks_for(factor, 9)) - factor * 47) <= 2
    assert passkey_data(0, blocks=blocks_for(4, 9), sizes=(4, 2, 2)).test.inputs.shape[1] == 187


def test_state_statistics_of_a_known_state() -> None:
    h = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    conv = torch.full((2, 5), 100.0)  # Mamba's window of recent inputs: left out

    class State(tuple):  # a NamedTuple-like state with named fields
        _fields = ("h", "conv")

        @property
        def h(self) -> torch.Tensor:
            return self[0]

        @property
        def conv(self) -> torch.Tensor:
            return self[1]

    s = state_statistics(State((h, conv)))
    assert s["norm"] == pytest.approx(2.5)  # mean of 5 and 0
    assert s["mean"] == pytest.approx(7 / 4)
    assert s["rms"] == pytest.approx(math.sqrt(25 / 4))
    assert s["var"] == pytest.approx(25 / 4 - (7 / 4) ** 2)
    assert s["max_channel_rms"] == pytest.approx(math.sqrt(16 / 2))
    # complex entries count as their real and imaginary parts
    z = state_statistics(torch.tensor([[3 + 4j]], dtype=torch.complex64))
    assert z["norm"] == pytest.approx(5.0)


@pytest.mark.parametrize("make", [_mamba, _lstm])
def test_tracing_leaves_outputs_unchanged_and_records_each_layer(make: object) -> None:
    model = make()  # type: ignore[operator]
    model.eval()
    x = passkey_data(1, blocks=5, sizes=(4, 3, 3)).test.inputs  # T = 31
    with torch.no_grad():
        whole = model(x)
        with trace_states(model, [7, 20, 31]) as trace:
            traced = model(x)
    torch.testing.assert_close(traced, whole, rtol=1e-5, atol=1e-6)
    assert trace.positions == [7, 20, 31]
    assert len(trace.layers) == 2
    for layer in range(2):
        for stat in STATISTICS:
            values = trace.series(layer, stat)
            assert len(values) == 3 and all(math.isfinite(v) for v in values)
    # the last record is the statistics of the final state of a plain run of the first cell
    cell = next(m for m in model.modules() if hasattr(m, "state_spec"))
    with torch.no_grad():
        u = model.embed(x) if hasattr(model, "embed") else model.encoder(x)
        if hasattr(model, "blocks"):
            u = model.blocks[0].norm(u)
        _, final = cell(u)
    assert trace.series(0, "norm")[-1] == pytest.approx(state_statistics(final)["norm"])
    # patched forwards are removed afterwards
    assert "forward" not in vars(cell)


def test_tracing_refuses_bidirectional_models() -> None:
    model = create_model(
        "sequence_tagger", input_size=3, output_size=2, cell="gru", bidirectional=True
    )
    with pytest.raises(ValueError, match="bidirectional"), trace_states(model, [4]):
        pass


def test_evaluate_lengths_reports_each_factor() -> None:
    model = _mamba(layers=1)
    results = evaluate_lengths(model, train_blocks=3, factors=(1, 4), size=6, points_per_train=2)
    assert [r.factor for r in results] == [1, 4]
    assert [r.length for r in results] == [passkey_length(3), passkey_length(blocks_for(4, 3))]
    long = results[1].as_dict(passkey_length(3))
    assert long["positions"][-1] == long["length"]
    assert passkey_length(3) in long["positions"]  # the training length is always recorded
    assert len(long["layers"]) == 1
    assert len(long["layers"][0]["norm"]) == len(long["positions"])
    assert 0.0 <= long["metrics"]["exact_match"] <= 1.0


def test_passkey_command_trains_then_evaluates_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    args = ["passkey", "--steps", "3", "--eval-every", "3", "--batch-size", "8"]
    args += ["--hidden-size", "8", "--layers", "1", "--d-state", "4", "--size", "8"]
    args += ["--factors", "1,4", "--points", "2", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "exact match" in text and "4x" in text
    report = json.loads((out / "passkey_length.json").read_text())
    assert report["train_length"] == 47
    assert report["model"] == "ssm_tagger"
    assert report["model_kwargs"]["cell"] == "mamba"
    assert [r["factor"] for r in report["lengths"]] == [1, 4]
    assert report["lengths"][1]["length"] == passkey_length(blocks_for(4, 9))
    # the finished run evaluates again, without training, to the same numbers
    (out / "passkey_length.json").unlink()
    assert main(["passkey", "--run", str(out), "--size", "8", "--factors", "1,4"]) == 0
    again = json.loads((out / "passkey_length.json").read_text())
    assert again["lengths"][1]["metrics"] == report["lengths"][1]["metrics"]


def test_passkey_command_refuses_bad_factors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["passkey", "--factors", "0,4", "--steps", "1", "--out", str(tmp_path)]) != 0
    assert "--factors expects positive integers" in capsys.readouterr().err
    assert not (tmp_path / "passkey_length.json").exists()


@pytest.mark.parametrize("flag", ["--size", "--points"])
def test_passkey_command_refuses_a_zero_size_or_points_before_training(
    flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a zero used to end in a traceback (a reshape, a division) after the training run
    assert main(["passkey", flag, "0", "--steps", "1", "--out", str(tmp_path / "run")]) != 0
    assert f"{flag} must be a positive integer, got 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
