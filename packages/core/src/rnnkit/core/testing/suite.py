"""pytest-facing parts of the conformance kit: a base class and the registered-cell cases."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rnnkit.core.cell import Cell
from rnnkit.core.listing import matches
from rnnkit.core.plugins import get_host
from rnnkit.core.testing import checks

#: Sizes the kit builds registered cells with (odd, divisible by the head counts 1, 2, 3).
INPUT_SIZE, HIDDEN_SIZE = 5, 6


@dataclass(frozen=True)
class CellCase:
    """One registered cell with one of its test configurations."""

    name: str
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        """A readable pytest id: ``lstm`` or ``lstm[heads=2]``."""
        if not self.config:
            return self.name
        return f"{self.name}[{','.join(f'{k}={v}' for k, v in self.config.items())}]"

    def make(self) -> Cell[Any]:
        """A fresh cell of this case."""
        cls = get_host().cells.get(self.name).obj.cls
        config = {"input_size": INPUT_SIZE, "hidden_size": HIDDEN_SIZE, **self.config}
        return cls(**config)


def registered_cases(pattern: str | None = None, *, strict: bool = False) -> list[CellCase]:
    """A case for every registered cell and test configuration.

    ``pattern`` selects cells by name as ``rnnkit list cells PATTERN`` does (see
    :mod:`rnnkit.core.listing`); with ``strict``, a pattern that selects no cell raises
    ``ValueError`` naming the registered cells (a typo must not select nothing silently).
    """
    cases: list[CellCase] = []
    cells = get_host().cells
    for entry in cells:
        if not matches(entry.name, pattern):
            continue
        cases.extend(CellCase(entry.name, dict(cfg)) for cfg in entry.obj.test_configs)
    if strict and pattern is not None and not cases:
        raise ValueError(
            f"{pattern!r} matches no registered cell (registered: {', '.join(cells.names())})"
        )
    return cases


class CellConformance:
    """Subclass in your tests and implement :meth:`make_cell`; one test per check (each
    check's report, what it ran and skipped, appears in pytest's "rnnkit conformance"
    summary)."""

    def make_cell(self) -> Cell[Any]:
        """A fresh cell to check (any dtype; the kit converts)."""
        raise NotImplementedError("implement make_cell() in your CellConformance subclass")

    def test_state_spec(self) -> None:
        checks.check_state_spec(self.make_cell)

    def test_recur(self) -> None:
        checks.check_recur(self.make_cell)

    def test_step_matches_forward(self) -> None:
        checks.check_step_matches_forward(self.make_cell)

    def test_chunking(self) -> None:
        checks.check_chunking(self.make_cell)

    def test_resets(self) -> None:
        checks.check_resets(self.make_cell)

    def test_backends(self) -> None:
        checks.check_backends(self.make_cell)

    def test_nan_propagation(self) -> None:
        checks.check_nan_propagation(self.make_cell)

    def test_compile(self) -> None:
        checks.check_compile(self.make_cell)

    def test_empty_batch(self) -> None:
        checks.check_empty_batch(self.make_cell)

    def test_bad_input(self) -> None:
        checks.check_bad_input(self.make_cell)

    def test_lengths(self) -> None:
        checks.check_lengths(self.make_cell)
