"""``rnnkit.kernels._triton_runtime``: where the Triton backends' kernels run."""

from __future__ import annotations

import pytest
import torch

from rnnkit.kernels._triton_runtime import device_reason, interpreted


class InterpretedFunction:  # stands in for triton's interpreter wrapper (matched by name)
    pass


class JITFunction:
    pass


def test_interpreted_asks_the_kernel_object_before_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert interpreted(InterpretedFunction())
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not interpreted(JITFunction())
    assert interpreted(None)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not interpreted(None)


def test_device_reason() -> None:
    cpu = torch.device("cpu")
    assert device_reason(cpu, interpreting=True) is None
    assert device_reason(None, interpreting=True) is None
    why = device_reason(cpu, interpreting=False, what="the kernels")
    assert why == "CUDA tensors needed (got cpu; TRITON_INTERPRET=1 runs the kernels on CPU)"
    assert device_reason(torch.device("cuda", 0), interpreting=False) is None
    if not torch.cuda.is_available():
        assert (device_reason(None, interpreting=False) or "").startswith("no CUDA device")
