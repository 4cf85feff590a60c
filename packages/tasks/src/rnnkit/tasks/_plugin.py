"""rnnkit-tasks' plugin module: registers its tasks and the ``train`` command."""

from __future__ import annotations

from rnnkit.core.hookspecs import RegisterTask, hookimpl


@hookimpl
def rnnkit_register_tasks(register: RegisterTask) -> None:
    """Register the tasks of rnnkit-tasks."""
