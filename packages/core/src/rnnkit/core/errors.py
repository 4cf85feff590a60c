"""Exception types and the helpers that make error messages name what went wrong."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any


class RnnkitError(Exception):
    """Base class of rnnkit's own errors (besides plain ``ValueError``/``TypeError``)."""


class UnknownNameError(RnnkitError, ValueError):
    """A cell, backend, model, task or command name that nothing registered."""


class UnknownKeywordError(RnnkitError, TypeError):
    """A keyword that the cell or model being built does not take (``--set KEY=VALUE`` with a
    wrong key, or a model given a task's keywords it has no use for). ``keyword`` is the
    offending name; the message lists the keywords that are taken."""

    def __init__(self, message: str, keyword: str) -> None:
        super().__init__(message)
        self.keyword = keyword


class BackendUnavailableError(RnnkitError, RuntimeError):
    """A named backend exists but cannot run this call; the message says why."""


class PluginConflictError(RnnkitError, RuntimeError):
    """Two plugins registered the same name; the message names both."""


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` registered names closest to ``name`` (best first)."""
    pool = sorted(set(candidates))
    found = difflib.get_close_matches(name, pool, n=n, cutoff=0.5)
    if not found:
        found = [c for c in pool if name.lower() in c.lower() or c.lower() in name.lower()][:n]
    return found


def unknown_name(kind: str, name: str, candidates: Iterable[str]) -> UnknownNameError:
    """Build the error for an unknown ``kind`` name, suggesting the closest registered ones."""
    pool = sorted(set(candidates))
    near = closest(name, pool)
    hint = f"; did you mean {', '.join(repr(c) for c in near)}?" if near else "."
    listing = ", ".join(pool) if pool else "(none registered)"
    return UnknownNameError(f"unknown {kind} {name!r}{hint} Registered: {listing}")


def check_keywords(
    kind: str, name: str, build: Callable[..., Any], config: Mapping[str, Any]
) -> None:
    """Raise :class:`UnknownKeywordError` when ``config`` holds a keyword that ``build`` (a
    class or a builder function registered as the ``kind`` ``name``) does not take.

    Checked from the signature before the call, so that a ``TypeError`` raised inside a
    builder keeps its own message; a builder taking ``**kwargs`` (which passes them on to the
    cell it builds) accepts every keyword here and is checked where they land.
    """
    try:
        params = inspect.signature(build).parameters.values()
    except (TypeError, ValueError):  # builtins and C extensions without a signature
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    taken = [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    for key in config:
        if key not in taken:
            near = closest(key, taken)
            hint = f"; did you mean {', '.join(repr(c) for c in near)}?" if near else "."
            raise UnknownKeywordError(
                f"{kind} {name!r} takes no keyword {key!r}{hint} "
                f"Its keywords: {', '.join(taken) or '(none)'}",
                key,
            )
