"""Exception types and the helpers that make error messages name what went wrong."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class RnnkitError(Exception):
    """Base class of rnnkit's own errors (besides plain ``ValueError``/``TypeError``)."""


class UnknownNameError(RnnkitError, ValueError):
    """A cell, backend, model, task or command name that nothing registered."""


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
    hint = f"; did you mean {', '.join(repr(c) for c in near)}?" if near else ""
    listing = ", ".join(pool) if pool else "(none registered)"
    return UnknownNameError(f"unknown {kind} {name!r}{hint} Registered {kind}s: {listing}")
