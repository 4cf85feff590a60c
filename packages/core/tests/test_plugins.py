"""Plugin host: registration, provenance, broken and duplicate plugins, disabling."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rnnkit.core import LSTM, Kernel, hookimpl
from rnnkit.core.errors import PluginConflictError, UnknownNameError
from rnnkit.core.hookspecs import HOOK_NAMES, RegisterCell, RegisterKernel
from rnnkit.core.plugins import PluginHost, PluginWarning, module_plugin, use_host
from rnnkit.core.reference import reference_forward


class MyLSTM(LSTM):
    """a test cell"""


def _cells_plugin(name: str, cell_name: str) -> Any:
    def rnnkit_register_cells(register: RegisterCell) -> None:
        register(cell_name, MyLSTM)

    return module_plugin(name, rnnkit_register_cells=rnnkit_register_cells)


def test_builtin_core_plugin_is_loaded_from_its_entry_point() -> None:
    host = PluginHost()
    assert {"elman", "lstm", "gru", "slstm"} <= set(host.cells.names())
    core = host.plugins["core"]
    assert core.status == "ok"
    assert core.origin.distribution == "rnnkit-core"
    assert core.origin.version
    assert host.cells.get("lstm").origin.plugin == "core"
    assert "reference/*" in host.kernels.names()


def test_every_hook_is_callable_and_records_what_it_registered() -> None:
    @hookimpl
    def rnnkit_register_kernels(register: RegisterKernel) -> None:
        register(Kernel("mine", "lstm", reference_forward, description="test"))

    plugin = module_plugin(
        "p",
        rnnkit_register_cells=lambda register: register("c1", MyLSTM),
        rnnkit_register_models=lambda register: register("m1", lambda: torch.nn.Identity()),
        rnnkit_register_tasks=lambda register: register("t1", object(), description="a task"),
        rnnkit_register_commands=lambda register: register(
            "hello", help="say hello", configure=lambda p: None, run=lambda a: 0
        ),
    )
    plugin.rnnkit_register_kernels = rnnkit_register_kernels
    host = PluginHost(load_entry_points=False, plugins=[("p", plugin)])
    info = host.plugins["p"]
    assert info.status == "ok"
    assert info.registered == {
        "cells": ["c1"],
        "kernels": ["mine/lstm"],
        "models": ["m1"],
        "tasks": ["t1"],
        "commands": ["hello"],
    }
    assert len(HOOK_NAMES) == 5
    assert host.tasks.get("t1").description == "a task"
    assert host.cells.get("c1").description == "a test cell"  # from the docstring


def test_duplicate_name_is_an_error_naming_both_plugins() -> None:
    with pytest.raises(PluginConflictError, match=r"cell 'twin'.*plugin first.*plugin second"):
        PluginHost(
            load_entry_points=False,
            plugins=[
                ("first", _cells_plugin("first", "twin")),
                ("second", _cells_plugin("second", "twin")),
            ],
        )


def test_duplicate_of_a_builtin_name_is_an_error() -> None:
    with pytest.raises(PluginConflictError, match=r"'lstm'.*core \(rnnkit-core"):
        PluginHost(plugins=[("copycat", _cells_plugin("copycat", "lstm"))])


def test_plugin_raising_in_a_hook_is_reported_and_skipped_whole() -> None:
    def rnnkit_register_cells(register: RegisterCell) -> None:
        register("half", MyLSTM)
        raise RuntimeError("boom")

    bad = module_plugin("bad", rnnkit_register_cells=rnnkit_register_cells)
    good = _cells_plugin("good", "fine")
    with pytest.warns(PluginWarning, match=r"plugin bad was skipped: rnnkit_register_cells raised"):
        host = PluginHost(load_entry_points=False, plugins=[("bad", bad), ("good", good)])
    assert host.plugins["bad"].status == "broken"
    assert "boom" in host.plugins["bad"].error
    assert "half" not in host.cells  # nothing of a failed plugin is kept
    assert "fine" in host.cells


def test_plugin_with_unknown_hook_is_skipped() -> None:
    bad = module_plugin("typo", rnnkit_register_cell=lambda register: None)
    with pytest.warns(PluginWarning, match="unknown hook"):
        host = PluginHost(load_entry_points=False, plugins=[("typo", bad)])
    assert host.plugins["typo"].status == "broken"


def test_plugin_with_wrong_hook_arguments_is_skipped() -> None:
    bad = module_plugin("args", rnnkit_register_cells=lambda registrar: None)
    with pytest.warns(PluginWarning, match="invalid hook implementation"):
        host = PluginHost(load_entry_points=False, plugins=[("args", bad)])
    assert host.plugins["args"].status == "broken"


def test_registering_a_non_cell_is_rejected() -> None:
    bad = module_plugin("notacell", rnnkit_register_cells=lambda register: register("x", int))
    with pytest.warns(PluginWarning, match="must be a Cell subclass"):
        PluginHost(load_entry_points=False, plugins=[("notacell", bad)])


def test_disable_plugins_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNKIT_DISABLE_PLUGINS", "core, somethingelse")
    host = PluginHost()
    assert host.plugins["core"].status == "disabled"
    assert "lstm" not in host.cells


def test_broken_entry_point_import_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata as md

    real = md.entry_points

    def fake(**kw: Any) -> Any:
        eps = list(real(**kw))
        if kw.get("group") == "rnnkit":
            eps.append(md.EntryPoint("ghost", "rnnkit_no_such_module_xyz", "rnnkit"))
        return eps

    monkeypatch.setattr(md, "entry_points", fake)
    with pytest.warns(PluginWarning, match=r"ghost was skipped: import failed"):
        host = PluginHost()
    assert host.plugins["ghost"].status == "broken"
    assert "lstm" in host.cells


def test_unknown_names_suggest_the_closest() -> None:
    host = PluginHost()
    with pytest.raises(UnknownNameError, match=r"unknown cell 'lstn'; did you mean 'lstm'"):
        host.cells.get("lstn")
    with use_host(host):
        from rnnkit.core import create_cell

        with pytest.raises(ValueError, match="did you mean 'gru'"):
            create_cell("gur", input_size=2, hidden_size=2)


_COMPILE_FIRST = """
import sys, torch
from rnnkit.core import LSTM
torch.manual_seed(0)
cell = LSTM(5, 8)
x = torch.randn(2, 4, 5)
y, _ = torch.compile(cell, backend="aot_eager")(x, backend="reference")
y_eager, _ = cell(x, backend="reference")
assert torch.allclose(y, y_eager, rtol=1e-5, atol=1e-6), (y - y_eager).abs().max()
print("ok")
"""


def test_torch_compile_as_the_first_call_of_a_process() -> None:
    """The plugin host is created outside the graph when the first rnnkit call of a process
    runs under torch.compile (dynamo cannot trace pluggy's hook introspection)."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _COMPILE_FIRST], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
