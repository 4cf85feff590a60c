"""Looking up and building registered cells by name."""

from __future__ import annotations

from typing import Any

from rnnkit.core.cell import Cell
from rnnkit.core.errors import check_keywords
from rnnkit.core.plugins import get_host


def list_cells(pattern: str | None = None) -> list[str]:
    """Names of the registered cells, sorted, selected by ``pattern``.

    A pattern without glob characters matches the names containing it (``"gru"``), one with
    them is a glob over the whole name (``"*lstm"``); case-insensitive (see
    :mod:`rnnkit.core.listing`).
    """
    return get_host().cells.names(pattern)


def get_cell_class(name: str) -> type[Cell[Any]]:
    """The class registered as ``name``; an unknown name raises with the closest names."""
    return get_host().cells.get(name).obj.cls


def create_cell(name: str, **config: Any) -> Cell[Any]:
    """Build the cell registered as ``name``.

    Example: ``create_cell("lstm", input_size=8, hidden_size=16)``. A keyword the cell does
    not take raises :class:`~rnnkit.core.errors.UnknownKeywordError` naming it and listing
    the cell's keywords.
    """
    cls = get_cell_class(name)
    check_keywords("cell", name, cls, config)
    return cls(**config)
