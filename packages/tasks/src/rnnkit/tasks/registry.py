"""Looking up registered tasks: ``list_tasks(pattern)`` and ``get_task(name)``.

Tasks are registered by plugins through the ``rnnkit_register_tasks`` hook (rnnkit-tasks
registers its own the same way); unknown names raise with the closest registered names.
"""

from __future__ import annotations

import fnmatch

from rnnkit.core.plugins import get_host
from rnnkit.tasks.base import Task


def list_tasks(pattern: str | None = None) -> list[str]:
    """Registered task names, sorted; ``pattern`` is an fnmatch pattern (``"tomita*"``)."""
    names = get_host().tasks.names()
    if pattern:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def get_task(name: str) -> Task:
    """The task registered as ``name``; an unknown name raises ``UnknownNameError``."""
    obj = get_host().tasks.get(name).obj
    if not isinstance(obj, Task):
        raise TypeError(f"task {name!r} is a {type(obj).__name__}, not a rnnkit.tasks.Task")
    return obj
