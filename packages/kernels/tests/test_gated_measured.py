"""``auto`` on CUDA from measured timings (``rnnkit.kernels.gated.measured``): the table's
rows, which row decides a call, and the tiers of the ``cuda`` and ``triton`` kernels that follow.

No GPU is needed: a call is given a CUDA device by a stand-in for its input (only its device,
dtype and shape are read), and the device's name and the table are monkeypatched."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from rnnkit.core.cells import LSTM
from rnnkit.core.dispatch import KernelCall, Priority
from rnnkit.kernels.gated import cuda, measured, triton

H100 = "NVIDIA H100 80GB HBM3"


def _row(**kw: Any) -> dict[str, Any]:
    base = {
        "device": H100, "kind": "lstm", "dtype": "bfloat16", "heads": 1, "head_dim": 768,
        "batch": 16, "pass": "forward+backward", "fastest": "cuda", "ms": {"cuda": 1.0},
    }  # fmt: skip
    return {**base, **kw}


def _call(batch: int = 16, dtype: torch.dtype = torch.bfloat16, grad: bool = True) -> KernelCall:
    cell = LSTM(4, 768)  # one head of 768
    x: Any = SimpleNamespace(device=torch.device("cuda", 0), dtype=dtype, shape=(batch, 3, 4))
    return KernelCall(cell, x, None, None, grad)


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Set the measured rows (JSON objects) the tiers read, on a device named H100."""

    def use(*entries: dict[str, Any]) -> None:
        rows = tuple(measured.Row.from_json(e) for e in entries)
        monkeypatch.setattr(measured, "_rows", lambda: rows)

    monkeypatch.setattr(measured, "_device_name", lambda index: H100)
    return use


def _kernel(module: Any, kind: str = "lstm") -> Any:
    return next(k for k in module.kernels() if k.target == kind)


def test_the_shipped_table_is_valid() -> None:
    """A broken table would change which backend runs: the one in the package loads (and is
    in the package: the CI sessions install it)."""
    assert measured.TABLE.is_file()
    rows = measured.load_rows()
    assert all(r.fastest in measured.BACKENDS for r in rows)


def test_bad_tables_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "t.json"
    for text, words in (
        ("{", "not valid JSON"),
        ('{"a": 1}', "expected a JSON list"),
        (json.dumps([_row(fastest="cudnn")]), "fastest must be one of cuda, triton, torch"),
        (json.dumps([_row(**{"pass": "backward"})]), "pass must be one of"),
        (json.dumps([_row(batch=0)]), "must be positive"),
        (json.dumps([{"device": H100}]), "bad row"),
    ):
        bad.write_text(text)
        with pytest.raises(ValueError, match=words):
            measured.load_rows(bad)
    assert measured.load_rows(tmp_path / "missing.json") == ()
    bad.write_text(json.dumps([_row(), _row(batch=128, fastest="torch")]))
    assert [r.fastest for r in measured.load_rows(bad)] == ["cuda", "torch"]


def test_the_nearest_measured_batch_of_the_same_shape_decides() -> None:
    rows = tuple(
        measured.Row.from_json(e)
        for e in (
            _row(batch=2, fastest="torch"),
            _row(batch=16, fastest="cuda"),
            _row(batch=128, fastest="triton"),
            _row(batch=16, fastest="torch", **{"pass": "forward"}),
            _row(batch=16, fastest="triton", head_dim=256, heads=3),
        )
    )

    def winner(batch: int, grad: bool = True, **kw: Any) -> str | None:
        shape = {"device": H100, "kind": "lstm", "dtype": "bfloat16", "heads": 1,
                 "head_dim": 768, **kw}  # fmt: skip
        row = measured.match(rows, batch=batch, needs_grad=grad, **shape)
        return None if row is None else row.fastest

    assert [winner(b) for b in (1, 2, 4, 8, 16, 40, 64, 128, 4096)] == [
        "torch", "torch", "torch", "cuda", "cuda", "cuda", "triton", "triton", "triton",
    ]  # fmt: skip
    assert winner(16, grad=False) == "torch"  # the forward's own row
    assert winner(128, grad=False) == "torch"  # the only forward row answers for all batches
    assert winner(16, heads=3, head_dim=256) == "triton"  # measured in one pass: answers both
    assert winner(16, heads=3, head_dim=256, grad=False) == "triton"
    assert winner(16, kind="gru") is None
    assert winner(16, dtype="float16") is None
    assert winner(16, device="NVIDIA A100-SXM4-80GB") is None


def test_cuda_and_triton_tiers_follow_the_table(table: Any) -> None:
    """Unmeasured: cuda never, triton first (the tiers of the docs). Measured: the named
    backend ranks above the others; cuDNN (``torch``, DEVICE_BEST) above triton where it won."""
    cuda_k, triton_k = _kernel(cuda), _kernel(triton)
    table()
    assert cuda_k.rank(_call()) == Priority.BELOW_REFERENCE
    assert triton_k.rank(_call()) == Priority.FUSED_ON_CHIP
    table(_row(fastest="cuda"))
    assert cuda_k.rank(_call()) > triton_k.rank(_call()) > Priority.DEVICE_BEST
    table(_row(fastest="torch"))
    assert cuda_k.rank(_call()) == Priority.BELOW_REFERENCE
    assert triton_k.rank(_call()) < Priority.DEVICE_BEST
    table(_row(fastest="triton"))
    assert triton_k.rank(_call()) == Priority.FUSED_ON_CHIP > cuda_k.rank(_call())
    table(_row(fastest="cuda", dtype="float16"))  # another dtype: unmeasured
    assert cuda_k.rank(_call()) == Priority.BELOW_REFERENCE


def test_cpu_calls_never_read_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> tuple[measured.Row, ...]:
        raise AssertionError("the table was read for a CPU call")

    monkeypatch.setattr(measured, "_rows", broken)
    cell = LSTM(4, 16)
    call = KernelCall(cell, torch.zeros(2, 3, 4), None, None, True)
    assert measured.fastest(call) is None
    assert _kernel(cuda).rank(call) == Priority.BELOW_REFERENCE
    assert _kernel(triton).rank(call) == triton.CPU_PRIORITY
