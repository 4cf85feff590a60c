"""``lengths`` on the kernels' backends: every backend that can run a cell equals running each
sequence alone (the conformance kit's ``lengths`` check), and a kernel that declares
``supports_lengths`` answers in one call, never through the by-length segments."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from test_form_linear import INPUT, STATE, TinyDiagonal
from torch import Tensor

from rnnkit.core import varlen
from rnnkit.core.cell import Cell
from rnnkit.core.cells import GRU, LSTM, SLSTM, Elman
from rnnkit.core.dispatch import KernelCall, kernels_for
from rnnkit.core.kernel import Kernel
from rnnkit.core.testing.checks import check_lengths
from rnnkit.core.testing.lengths import LENGTHS
from rnnkit.kernels.gated import torch_native

CELLS: dict[str, Callable[[], Cell[Any]]] = {
    "elman": lambda: Elman(input_size=3, hidden_size=4),
    "elman_relu_heads2": lambda: Elman(input_size=3, hidden_size=4, heads=2, nonlinearity="relu"),
    "lstm": lambda: LSTM(input_size=3, hidden_size=4),
    "gru_heads2": lambda: GRU(input_size=3, hidden_size=4, heads=2),
    "slstm": lambda: SLSTM(input_size=3, hidden_size=4),
    "diagonal_real": lambda: TinyDiagonal(INPUT, STATE),
    "diagonal_complex": lambda: TinyDiagonal(INPUT, STATE, complex_state=True),
}


@pytest.mark.parametrize("name", list(CELLS))
def test_lengths_on_every_backend(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    segmented: list[str] = []
    by_segments = varlen._by_segments

    def only_for_plain_kernels(kernel: Kernel, call: KernelCall) -> tuple[Tensor, Any]:
        assert not kernel.supports_lengths, f"{kernel.backend} declares lengths but was segmented"
        segmented.append(kernel.backend)
        return by_segments(kernel, call)

    monkeypatch.setattr(varlen, "_by_segments", only_for_plain_kernels)
    check_lengths(CELLS[name])
    cell = CELLS[name]().double()
    x = torch.zeros(len(LENGTHS), 7, cell.input_size, dtype=torch.float64)
    call = KernelCall(cell, x, None, None, True, torch.tensor(LENGTHS))
    runnable = {k.backend: k for k in kernels_for(cell) if k.why_not(call) is None}
    # every runnable backend without its own lengths path went through the segments
    assert {b for b, k in runnable.items() if not k.supports_lengths} <= set(segmented)


@pytest.mark.parametrize("name", ["elman_relu", "lstm", "gru"])
def test_torch_packed_ops(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The packed path of the ``torch`` backend (taken on CUDA), here forced on the CPU."""
    packed: list[int] = []
    real = torch_native._run_vf_packed

    def spy(*args: Any) -> Any:
        packed.append(1)
        return real(*args)

    monkeypatch.setattr(torch_native, "packed_preferred", lambda x: True)
    monkeypatch.setattr(torch_native, "_run_vf_packed", spy)
    make = {
        "elman_relu": lambda: Elman(input_size=3, hidden_size=4, nonlinearity="relu"),
        "lstm": CELLS["lstm"],
        "gru": lambda: GRU(input_size=3, hidden_size=4),
    }[name]
    check_lengths(make)
    assert packed, "the packed ops never ran"


def test_native_paths_are_declared() -> None:
    """The backends with a one-call lengths path say so (and auto needs no other)."""
    declared = {
        (k.backend, k.target)
        for k in kernels_for(LSTM(input_size=3, hidden_size=4))
        + kernels_for(TinyDiagonal(INPUT, STATE))
        if k.supports_lengths
    }
    assert {("reference", "*"), ("torch", "lstm"), ("triton", "lstm")} <= declared
    assert {("scan", "diagonal_linear"), ("scan_triton", "diagonal_linear")} <= declared
