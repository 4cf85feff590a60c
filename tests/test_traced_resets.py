"""A NaN in one episode stays in it under ``torch.compile`` and ``torch.export``.

Every registered cell on its default backend (``auto``), compiled (``aot_eager``,
``fullgraph=True``) and exported, in float32 (in float64 the gated cells' backends write with
``out=`` and do not compile with ``fullgraph=True``): with a NaN input in the first episode of
example 0 and a reset at step 4 of both examples, the outputs and the final state after the
reset equal the second episode run alone on ``reference``. The reference loops restart with a
select; a kernel that restarts by multiplying the state with a zero gate carries ``0 * NaN``
on, and eager mode's check-and-rescan of the linear scan is data-dependent control flow that
a traced program cannot hold (``docs/cell-abi.md``, "NaN in, NaN out"). Each compile or export
costs seconds on 2 cores: the default run covers :data:`REPRESENTATIVE`; the other cells run
with the ``experiment`` marker.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch

from rnnkit.core.plugins import get_host
from rnnkit.core.testing.numerics import rel_rms, tolerance
from rnnkit.core.testing.suite import HIDDEN_SIZE, INPUT_SIZE

# one cell per family that restarts by arithmetic: the linear scan, the chunked matrix state,
# the Miras exact update
REPRESENTATIVE = frozenset({"lru", "gated_deltanet", "titans"})


def _cases() -> list[Any]:
    return [
        pytest.param(
            e.name,
            e.obj.test_configs[0] if e.obj.test_configs else {},
            mode,
            id=f"{e.name}-{mode}",
            marks=() if e.name in REPRESENTATIVE else pytest.mark.experiment,
        )
        for e in get_host().cells
        for mode in ("compile", "export")
    ]


class _Outputs(torch.nn.Module):
    def __init__(self, cell: torch.nn.Module) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: torch.Tensor, resets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y, final = self.cell(x, resets=resets)
        return (y, *final)


def test_the_representatives_are_registered() -> None:
    assert {e.name for e in get_host().cells} >= REPRESENTATIVE


@pytest.mark.parametrize(("name", "kw", "mode"), _cases())
def test_a_nan_before_a_reset_stays_before_it(name: str, kw: dict[str, Any], mode: str) -> None:
    torch.manual_seed(0)
    sizes = {"input_size": INPUT_SIZE, "hidden_size": HIDDEN_SIZE, **kw}
    cell = get_host().cells.get(name).obj.cls(**sizes)
    x = torch.randn(2, 8, cell.input_size)
    x[0, 1] = math.nan
    resets = torch.zeros(2, 8, dtype=torch.bool)
    resets[:, 4] = True
    model = _Outputs(cell)
    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo's and export's notices are not failures
        if mode == "compile":
            got = torch.compile(model, backend="aot_eager", fullgraph=True)(x, resets)
        else:
            got = torch.export.export(model, (x, resets)).module()(x, resets)
    want_y, want_final = cell(x[:, 4:], backend="reference")
    y, *final = got
    assert torch.isfinite(y[:, 4:]).all(), f"{name}: the NaN before the reset reached past it"
    tol = tolerance(torch.float32)
    assert rel_rms(y[:, 4:], want_y) < tol
    for f, w in zip(final, want_final, strict=True):
        assert torch.isfinite(f).all() and rel_rms(f, w) < tol
