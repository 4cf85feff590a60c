"""pytest plugin (entry point ``pytest11: rnnkit``): parametrizes ``rnnkit_cell_case`` over
every registered cell and adds ``--rnnkit-cells PATTERN``.

Kept import-light: rnnkit and torch are only imported when a test asks for the cases.
"""

from __future__ import annotations

from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rnnkit")
    group.addoption(
        "--rnnkit-cells",
        default=None,
        metavar="PATTERN",
        help="registered cells the rnnkit conformance kit runs on: names containing PATTERN, "
        "or matching it as a glob when it has * ? [ (as `rnnkit list cells PATTERN`)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "rnnkit_cell_case" not in metafunc.fixturenames:
        return
    from rnnkit.core.testing.suite import registered_cases

    pattern: Any = metafunc.config.getoption("--rnnkit-cells")
    cases = registered_cases(pattern)
    metafunc.parametrize("rnnkit_cell_case", cases, ids=[c.id for c in cases])
