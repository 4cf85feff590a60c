"""The matrix-state bench refuses non-positive sizes with argparse's one-line error (exit 2)
instead of a traceback from deep in the kernel."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "tools" / "bench" / "matrix_state.py"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("matrix_state_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("flag", "value"), [("--times", "0"), ("--threads", "0")])
def test_matrix_state_bench_refuses_non_positive_sizes(
    flag: str, value: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _bench()
    monkeypatch.setattr("sys.argv", ["matrix_state.py", flag, value])
    with pytest.raises(SystemExit) as stop:
        bench._args()
    assert stop.value.code == 2
    assert f"error: {flag} must be positive, got 0" in capsys.readouterr().err
