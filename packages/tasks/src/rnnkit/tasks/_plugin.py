"""rnnkit-tasks' plugin module: registers its tasks, the ``train``, ``compare``, ``eval``,
``predict``, ``generate``, ``push`` and ``pull`` commands and, when rnnkit-kernels is
installed, the ``kws`` and ``charlm`` experiments of its ``rnnkit analog`` command."""

from __future__ import annotations

import importlib.util
import warnings

from rnnkit.core.hookspecs import RegisterCommand, RegisterTask, hookimpl
from rnnkit.core.plugins import PluginWarning


@hookimpl
def rnnkit_register_tasks(register: RegisterTask) -> None:
    """Register the tasks of rnnkit-tasks."""
    from rnnkit.tasks.registry import builtin_tasks

    for task in builtin_tasks():
        register(task.name, task, description=task.description)


@hookimpl
def rnnkit_register_commands(register: RegisterCommand) -> None:
    """Register ``rnnkit train``, ``compare``, ``data``, ``eval``, ``predict``, ``generate``,
    ``passkey``, ``extract-dfa``, ``continual``, ``push`` and ``pull``; add ``kws`` and
    ``charlm`` to
    rnnkit-kernels' ``rnnkit analog`` (the host runs every hook before it builds the command
    line, so they are in place when ``rnnkit analog``'s parser is configured)."""
    from rnnkit.tasks import automata, cli, continual, downloads, hub, passkey_length, reuse_cli

    register("train", help=cli.TRAIN_HELP, configure=cli.configure_train, run=cli.run_train)
    register("compare", help=cli.COMPARE_HELP, configure=cli.configure_compare, run=cli.run_compare)
    register(
        "data",
        help=downloads.DATA_HELP,
        configure=downloads.configure_data,
        run=downloads.run_data,
    )
    reuse_cli.register_commands(register)
    register(
        "passkey",
        help=passkey_length.PASSKEY_HELP,
        configure=passkey_length.configure_passkey,
        run=passkey_length.run_passkey,
    )
    register(
        "extract-dfa",
        help=automata.EXTRACT_HELP,
        configure=automata.configure_extract,
        run=automata.run_extract,
    )
    register(
        "continual",
        help=continual.CONTINUAL_HELP,
        configure=continual.configure_continual,
        run=continual.run_continual_command,
    )
    register("push", help=hub.PUSH_HELP, configure=hub.configure_push, run=hub.run_push)
    register("pull", help=hub.PULL_HELP, configure=hub.configure_pull, run=hub.run_pull)
    register_analog_experiments()


def register_analog_experiments() -> bool:
    """Add the analog experiments to ``rnnkit analog`` if rnnkit-kernels is installed.

    Returns whether they were added. rnnkit-kernels is optional (the ``analog`` extra): without
    it nothing happens; if it is installed but its simulator fails to import, a
    :class:`~rnnkit.core.plugins.PluginWarning` says so and ``train``/``compare`` still work.
    """
    if importlib.util.find_spec("rnnkit.kernels") is None:
        return False
    try:
        from rnnkit.kernels.analog.cli import register_experiment
        from rnnkit.tasks.analog.cli import register
    except ImportError as exc:
        warnings.warn(
            f"rnnkit analog kws/charlm are unavailable: importing the simulator failed: {exc!r}",
            PluginWarning,
            stacklevel=2,
        )
        return False
    register(register_experiment)
    return True
