"""``rnnkit list backends --cell NAME``: the ranking ``backend="auto"`` applies to one call."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rnnkit.core import Kernel, KernelCall
from rnnkit.core import _plugin as core_plugin
from rnnkit.core.cells import Elman
from rnnkit.core.cli import main
from rnnkit.core.dispatch import select
from rnnkit.core.hookspecs import RegisterCell
from rnnkit.core.plugins import PluginHost, module_plugin, use_host
from rnnkit.core.ranking import probe_call, rank_backends
from rnnkit.core.reference import reference_forward


def _fast_priority(call: KernelCall) -> int:
    return 7 if call.needs_grad else 3


def _fast_supports(call: KernelCall) -> str | None:
    return "float64 is not supported" if call.x.dtype == torch.float64 else None


KERNELS = (
    Kernel("fast", "lstm", reference_forward, priority=_fast_priority, supports=_fast_supports),
    Kernel("gpuonly", "gated", reference_forward, priority=9, available=lambda: "no CUDA device"),
    Kernel("other", "gru", reference_forward, priority=50),
)


def _host(*kernels: Kernel) -> PluginHost:
    def hook(register: Any) -> None:
        for k in kernels:
            register(k)

    # core alone plus the test kernels: installed backends must not interfere
    return PluginHost(
        load_entry_points=False,
        plugins=[
            ("core", core_plugin),
            ("extra", module_plugin("extra", rnnkit_register_kernels=hook)),
        ],
    )


def _table(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[list[list[str]], str]:
    assert main(["list", "backends", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    # header line, column names, rule, rows, "backend="auto" picks ..."
    return [line.split(None, 5) for line in lines[3:-1]], lines[-1]


def test_core_alone_has_only_the_reference_backend(capsys: pytest.CaptureFixture[str]) -> None:
    with use_host(_host()):
        rows, picked = _table(capsys, "--cell", "lstm")
    assert rows == [["reference", "*", "0", "REFERENCE", "picked", "yes"]]
    assert picked == 'backend="auto" picks reference'


def test_ranking_orders_by_priority_and_says_why_not(capsys: pytest.CaptureFixture[str]) -> None:
    with use_host(_host(*KERNELS)):
        rows, picked = _table(capsys, "--cell", "lstm")
        # the gru kernel does not target lstm; gpuonly (gated) does but cannot run here
        assert [r[0] for r in rows] == ["gpuonly", "fast", "reference"]
        assert rows[0] == ["gpuonly", "gated", "9", "-", "no:", "no CUDA device"]
        assert rows[1] == ["fast", "lstm", "7", "-", "picked", "yes"]
        assert picked == 'backend="auto" picks fast'

        # the priority is a function of the call: lower without gradients, still first
        rows, _ = _table(capsys, "--cell", "lstm", "--inference")
        assert rows[1][:5] == ["fast", "lstm", "3", "-", "picked"]

        rows, picked = _table(capsys, "--cell", "lstm", "--dtype", "float64", "--time", "3")
        assert rows[1] == ["fast", "lstm", "7", "-", "no:", "float64 is not supported"]
        assert rows[2][:5] == ["reference", "*", "0", "REFERENCE", "picked"]
        assert picked == 'backend="auto" picks reference'

        # a pattern keeps the matching backends; the pick is still reported
        rows, picked = _table(capsys, "REF", "--cell", "lstm")
        assert [r[0] for r in rows] == ["reference"] and picked.endswith("picks fast")


def test_ranking_agrees_with_select_for_every_call() -> None:
    with use_host(_host(*KERNELS)):
        for cell in ("lstm", "gru", "elman"):
            for inference in (False, True):
                for dtype in ("float32", "float64"):
                    call = probe_call(cell, dtype=dtype, inference=inference, batch=2, time=3)
                    ranking = rank_backends(call)
                    assert ranking.chosen is select(call, "auto")
                    assert [r.priority for r in ranking.kernels] == sorted(
                        (r.priority for r in ranking.kernels), reverse=True
                    )
                    assert sum(r.chosen for r in ranking.kernels) == 1


def test_ranking_shows_a_cell_s_backend_priority() -> None:
    with use_host(_host(*KERNELS)):
        call = probe_call("lstm", batch=2, time=3)
        call.cell.set_backend_priority("fast", 0)
        ranking = rank_backends(call)
    assert [(r.kernel.backend, r.priority) for r in ranking.kernels] == [
        ("gpuonly", 9),
        ("fast", 0),
        ("reference", 0),
    ]
    assert ranking.chosen is not None and ranking.chosen.backend == "fast"  # "fast/lstm" first


def test_ranking_under_rnnkit_backend(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with use_host(_host(*KERNELS)):
        call = probe_call("lstm", batch=2, time=3)
        monkeypatch.setenv("RNNKIT_BACKEND", "reference")
        ranking = rank_backends(call)
        assert ranking.forced == "reference" and ranking.error is None
        assert ranking.chosen is not None and ranking.chosen.backend == "reference"
        _, picked = _table(capsys, "--cell", "lstm")
        assert picked == 'backend="auto" picks reference (forced by RNNKIT_BACKEND=reference)'
        # an unknown name is the ranking's error, not an exception
        monkeypatch.setenv("RNNKIT_BACKEND", "nope")
        ranking = rank_backends(call)
        assert ranking.forced == "nope" and ranking.chosen is None
        assert ranking.error is not None and "unknown backend 'nope'" in ranking.error


def test_probe_call_builds_the_described_call() -> None:
    call = probe_call("gru", batch=3, time=5, heads=2, dtype="float64", inference=True)
    assert call.x.shape == (3, 5, 8) and call.x.dtype == torch.float64
    assert call.cell.heads == 2 and call.cell.hidden_size == 32
    assert next(call.cell.parameters()).dtype == torch.float64
    assert call.state is None and call.resets is None and not call.needs_grad
    resets = probe_call("lstm", batch=2, time=4, resets=True).resets
    assert resets is not None and resets.shape == (2, 4) and not bool(resets.any())


def test_bad_calls_are_clean_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with use_host(_host()):
        assert main(["list", "backends", "--cell", "lstn"]) == 2
        assert "did you mean 'lstm'" in capsys.readouterr().err
        assert main(["list", "backends", "--cell", "lstm", "--batch", "0"]) == 2
        assert "must be positive" in capsys.readouterr().err
        assert main(["list", "cells", "--cell", "lstm"]) == 2
        assert "only with `rnnkit list backends --cell NAME`" in capsys.readouterr().err


def test_heads_only_for_cells_that_take_them() -> None:
    class NoHeads(Elman):
        def __init__(self, input_size: int, hidden_size: int) -> None:
            super().__init__(input_size, hidden_size)

    def cells(register: RegisterCell) -> None:
        register("noheads", NoHeads, description="test cell without heads")

    host = PluginHost(
        load_entry_points=False,
        plugins=[("core", core_plugin), ("t", module_plugin("t", rnnkit_register_cells=cells))],
    )
    with use_host(host):
        assert probe_call("noheads").cell.hidden_size == 32
        with pytest.raises(ValueError, match="cell 'noheads' takes no heads"):
            probe_call("noheads", heads=2)


class _HeadsByKeywords(Elman):
    """takes ``heads`` through ``**kw``, passed on to the base class."""

    def __init__(self, input_size: int, hidden_size: int, **kw: Any) -> None:
        super().__init__(input_size, hidden_size, **kw)


def test_heads_reach_a_cell_that_takes_them_through_kwargs() -> None:
    def cells(register: RegisterCell) -> None:
        register("kwheads", _HeadsByKeywords)

    host = PluginHost(
        load_entry_points=False,
        plugins=[("core", core_plugin), ("t", module_plugin("t", rnnkit_register_cells=cells))],
    )
    with use_host(host):
        assert probe_call("kwheads", heads=2).cell.heads == 2
