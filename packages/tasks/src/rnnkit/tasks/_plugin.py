"""rnnkit-tasks' plugin module: registers its tasks, the ``time_llm`` model, the ``train``,
``compare``, ``eval``, ``predict``, ``generate``, ``rl``, ``world-model``, ``curriculum``,
``pvrnn``, ``online``, ``analyse``, ``prune``, ``nas``, ``recurrentgpt``, ``counts``, ``push``
and ``pull`` commands and, when rnnkit-kernels is installed, the ``kws`` and ``charlm``
experiments of its ``rnnkit analog`` command."""

from __future__ import annotations

import importlib.util
import warnings

from rnnkit.core.hookspecs import RegisterCommand, RegisterModel, RegisterTask, hookimpl
from rnnkit.core.plugins import PluginWarning


@hookimpl
def rnnkit_register_tasks(register: RegisterTask) -> None:
    """Register the tasks of rnnkit-tasks."""
    from rnnkit.tasks.registry import builtin_tasks

    for task in builtin_tasks():
        register(task.name, task, description=task.description)


@hookimpl
def rnnkit_register_models(register: RegisterModel) -> None:
    """Register ``time_llm`` (its frozen backbone is read from a run directory)."""
    from rnnkit.tasks.time_llm import time_llm

    register("time_llm", time_llm)


@hookimpl
def rnnkit_register_commands(register: RegisterCommand) -> None:
    """Register ``rnnkit train``, ``compare``, ``data``, ``eval``, ``predict``, ``generate``,
    ``passkey``, ``extract-dfa``, ``rl``, ``world-model``, ``curriculum``, ``pvrnn``,
    ``online``, ``analyse``, ``prune``, ``nas``, ``recurrentgpt``, ``continual``, ``counts``,
    ``push`` and ``pull``; add ``kws`` and ``charlm`` to rnnkit-kernels' ``rnnkit analog``
    (the host runs every hook before it builds the command line, so they are in place when
    ``rnnkit analog``'s parser is configured)."""
    from rnnkit.tasks import (
        automata,
        cli,
        continual,
        counts,
        curriculum,
        downloads,
        hub,
        passkey_length,
        pvrnn_study,
        recurrentgpt,
        reuse_cli,
        rl,
        world_model,
    )

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
        "recurrentgpt",
        help=recurrentgpt.RECURRENTGPT_HELP,
        configure=recurrentgpt.configure_recurrentgpt,
        run=recurrentgpt.run_recurrentgpt,
    )
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
    register("rl", help=rl.RL_HELP, configure=rl.configure_rl, run=rl.run_rl)
    register(
        "world-model",
        help=world_model.WORLD_MODEL_HELP,
        configure=world_model.configure_world_model,
        run=world_model.run_world_model,
    )
    register(
        "curriculum",
        help=curriculum.CURRICULUM_HELP,
        configure=curriculum.configure_curriculum,
        run=curriculum.run_curriculum_command,
    )
    register(
        "pvrnn",
        help=pvrnn_study.PVRNN_HELP,
        configure=pvrnn_study.configure_pvrnn,
        run=pvrnn_study.run_pvrnn,
    )

    from rnnkit.tasks.methods import analysis, nas, online, pruning

    register(
        "online",
        help=online.ONLINE_HELP,
        configure=online.configure_online,
        run=online.run_online_command,
    )
    register(
        "analyse",
        help=analysis.ANALYSE_HELP,
        configure=analysis.configure_analyse,
        run=analysis.run_analyse,
    )
    register(
        "prune", help=pruning.PRUNE_HELP, configure=pruning.configure_prune, run=pruning.run_prune
    )
    register("nas", help=nas.NAS_HELP, configure=nas.configure_nas, run=nas.run_nas)
    register(
        "continual",
        help=continual.CONTINUAL_HELP,
        configure=continual.configure_continual,
        run=continual.run_continual_command,
    )
    register(
        "counts",
        help=counts.COUNTS_HELP,
        configure=counts.configure_counts,
        run=counts.run_counts_command,
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
