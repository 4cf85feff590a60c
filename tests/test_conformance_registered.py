"""The conformance kit over every cell registered by every installed plugin."""

from __future__ import annotations

import pytest

from rnnkit.core.testing import CHECKS, CellCase


def test_the_kit_sees_every_plugin(rnnkit_cell_case: CellCase) -> None:
    assert rnnkit_cell_case.make() is not None


@pytest.mark.parametrize("check", list(CHECKS))
def test_conformance(rnnkit_cell_case: CellCase, check: str) -> None:
    CHECKS[check](rnnkit_cell_case.make)
