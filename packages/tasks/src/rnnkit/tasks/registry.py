"""Looking up registered tasks: ``list_tasks(pattern)`` and ``get_task(name)``.

Tasks are registered by plugins through the ``rnnkit_register_tasks`` hook (rnnkit-tasks
registers its own the same way); unknown names raise with the closest registered names.
"""

from __future__ import annotations

from rnnkit.core.plugins import get_host
from rnnkit.tasks.base import Task


def list_tasks(pattern: str | None = None) -> list[str]:
    """Registered task names, sorted, selected by ``pattern`` as ``rnnkit list tasks PATTERN``.

    A pattern without glob characters matches the names containing it (``"charlm"``), one with
    them is a glob over the whole name (``"tomita*"``); case-insensitive (see
    :mod:`rnnkit.core.listing`).
    """
    return get_host().tasks.names(pattern)


def get_task(name: str) -> Task:
    """The task registered as ``name``; an unknown name raises ``UnknownNameError``."""
    obj = get_host().tasks.get(name).obj
    if not isinstance(obj, Task):
        raise TypeError(f"task {name!r} is a {type(obj).__name__}, not a rnnkit.tasks.Task")
    return obj
