"""The task registry: ``list_tasks(pattern)``, ``get_task(name)`` and the built-in tasks.

Tasks are registered by plugins through the ``rnnkit_register_tasks`` hook; unknown names raise
with the closest registered names. rnnkit-tasks registers its own the same way: each module
named in :data:`TASK_MODULES` declares its tasks beside their data generators, as a module-level
``TASKS`` tuple, and :func:`builtin_tasks` collects them. Adding a task to an existing module
therefore touches that module only; a new module of tasks is added to :data:`TASK_MODULES`.

Budgets are sized for a 2-core CPU with the ``reference`` backend (from about ten seconds to a
few minutes per task); ``target`` is the test score the default model and budget reach. Both
are measured: see the table in ``docs/tasks.md``. Deviations from the papers are stated in each
task's ``details``.
"""

from __future__ import annotations

import importlib

from rnnkit.core.plugins import get_host
from rnnkit.tasks.base import Task

#: The modules of rnnkit.tasks that declare tasks (``TASKS``), in registration order.
TASK_MODULES: tuple[str, ...] = (
    "digits",
    "audio",
    "synthetic",
    "hmm",
    "forecasting",
    "series",
    "text",
    "recall",
    "dynamics",
    "dsr",
    "epidemic",
    "vessels",
    "breathing",
    "formal",
    "listops",
    "algorithmic",
    "geometry",
    "patterns",
    "recsys",
    "video",
)


def builtin_tasks() -> list[Task]:
    """Every task rnnkit-tasks registers: the ``TASKS`` of each of :data:`TASK_MODULES`."""
    tasks: list[Task] = []
    for name in TASK_MODULES:
        module = importlib.import_module(f"rnnkit.tasks.{name}")
        tasks.extend(module.TASKS)
    return tasks


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
