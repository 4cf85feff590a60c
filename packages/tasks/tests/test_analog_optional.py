"""rnnkit-kernels is optional for rnnkit-tasks (the ``analog`` extra): without it the plugin
still registers its tasks and commands, and ``rnnkit.tasks.analog`` says what to install.

The experiments themselves need the simulator: they are tested in the repository's ``tests/``
(``test_analog_experiments.py``), where every distribution is installed.
"""

from __future__ import annotations

import importlib
import sys

import pytest

from rnnkit.core.plugins import PluginHost
from rnnkit.tasks import _plugin


@pytest.fixture
def without_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hide rnnkit-kernels (installed or not) as if it were not installed."""
    for name in list(sys.modules):
        if name.startswith(("rnnkit.kernels", "rnnkit.tasks.analog")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "rnnkit.kernels", None)


@pytest.mark.usefixtures("without_kernels")
def test_plugin_registers_tasks_and_commands_without_kernels() -> None:
    assert _plugin.register_analog_experiments() is False
    host = PluginHost(load_entry_points=False, plugins=[("tasks", _plugin)])
    assert host.plugins["tasks"].status == "ok"
    assert {"train", "compare"} <= set(host.commands.names())
    assert "kws" in host.tasks.names()


@pytest.mark.usefixtures("without_kernels")
def test_analog_subpackage_without_kernels_names_the_extra() -> None:
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'rnnkit-tasks\[analog\]'"):
        importlib.import_module("rnnkit.tasks.analog")
