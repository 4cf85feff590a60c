"""The worked model-and-task plugin of ``docs/plugins.md`` ("Models and tasks") works as
the page says: its code, run as a plugin module, registers a model and a task that
``rnnkit train`` trains to the task's target."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

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
