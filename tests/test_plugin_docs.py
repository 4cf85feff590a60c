"""The plugins of ``docs/plugins.md`` work as the page says: the worked model-and-task plugin
("Models and tasks"), whose code, run as a plugin module, registers a model and a task that
``rnnkit train`` trains to the task's target, and the cell plugin of "A plugin in five
files"."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest

from rnnkit.core.cli import main
from rnnkit.core.plugins import PluginHost, use_host

PAGE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def _example() -> str:
    text = PAGE.read_text()
    section = text[text.index("## Models and tasks") : text.index("## Testing a plugin")]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def test_the_documented_model_and_task_plugin_trains(tmp_path: Path) -> None:
    plugin = types.ModuleType("running_max_plugin")
    exec(compile(_example(), str(PAGE), "exec"), plugin.__dict__)  # the page's code as is
    with use_host(PluginHost(plugins=[("running_max", plugin)])):
        out = tmp_path / "run"
        assert main(["train", "--task", "running_max", "--out", str(out)]) == 0
    final = json.loads((out / "final.json").read_text())
    assert final["task"] == "running_max" and final["model"] == "running_max_net"
    assert final["test"]["mse"] <= 0.01  # the task's target


def test_the_documented_cell_plugin_registers_its_test_configs() -> None:
    """ "A plugin in five files": plugin.py as the page writes it, over the cell ABI page's
    complete example as ``rnnkit_mycell.cell.MyCell``; registration checks test_configs
    against the constructor, so a keyword MyCell lacks would fail here."""
    abi = (PAGE.parent / "cell-abi.md").read_text().split("## 7. A complete example", 1)[1]
    cell_module = types.ModuleType("rnnkit_mycell.cell")
    (cell_code,) = re.findall(r"```python\n(.*?)```", abi, flags=re.S)[:1]
    exec(compile(cell_code, "cell-abi.md", "exec"), cell_module.__dict__)
    cell_module.MyCell = cell_module.LeakyTanh  # type: ignore[attr-defined]
    text = PAGE.read_text()
    section = text[text.index("`plugin.py` implements hooks") : text.index("## Kernels")]
    (plugin_code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    plugin = types.ModuleType("rnnkit_mycell.plugin")
    package = types.ModuleType("rnnkit_mycell")
    package.cell = cell_module  # type: ignore[attr-defined]
    modules = {"rnnkit_mycell": package, "rnnkit_mycell.cell": cell_module}
    with pytest.MonkeyPatch.context() as mp:
        for name, module in modules.items():
            mp.setitem(sys.modules, name, module)
        exec(compile(plugin_code, str(PAGE), "exec"), plugin.__dict__)
    host = PluginHost(load_entry_points=False, plugins=[("mycell", plugin)])
    assert host.plugins["mycell"].status == "ok", host.plugins["mycell"].error
    entry = host.cells.get("mycell")
    for config in entry.obj.test_configs:
        entry.obj.cls(input_size=5, hidden_size=6, **config)
