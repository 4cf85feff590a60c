"""Issue 15, bad input: a step range that would make a state space cell's discretisation
unstable (a step that is not a finite positive number, or an empty range) is refused at
construction by every SSM cell, with a ``ValueError`` naming the arguments."""

from __future__ import annotations

import math
from typing import Any

import pytest

from rnnkit.core.api import create_cell

#: each SSM cell with a tiny configuration it accepts
CELLS: dict[str, dict[str, Any]] = {
    "s4d": {"hidden_size": 4},
    "s5": {"hidden_size": 8, "blocks": 1},
    "lssl": {"hidden_size": 4},
    "mamba": {"hidden_size": 8, "d_state": 2},
    "mamba2": {"hidden_size": 8, "d_state": 2, "headdim": 4},
}

BAD_RANGES: list[dict[str, float]] = [
    {"dt_min": 0.0},
    {"dt_min": -1e-3},
    {"dt_min": 0.2, "dt_max": 0.1},
    {"dt_max": math.inf},
    {"dt_min": math.inf, "dt_max": math.inf},
    {"dt_max": math.nan},
    {"dt_min": math.nan},
]


@pytest.mark.parametrize("name", list(CELLS))
@pytest.mark.parametrize("bad", BAD_RANGES, ids=str)
def test_an_unstable_step_range_is_refused_at_construction(
    name: str, bad: dict[str, float]
) -> None:
    with pytest.raises(ValueError, match=r"0 < dt_min <= dt_max < inf.*dt_min=.*dt_max="):
        create_cell(name, input_size=4, **CELLS[name], **bad)


@pytest.mark.parametrize("name", list(CELLS))
def test_a_large_finite_step_range_is_accepted(name: str) -> None:
    # a stable discretisation for any finite dt > 0 (exp(dt A) and the bilinear map with
    # Re A < 0 are contractions): only non-finite or non-positive steps are refused
    cell = create_cell(name, input_size=4, **CELLS[name], dt_min=1.0, dt_max=100.0)
    assert cell.input_size == 4
