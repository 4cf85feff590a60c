"""End to end against really installed distributions: the ``rnnkit`` executable, entry points."""

from __future__ import annotations

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rnnkit.core.plugins import get_host

DISTS = [
    "rnnkit-core",
    "rnnkit-kernels",
    "rnnkit-models",
    "rnnkit-tasks",
    "rnnkit",
    "rnnkit-mingru",
]


def rnnkit(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("rnnkit") or shutil.which("rnnkit", path=os.path.dirname(sys.executable))
    assert exe is not None, "the rnnkit console script is not installed"
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=300, env=full_env, check=False
    )


def rows(out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in out.splitlines()[2:] if line.strip()}


@pytest.mark.parametrize("dist", DISTS)
def test_every_distribution_is_installed_with_one_version(dist: str) -> None:
    assert md.version(dist) == md.version("rnnkit-core")


@pytest.mark.parametrize("dist", DISTS)
def test_every_distribution_ships_the_repository_licence(dist: str) -> None:
    # Each distribution keeps its own copy of LICENSE (hatchling cannot reach above the
    # package folder); the installed copy must be the repository's text, declared in metadata.
    meta = md.metadata(dist)
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    shipped = [f for f in md.files(dist) or [] if f.name == "LICENSE"]
    assert len(shipped) == 1, md.files(dist)
    repo_licence = Path(__file__).parents[1] / "LICENSE"
    assert shipped[0].read_text(encoding="utf-8") == repo_licence.read_text(encoding="utf-8")


def test_meta_distribution_pins_siblings_exactly() -> None:
    requires = md.requires("rnnkit") or []
    version = md.version("rnnkit")
    for sibling in ("rnnkit-core", "rnnkit-kernels", "rnnkit-models", "rnnkit-tasks"):
        assert any(r.replace(" ", "").startswith(f"{sibling}=={version}") for r in requires), (
            requires
        )


def test_list_cells_shows_every_cell_with_its_plugin_of_origin() -> None:
    result = rnnkit("list", "cells")
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    for name in ("elman", "lstm", "gru", "slstm"):
        assert table[name][1:3] == ["core", "rnnkit-core"]
    assert table["mingru"][1:3] == ["mingru", "rnnkit-mingru"]
    # every cell the installed plugins register, no more, each with the plugin that did
    cells = list(get_host().cells)
    assert set(table) == {entry.name for entry in cells}
    for entry in cells:
        assert table[entry.name][1:3] == [entry.origin.plugin, entry.origin.distribution]


# The repository's other plugins: (distribution, entry point, the models it registers). The
# integration session installs them; elsewhere their checks skip and say why.
EXTRA_PLUGINS = [
    ("rnnkit-qrnn", "qrnn", ["qrnn_classifier"]),
    ("rnnkit-lion", "lion", ["lion_classifier"]),
]


def _installed(dist: str) -> bool:
    try:
        md.version(dist)
    except md.PackageNotFoundError:
        return False
    return True


@pytest.mark.parametrize(("dist", "plugin", "models"), EXTRA_PLUGINS)
def test_list_models_shows_each_plugin_model_with_its_plugin(
    dist: str, plugin: str, models: list[str]
) -> None:
    if not _installed(dist):
        pytest.skip(f"{dist} is not installed")
    assert md.version(dist) == md.version("rnnkit-core")
    meta = md.metadata(dist)
    assert meta["License-Expression"] == "Apache-2.0"
    result = rnnkit("list", "models")
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    for model in models:
        assert table[model][1:3] == [plugin, dist]


def test_plugins_command_lists_every_builtin_and_the_example_plugin() -> None:
    result = rnnkit("plugins")
    assert result.returncode == 0, result.stderr
    table = rows(result.stdout)
    expected = {
        "core": "rnnkit-core",
        "kernels": "rnnkit-kernels",
        "models": "rnnkit-models",
        "tasks": "rnnkit-tasks",
        "mingru": "rnnkit-mingru",
    }
    for plugin, dist in expected.items():
        assert table[plugin][1] == dist
        assert table[plugin][2] == md.version(dist)
        assert table[plugin][3] == "ok"


def test_disable_plugins_environment_variable() -> None:
    result = rnnkit("list", "cells", env={"RNNKIT_DISABLE_PLUGINS": "rnnkit-mingru"})
    assert result.returncode == 0, result.stderr
    assert "mingru" not in rows(result.stdout)
    result = rnnkit("plugins", env={"RNNKIT_DISABLE_PLUGINS": "mingru"})
    assert rows(result.stdout)["mingru"][3] == "disabled"


def test_info_and_demo_run() -> None:
    info = rnnkit("info")
    assert info.returncode == 0, info.stderr
    assert "rnnkit-kernels" in info.stdout and "reference/*" in info.stdout
    demo = rnnkit("demo", "--cell", "mingru", "--time", "4")
    assert demo.returncode == 0, demo.stderr
    assert "output    y (2, 4, 32)" in demo.stdout


def test_bad_cli_input_is_a_clean_error() -> None:
    result = rnnkit("demo", "--cell", "mingr")
    assert result.returncode == 2
    assert "did you mean 'mingru'" in result.stderr
    assert "Traceback" not in result.stderr
