"""Filtering names by a pattern and printing tables: one behaviour for every listing.

Every ``list`` command (``rnnkit list cells|models|tasks|backends|commands [PATTERN]``) and every
listing function (``list_cells``, ``list_models``, ``list_tasks``, the conformance kit's
``registered_cases``) filters with :func:`matches`, so a pattern selects the same names on the
command line and in Python.

Pattern semantics (always case-insensitive):

- no pattern (``None`` or ``""``): every name;
- a pattern without glob characters (``*``, ``?``, ``[``) matches the names that *contain* it:
  ``"gru"`` selects ``gru``, ``mingru`` and ``paragru``;
- a pattern with glob characters is an :mod:`fnmatch` glob over the whole name:
  ``"gru*"`` selects ``gru`` but not ``mingru``; ``"*lstm"`` selects ``lstm`` and ``slstm``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence

GLOB_CHARS = frozenset("*?[")


def is_glob(pattern: str) -> bool:
    """Whether ``pattern`` holds a glob character (then it must match the whole name)."""
    return any(ch in GLOB_CHARS for ch in pattern)


def matches(name: str, pattern: str | None) -> bool:
    """Whether ``name`` is selected by ``pattern`` (see the module docstring)."""
    if not pattern:
        return True
    name, pattern = name.lower(), pattern.lower()
    if is_glob(pattern):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


def match_names(names: Iterable[str], pattern: str | None) -> list[str]:
    """The names ``pattern`` selects, in their given order."""
    return [n for n in names if matches(n, pattern)]


def format_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """A plain-text table: the header, a rule, then one line per row.

    Columns are left-aligned, padded to their widest cell and separated by two spaces; cells are
    converted with ``str``; trailing blanks are stripped from every line.
    """
    cells = [[str(c) for c in row] for row in rows]
    for row in cells:
        if len(row) != len(header):
            raise ValueError(f"a row has {len(row)} cells for {len(header)} columns: {row!r}")
    widths = [max(len(r[i]) for r in [list(header), *cells]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, cells)])
