"""rnnkit's public conformance kit: checks any cell, built-in or third-party, against the ABI.

Use it as a function::

    from rnnkit.core.testing import check_cell
    check_cell(lambda: MyCell(input_size=5, hidden_size=6))

or as a pytest base class (one test per check)::

    from rnnkit.core.testing import CellConformance

    class TestMyCell(CellConformance):
        def make_cell(self):
            return MyCell(input_size=5, hidden_size=6)

or over every registered cell, through the pytest plugin this package installs: a test that
takes the ``rnnkit_cell_case`` argument is run for every registered cell and test config
(``--rnnkit-cells PATTERN`` narrows the set; a pattern matching no cell is an error).

Every check returns a :class:`CheckReport` (which backends ran which configurations, which
were skipped and why); inside pytest the ``rnnkit`` plugin prints them at the end of the run.
"""

from rnnkit.core.testing.checks import CHECKS, check_cell, make_problem, run_cell
from rnnkit.core.testing.numerics import TOLERANCES, assert_close, rel_rms, tolerance
from rnnkit.core.testing.report import CheckReport
from rnnkit.core.testing.suite import CellCase, CellConformance, registered_cases

__all__ = [
    "CHECKS",
    "TOLERANCES",
    "CellCase",
    "CellConformance",
    "CheckReport",
    "assert_close",
    "check_cell",
    "make_problem",
    "registered_cases",
    "rel_rms",
    "run_cell",
    "tolerance",
]
