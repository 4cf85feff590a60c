"""The plugin hooks of rnnkit (pluggy project ``rnnkit``, entry-point group ``rnnkit``).

Every hook receives a ``register`` callback; the core validates and deduplicates what is
registered and records which plugin registered it. A plugin module implements any subset::

    from rnnkit.core import hookimpl

    @hookimpl
    def rnnkit_register_cells(register):
        register("mycell", MyCell, description="...")

See ``docs/plugins.md`` for the guide.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from rnnkit.core.cell import Cell
    from rnnkit.core.kernel import Kernel

PROJECT = "rnnkit"

_spec = pluggy.HookspecMarker(PROJECT)
#: Marks a function in a plugin module as the implementation of a hook.
hookimpl = pluggy.HookimplMarker(PROJECT)


class RegisterCell(Protocol):
    """``register(name, cls, *, description="", test_configs=({},))`` for cells.

    ``cls`` is a :class:`~rnnkit.core.cell.Cell` subclass whose constructor accepts
    ``input_size`` and ``hidden_size`` keywords. ``test_configs`` lists extra constructor
    keywords the conformance kit runs the cell with (e.g. ``[{"heads": 1}, {"heads": 2}]``).
    """

    def __call__(
        self,
        name: str,
        cls: type[Cell[Any]],
        *,
        description: str = "",
        test_configs: Sequence[Mapping[str, Any]] = ({},),
    ) -> None: ...


class RegisterKernel(Protocol):
    """``register(kernel)`` for a :class:`~rnnkit.core.kernel.Kernel`."""

    def __call__(self, kernel: Kernel) -> None: ...


class RegisterModel(Protocol):
    """``register(name, builder, *, description="")``: ``builder(**cfg)`` returns a module."""

    def __call__(
        self, name: str, builder: Callable[..., Any], *, description: str = ""
    ) -> None: ...


class RegisterTask(Protocol):
    """``register(name, task, *, description="")``: ``task`` is defined by rnnkit-tasks."""

    def __call__(self, name: str, task: Any, *, description: str = "") -> None: ...


class RegisterCommand(Protocol):
    """``register(name, *, help, configure, run)`` adds ``rnnkit NAME`` to the CLI.

    ``configure(parser)`` adds arguments to the subcommand's ``argparse`` parser and
    ``run(args)`` executes it and returns the exit status.
    """

    def __call__(
        self,
        name: str,
        *,
        help: str,
        configure: Callable[[argparse.ArgumentParser], None],
        run: Callable[[argparse.Namespace], int],
    ) -> None: ...


@_spec
def rnnkit_register_cells(register: RegisterCell) -> None:
    """Register recurrent cells (:class:`~rnnkit.core.cell.Cell` subclasses)."""


@_spec
def rnnkit_register_kernels(register: RegisterKernel) -> None:
    """Register backend kernels (:class:`~rnnkit.core.dispatch.Kernel`)."""


@_spec
def rnnkit_register_models(register: RegisterModel) -> None:
    """Register model builders for ``create_model(name, **cfg)``."""


@_spec
def rnnkit_register_tasks(register: RegisterTask) -> None:
    """Register tasks (data, metrics, default model and budget)."""


@_spec
def rnnkit_register_commands(register: RegisterCommand) -> None:
    """Register ``rnnkit`` CLI subcommands."""


#: The hook names, in the order the host calls them.
HOOK_NAMES: tuple[str, ...] = (
    "rnnkit_register_cells",
    "rnnkit_register_kernels",
    "rnnkit_register_models",
    "rnnkit_register_tasks",
    "rnnkit_register_commands",
)
