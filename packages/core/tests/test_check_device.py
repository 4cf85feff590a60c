"""``check_device``: a device name the user typed becomes a ``torch.device`` this machine has,
or a one-line ``ValueError`` (``rnnkit list backends --device``, ``rnnkit train/eval --device``)."""

from __future__ import annotations

from typing import Any, cast

import pytest
import torch

from rnnkit.core.cli import main
from rnnkit.core.validation import check_device


def test_cpu_and_device_objects_pass() -> None:
    assert check_device("cpu") == torch.device("cpu")
    assert check_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "CPU", "cuda:x", ""])
def test_names_torch_cannot_parse_are_value_errors_naming_the_option(name: str) -> None:
    with pytest.raises(ValueError, match=r"--device must name a torch device \(cpu, cuda"):
        check_device(name, name="--device")


@pytest.mark.parametrize("value", [None, 1.5, ["cpu"]])
def test_values_of_another_type_are_value_errors(value: object) -> None:
    # a device read from a config file may be any JSON value; torch raises TypeError for it
    with pytest.raises(ValueError, match=r"device must name a torch device .* got "):
        check_device(cast(Any, value))


def test_cuda_without_cuda_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match=f"device '{name}' was asked for but CUDA is not"):
            check_device(name)


def test_a_cuda_index_beyond_the_visible_devices_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_device("cuda:1") == torch.device("cuda", 1)
    assert check_device("cuda") == torch.device("cuda")
    with pytest.raises(
        ValueError, match=r"'cuda:2' .* has 2 CUDA device\(s\) \(cuda:0 to cuda:1\)"
    ):
        check_device("cuda:2")


def test_mps_without_mps_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="'mps' was asked for but MPS is not available"):
        check_device("mps")


def test_list_backends_reports_a_bad_device_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["list", "backends", "--cell", "lstm", "--device", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "device must name a torch device" in err and "'gpu'" in err
    assert "Traceback" not in err
