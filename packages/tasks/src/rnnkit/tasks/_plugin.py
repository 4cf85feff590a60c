"""rnnkit-tasks' plugin module: registers its tasks and the ``train`` and ``compare`` commands."""

from __future__ import annotations

from rnnkit.core.hookspecs import RegisterCommand, RegisterTask, hookimpl


@hookimpl
def rnnkit_register_tasks(register: RegisterTask) -> None:
    """Register the tasks of rnnkit-tasks."""
    from rnnkit.tasks.registry import builtin_tasks

    for task in builtin_tasks():
        register(task.name, task, description=task.description)


@hookimpl
def rnnkit_register_commands(register: RegisterCommand) -> None:
    """Register ``rnnkit train`` and ``rnnkit compare``."""
    from rnnkit.tasks import cli

    register("train", help=cli.TRAIN_HELP, configure=cli.configure_train, run=cli.run_train)
    register("compare", help=cli.COMPARE_HELP, configure=cli.configure_compare, run=cli.run_compare)
