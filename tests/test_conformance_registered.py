"""The conformance kit over every cell registered by every installed plugin.

These run where every rnnkit distribution and the example plugin are installed and found
through their entry points (nox's ``integration`` session).
"""

from __future__ import annotations

import importlib.metadata as md
from typing import Any

import pytest

from rnnkit.core.cell import Cell
from rnnkit.core.plugins import ENTRY_POINT_GROUP, get_host
from rnnkit.core.testing import CHECKS, CellCase, registered_cases
from rnnkit.core.testing.suite import HIDDEN_SIZE, INPUT_SIZE

#: Cells each installed plugin is known to register (a floor: plugins may register more).
KNOWN_CELLS = {
    "core": {"elman", "lstm", "gru", "slstm"},
    "models": {
        "paragru",
        "paralstm",
        "lru",
        "aaren",
        "deltanet",
        "s5",
        "lssl",
        "mamba",
        "mamba2",
        "indrnn",
        "rhn",
        "hybrid_rnn",
        "leakyrnn",
        "srrnn",
        "gated_deltanet",
        "linear_attention",
        "moneta",
        "yaad",
        "memora",
        "titans",
        "plstm",
        "alrnn",
        "m2rnn",
        "based",
    },
    "mingru": {"mingru", "minlstm"},
}
# Plugins of this repository that the integration session installs but another environment may
# not have: their cells are checked where the plugin is installed, and the test says so where
# it is not.
OPTIONAL_CELLS = {"qrnn": {"qrnn"}}


@pytest.mark.parametrize("plugin", sorted(OPTIONAL_CELLS))
def test_optional_plugin_registers_its_cells(plugin: str) -> None:
    installed = {ep.name for ep in md.entry_points(group=ENTRY_POINT_GROUP)}
    if plugin not in installed:
        pytest.skip(f"the {plugin} plugin (rnnkit-{plugin}) is not installed")
    info = get_host().plugins[plugin]
    assert info.status == "ok", (info.status, info.error)
    assert OPTIONAL_CELLS[plugin] <= set(info.registered.get("cells", []))


def test_the_kit_sees_every_plugin() -> None:
    host = get_host()
    installed = {ep.name for ep in md.entry_points(group=ENTRY_POINT_GROUP)}
    assert installed >= set(KNOWN_CELLS), installed
    not_loaded = {n: (i.status, i.error) for n, i in host.plugins.items() if i.status != "ok"}
    assert set(host.plugins) == installed
    assert not not_loaded, f"installed plugins that did not load: {not_loaded}"

    registered = {
        name: plugin
        for plugin, info in host.plugins.items()
        for name in info.registered.get("cells", [])
    }
    for plugin, cells in KNOWN_CELLS.items():
        assert cells <= {n for n, p in registered.items() if p == plugin}, plugin
    assert set(registered) == set(host.cells.names())

    configs: dict[str, list[dict[str, object]]] = {}
    for case in registered_cases():
        configs.setdefault(case.name, []).append(dict(case.config))
    assert set(configs) == set(registered)
    for name, cases in configs.items():
        declared = [dict(c) for c in host.cells.get(name).obj.test_configs]
        assert cases == declared and len(cases) >= 1, (name, cases, declared)


def test_each_case_builds_a_cell_of_its_registered_class(rnnkit_cell_case: CellCase) -> None:
    cls = get_host().cells.get(rnnkit_cell_case.name).obj.cls
    cell = rnnkit_cell_case.make()
    assert type(cell) is cls and isinstance(cell, Cell)
    # the kit's sizes, unless the configuration sets its own (qrnn: a few qubits)
    sizes = {"input_size": INPUT_SIZE, "hidden_size": HIDDEN_SIZE, **rnnkit_cell_case.config}
    assert (cell.input_size, cell.hidden_size) == (sizes["input_size"], sizes["hidden_size"])


#: The kit's compile check traces each cell with dynamo and AOTAutograd twice (seconds per
#: configuration on 2 cores, the bulk of this file's time): the default run compiles each cell's
#: first test configuration; the others run with the ``experiment`` marker.
COSTLY_CHECKS = frozenset({"compile"})


@pytest.mark.parametrize("check", [c for c in CHECKS if c not in COSTLY_CHECKS])
def test_conformance(rnnkit_cell_case: CellCase, check: str) -> None:
    CHECKS[check](rnnkit_cell_case.make)


def _costly_cases() -> list[Any]:
    seen: set[str] = set()
    params = []
    for case in registered_cases():
        first = case.name not in seen
        seen.add(case.name)
        for check in sorted(COSTLY_CHECKS):
            marks = () if first else (pytest.mark.experiment,)
            params.append(pytest.param(case, check, id=f"{case.id}-{check}", marks=marks))
    return params


@pytest.mark.parametrize(("case", "check"), _costly_cases())
def test_costly_conformance(case: CellCase, check: str) -> None:
    CHECKS[check](case.make)
