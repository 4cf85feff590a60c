"""The conformance kit over every cell rnnkit-core registers, with every check."""

from __future__ import annotations

import pytest

from rnnkit.core.testing import CHECKS, CellCase


@pytest.mark.parametrize("check", list(CHECKS))
def test_conformance(rnnkit_cell_case: CellCase, check: str) -> None:
    CHECKS[check](rnnkit_cell_case.make)
