"""Every registered cell under ``torch.compile`` with the default compiler (inductor) and its
default backend (``auto``): outputs, final states and every gradient equal eager mode.

One configuration per cell keeps this to a compile or two each; the conformance kit's compile
check runs every configuration on ``aot_eager``, which traces the same graphs without
inductor's code generation. Inductor's own passes are what failed here before (LRU's complex
scan: ``auto_functionalized_v2 was not removed``), so this sweep keeps them honest.

Each inductor compile costs seconds to tens of seconds on 2 cores, so the default run covers
one cell per kernel family (:data:`REPRESENTATIVE`); the other cells run with the
``experiment`` marker (``nox -s experiments``).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rnnkit.core.plugins import get_host
from rnnkit.core.testing.suite import HIDDEN_SIZE, INPUT_SIZE

# one cell per kernel family: gated loop, stabilised gated loop, complex diagonal scan, Newton
# with 2x2 blocks, chunked matrix state with decay, selective diagonal scan
REPRESENTATIVE = frozenset({"lstm", "slstm", "lru", "paralstm", "gated_deltanet", "mamba"})


def _cases() -> list[Any]:
    return [
        pytest.param(
            e.name,
            e.obj.test_configs[0] if e.obj.test_configs else {},
            id=e.name,
            marks=() if e.name in REPRESENTATIVE else pytest.mark.experiment,
        )
        for e in get_host().cells
    ]


def test_the_representatives_are_registered() -> None:
    assert {e.name for e in get_host().cells} >= REPRESENTATIVE


def _run(cell: torch.nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    y, final = cell(x)
    outputs = [y, *final]
    loss = sum((o.abs() if o.is_complex() else o).square().sum() for o in outputs)
    leaves = [x, *(p for p in cell.parameters() if p.requires_grad)]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return outputs, [g for g in grads if g is not None]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "kw"), _cases())
def test_inductor_matches_eager(name: str, kw: dict[str, Any]) -> None:
    torch.manual_seed(0)
    cell = get_host().cells.get(name).obj.cls(INPUT_SIZE, HIDDEN_SIZE, **kw)
    x = torch.randn(2, 5, INPUT_SIZE, requires_grad=True)
    torch._dynamo.reset()  # each cell compiles afresh (no recompile limit across cells)
    want, want_grads = _run(cell, x)
    got, got_grads = _run(torch.compile(cell), x)  # type: ignore[arg-type]
    assert len(got) == len(want) and len(got_grads) == len(want_grads)
    for g, w in zip([*got, *got_grads], [*want, *want_grads], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
