"""Plugin discovery and registration (pluggy, entry-point group ``rnnkit``).

The built-in packages are plugins like any other: ``rnnkit-core`` itself registers its cells
and the ``reference`` backend through the entry point ``core = rnnkit.core._plugin``.

Environment:
    ``RNNKIT_DISABLE_PLUGINS``: comma-separated entry-point or distribution names not to load.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import importlib.metadata as md
import inspect
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, cast

import pluggy

from rnnkit.core import dispatch, hookspecs
from rnnkit.core.cell import Cell
from rnnkit.core.errors import UnknownKeywordError, check_keywords
from rnnkit.core.kernel import Kernel, KernelCall
from rnnkit.core.registry import Entry, Origin, Registry

ENTRY_POINT_GROUP = "rnnkit"
DISABLE_ENV = "RNNKIT_DISABLE_PLUGINS"

#: ``rnnkit`` subcommands of the core CLI itself: a plugin command with one of these names
#: would never be reachable, so registering one is a conflict with the built-in.
BUILTIN_COMMANDS: frozenset[str] = frozenset({"list", "plugins", "info"})

#: What a plugin may raise while it is imported or while its hooks run, and still leave the
#: other plugins working: ``SystemExit`` (a stray ``sys.exit``) and ``KeyboardInterrupt``
#: included, which would otherwise end every ``rnnkit`` command and every library import.
_PLUGIN_FAILURES = (Exception, SystemExit, KeyboardInterrupt)


class PluginWarning(UserWarning):
    """A plugin failed to load or register and was skipped, or looks wrong (a hook function
    without the ``hookimpl`` marker, a misspelled hook name, a kernel whose ``available()``
    or ``supports()`` raised)."""


@dataclass(frozen=True)
class CellInfo:
    """A registered cell class and the configurations the conformance kit runs it with."""

    cls: type[Cell[Any]]
    test_configs: tuple[Mapping[str, Any], ...] = ({},)


@dataclass(frozen=True)
class CommandInfo:
    """A registered CLI subcommand."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


@dataclass
class PluginInfo:
    """What the host knows about one plugin: origin, status and what it registered."""

    origin: Origin
    #: ``"ok"``; ``"warning"``: loaded, but something looks wrong (see ``warnings``);
    #: ``"broken"``: skipped whole (see ``error``); ``"disabled"``: not loaded on request.
    status: str = "ok"
    error: str = ""
    registered: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _disabled_names() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {n.strip() for n in raw.split(",") if n.strip()}


class PluginHost:
    """Loads plugins and holds the registries they fill.

    Args:
        load_entry_points: discover plugins from installed distributions (group ``rnnkit``).
        plugins: extra ``(name, module_or_object)`` plugins to register directly (tests,
            notebooks); they go through the same validation as installed ones.
        disabled: plugin or distribution names to skip; defaults to ``RNNKIT_DISABLE_PLUGINS``.
    """

    def __init__(
        self,
        *,
        load_entry_points: bool = True,
        plugins: Sequence[tuple[str, object]] = (),
        disabled: set[str] | None = None,
    ) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.cells: Registry[CellInfo] = Registry("cell")
        self.kernels: Registry[Kernel] = Registry("kernel")
        self.models: Registry[Callable[..., Any]] = Registry("model")
        self.tasks: Registry[Any] = Registry("task")
        self.commands: Registry[CommandInfo] = Registry("command")
        self.plugins: dict[str, PluginInfo] = {}
        self._disabled = _disabled_names() if disabled is None else set(disabled)
        loaded: list[tuple[str, object]] = []
        if load_entry_points:
            loaded.extend(self._load_entry_points())
        for name, obj in plugins:
            self.plugins[name] = PluginInfo(Origin(name))
            loaded.append((name, obj))
        self._register_all(loaded)
        broken = [i.origin.describe() for i in self.plugins.values() if i.status == "broken"]
        if broken:
            note = (
                f"not loaded, so not searched: plugin{'s' if len(broken) > 1 else ''} "
                f"{', '.join(broken)}, skipped for an error that `rnnkit plugins` shows"
            )
            for registry in (self.cells, self.kernels, self.models, self.tasks, self.commands):
                registry.skipped = note

    # --- discovery ----------------------------------------------------------------------

    def _load_entry_points(self) -> list[tuple[str, object]]:
        found: list[tuple[str, object]] = []
        eps = sorted(
            md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name != "core", e.name)
        )
        for ep in eps:
            dist = getattr(ep, "dist", None)
            origin = Origin(
                ep.name,
                dist.metadata["Name"] if dist is not None else None,
                dist.version if dist is not None else None,
            )
            info = PluginInfo(origin)
            if ep.name in self.plugins:
                continue  # the same distribution seen twice on sys.path
            self.plugins[ep.name] = info
            if ep.name in self._disabled or (origin.distribution in self._disabled):
                info.status = "disabled"
                continue
            try:
                found.append((ep.name, ep.load()))
            except _PLUGIN_FAILURES as exc:  # a broken plugin must not take the others down
                self._mark_broken(
                    ep.name,
                    f"import failed: {exc!r}{_raised_at(exc)} (entry point "
                    f"{ep.name} = {ep.value!r} in the group {ENTRY_POINT_GROUP!r})",
                )
        return found

    def _mark_broken(self, name: str, error: str) -> None:
        info = self.plugins[name]
        info.status, info.error = "broken", error
        info.registered.clear()
        warnings.warn(
            f"rnnkit plugin {info.origin.describe()} was skipped: {error}",
            PluginWarning,
            stacklevel=3,
        )

    def _warn(self, name: str, message: str) -> None:
        """Record a problem that does not stop plugin ``name`` from loading, and warn."""
        info = self.plugins[name]
        info.warnings.append(message)
        if info.status == "ok":
            info.status = "warning"
        warnings.warn(
            f"rnnkit plugin {info.origin.describe()}: {message}", PluginWarning, stacklevel=4
        )

    # --- registration -------------------------------------------------------------------

    def _register_all(self, loaded: list[tuple[str, object]]) -> None:
        accepted: list[tuple[str, object]] = []
        for name, obj in loaded:
            try:
                self.pm.register(obj, name=name)
                accepted.append((name, obj))
            except Exception as exc:
                self._mark_broken(name, f"invalid hook implementation: {exc}")
        for name, obj in accepted:
            unknown = self._unknown_hooks(obj)
            if unknown:
                self.pm.unregister(obj)
                self._mark_broken(name, f"implements unknown hook(s) {', '.join(unknown)}")
                continue
            for message in self._unmarked_hooks(obj):
                self._warn(name, message)
            staged = self._collect(name)
            if staged is not None:
                self._commit(name, staged)

    def _unknown_hooks(self, obj: object) -> list[str]:
        """``rnnkit_*`` functions that are no hook, and marked functions of any name that are
        none (a misspelled prefix), each with the closest hook name when there is one."""
        out = []
        for attr, _ in _routines(obj):
            if attr in hookspecs.HOOK_NAMES:
                continue
            if attr.startswith("rnnkit_") or self._is_marked(obj, attr):
                out.append(attr + _did_you_mean(attr))
        return out

    def _unmarked_hooks(self, obj: object) -> list[str]:
        """Warnings for functions that look like hooks but were not registered as ones: a hook
        name without the ``hookimpl`` marker, or a name close to a hook's (a misspelling)."""
        out = []
        for attr, _ in _routines(obj):
            if self._is_marked(obj, attr):
                continue
            if attr in hookspecs.HOOK_NAMES:
                out.append(
                    f"{attr} is not marked with @hookimpl (from rnnkit.core import hookimpl), "
                    "so it was not called"
                )
            elif not attr.startswith("rnnkit_") and (hint := _did_you_mean(attr)):
                out.append(f"{attr} looks like a misspelled hook name{hint}; it was not called")
        return out

    def _is_marked(self, obj: object, attr: str) -> bool:
        return self.pm.parse_hookimpl_opts(obj, attr) is not None

    def _collect(self, plugin: str) -> list[tuple[str, Entry[Any]]] | None:
        """Run all hooks of one plugin; return its registrations, or None if it failed."""
        origin = self.plugins[plugin].origin
        staged: list[tuple[str, Entry[Any]]] = []

        def cell(
            name: str,
            cls: type[Cell[Any]],
            *,
            description: str = "",
            test_configs: Sequence[Mapping[str, Any]] = ({},),
        ) -> None:
            _check_name("cell", name)
            if not (isinstance(cls, type) and issubclass(cls, Cell)):  # type: ignore[redundant-expr]
                raise TypeError(f"cell {name!r} must be a Cell subclass, got {cls!r}")
            _check_cell_class(name, cls)
            info = CellInfo(cls, _test_configs(name, cls, test_configs))
            doc = description or _first_line(cls.__doc__)
            staged.append(("cells", Entry(name, info, origin, doc)))

        def kernel(k: Kernel) -> None:
            if not isinstance(k, Kernel):
                raise TypeError(f"register() expects a rnnkit.core.Kernel, got {k!r}")
            _check_name("backend", k.backend)
            guarded = _guard_kernel(k, origin)
            staged.append(("kernels", Entry(k.key, guarded, origin, k.description)))

        def model(name: str, builder: Callable[..., Any], *, description: str = "") -> None:
            _check_name("model", name)
            if not callable(builder):
                raise TypeError(f"model {name!r}: builder must be callable, got {builder!r}")
            doc = description or _first_line(builder.__doc__)
            staged.append(("models", Entry(name, builder, origin, doc)))

        def task(name: str, task: Any, *, description: str = "") -> None:
            _check_name("task", name)
            doc = description or _first_line(getattr(task, "description", "") or "")
            staged.append(("tasks", Entry(name, task, origin, doc)))

        def command(
            name: str,
            *,
            help: str,
            configure: Callable[[argparse.ArgumentParser], None],
            run: Callable[[argparse.Namespace], int],
        ) -> None:
            _check_name("command", name)
            staged.append(
                ("commands", Entry(name, CommandInfo(help, configure, run), origin, help))
            )

        callbacks: dict[str, Callable[..., None]] = {
            "rnnkit_register_cells": cell,
            "rnnkit_register_kernels": kernel,
            "rnnkit_register_models": model,
            "rnnkit_register_tasks": task,
            "rnnkit_register_commands": command,
        }
        for hook_name in hookspecs.HOOK_NAMES:
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                if impl.plugin_name != plugin:
                    continue
                try:
                    impl.function(register=callbacks[hook_name])
                except _PLUGIN_FAILURES as exc:
                    code = getattr(impl.function, "__code__", None)
                    home = (
                        None
                        if code is None
                        else os.path.dirname(os.path.abspath(code.co_filename)) + os.sep
                    )
                    where = _raised_at(exc, home)
                    self._mark_broken(plugin, f"{hook_name} raised {exc!r}{where}")
                    return None
        return staged

    def _commit(self, plugin: str, staged: list[tuple[str, Entry[Any]]]) -> None:
        """Add a plugin's registrations, or none of them if one conflicts: a name registered
        before (by another plugin, or twice by this one) or a built-in command's name. The
        plugin loaded first keeps the name; the later one is skipped with a warning naming
        both, and every other plugin keeps working."""
        info = self.plugins[plugin]
        conflicts: list[str] = []
        mine: dict[tuple[str, str], Entry[Any]] = {}
        for registry_name, entry in staged:
            registry: Registry[Any] = getattr(self, registry_name)
            what = f"{registry.kind} {entry.name!r}"
            if registry_name == "commands" and entry.name in BUILTIN_COMMANDS:
                conflicts.append(f"{what} is a built-in rnnkit command")
            elif entry.name in registry:
                first = registry.get(entry.name).origin.describe()
                conflicts.append(f"{what} is already registered by plugin {first}")
            elif (registry_name, entry.name) in mine:
                conflicts.append(f"{what} is registered twice by this plugin")
            mine[(registry_name, entry.name)] = entry
        if conflicts:
            self._mark_broken(
                plugin,
                "conflict: "
                + "; ".join(conflicts)
                + " (uninstall one of the two, or skip one with "
                + f"{DISABLE_ENV}={info.origin.plugin})",
            )
            return
        for registry_name, entry in staged:
            registry = getattr(self, registry_name)
            registry.add(entry)
            info.registered.setdefault(registry_name, []).append(entry.name)


#: rnnkit-core's own folder: a frame in it is never the plugin author's line.
_CORE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _raised_at(exc: BaseException, home: str | None = None) -> str:
    """`` (raised at FILE:LINE)``: the innermost frame of ``exc``'s traceback in the plugin's
    own source (the folder ``home`` of the function a hook implements), else the innermost
    one outside rnnkit-core (the plugin's line, or its call of ``register`` when rnnkit
    refused what it registered), else the innermost one; this loader and the import machinery
    never count, and ``""`` when nothing else is left (a module that does not exist)."""
    frames = [
        (f, os.path.abspath(f.filename))
        for f in traceback.extract_tb(exc.__traceback__)
        if not f.filename.startswith("<frozen ")
        and not f.filename.endswith(("importlib/__init__.py", "importlib/metadata/__init__.py"))
        and os.path.abspath(f.filename) != os.path.abspath(__file__)  # this loader
    ]
    mine = [f for f, path in frames if home is not None and path.startswith(home)]
    outside = [f for f, path in frames if not path.startswith(_CORE_DIR)]
    found = mine or outside or [f for f, _ in frames]
    return f" (raised at {found[-1].filename}:{found[-1].lineno})" if found else ""


def _check_cell_class(name: str, cls: type[Cell[Any]]) -> None:
    """Refuse a cell class that could never be built or run, naming what it lacks."""
    state_type = getattr(cls, "state_type", None)
    if not (isinstance(state_type, type) and issubclass(state_type, tuple)):
        raise TypeError(
            f"cell {name!r} ({cls.__qualname__}) must set the class attribute state_type to "
            f"its state's NamedTuple class, got {state_type!r}"
        )
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise TypeError(
            f"cell {name!r} ({cls.__qualname__}) does not implement "
            f"{', '.join(m + '()' for m in missing)}, which every cell must (see the cell ABI)"
        )
    try:
        check_keywords("cell", name, cls, {"input_size": 1, "hidden_size": 1})
    except UnknownKeywordError as exc:
        raise UnknownKeywordError(
            f"{exc}; every cell's constructor must take input_size and hidden_size as "
            "keywords (the registry, Recurrent and the conformance kit build cells that way)",
            exc.keyword,
        ) from None


def _test_configs(name: str, cls: type[Cell[Any]], configs: object) -> tuple[dict[str, Any], ...]:
    """``test_configs`` as dicts: a sequence of mappings whose keywords the cell takes."""
    if isinstance(configs, Mapping | str) or not isinstance(configs, Sequence):
        raise TypeError(
            f"test_configs of cell {name!r} must be a list of dicts of constructor keywords "
            f"(such as [{{}}, {{'heads': 2}}]), got {type(configs).__name__} {configs!r}"
        )
    out: list[dict[str, Any]] = []
    for i, config in enumerate(configs):
        if not isinstance(config, Mapping) or not all(isinstance(k, str) for k in config):
            raise TypeError(
                f"test_configs[{i}] of cell {name!r} must be a dict of constructor keywords, "
                f"got {config!r}"
            )
        try:
            check_keywords("cell", name, cls, config)
        except UnknownKeywordError as exc:
            raise UnknownKeywordError(f"test_configs[{i}]: {exc}", exc.keyword) from None
        out.append(dict(config))
    return tuple(out) or ({},)


def _check_name(kind: str, name: object) -> None:
    if not isinstance(name, str) or not name or name != name.strip() or "," in name:
        raise ValueError(f"{kind} name must be a non-empty string without commas, got {name!r}")


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().split("\n", 1)[0]


def _routines(obj: object) -> Iterator[tuple[str, object]]:
    """The public functions (or methods) of a plugin module or object, by attribute name."""
    for attr in dir(obj):
        if attr.startswith("_"):
            continue
        value = inspect.getattr_static(obj, attr, None)
        if inspect.isroutine(value) or isinstance(value, (staticmethod, classmethod)):
            yield attr, value


def _did_you_mean(name: str) -> str:
    """``" (did you mean 'rnnkit_register_cells'?)"`` for a name close to a hook's, else ``""``.

    Close: a misspelling (``rnkit_register_cells``, ``rnnkti_register_models``); the cutoff
    leaves out a helper named ``register_cells``, which only lacks the prefix.
    """
    close = difflib.get_close_matches(name, hookspecs.HOOK_NAMES, n=1, cutoff=0.85)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _guard_kernel(kernel: Kernel, origin: Origin) -> Kernel:
    """``kernel`` with ``available`` and ``supports`` that never raise: an exception becomes
    the reason the kernel cannot run, naming the kernel, its plugin and the exception (and a
    :class:`PluginWarning`, once per kernel and method). Without this, one plugin's broken
    check would break every ``forward`` that dispatch considers its kernel for."""
    raw_available, raw_supports = kernel.available, kernel.supports
    warned: set[str] = set()

    def reason(method: str, exc: BaseException) -> str:
        text = f"{method}() of kernel {kernel.key} (plugin {origin.describe()}) raised {exc!r}"
        if method not in warned:
            warned.add(method)
            warnings.warn(text, PluginWarning, stacklevel=4)
        return text

    def available() -> str | None:
        try:
            return raw_available()
        except Exception as exc:
            return reason("available", exc)

    def supports(call: KernelCall) -> str | None:
        try:
            return raw_supports(call)
        except Exception as exc:
            return reason("supports", exc)

    return dataclasses.replace(kernel, available=available, supports=supports)


_HOST: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, created (and plugins loaded) on first use."""
    global _HOST
    if _HOST is None:
        _HOST = _new_host()
    return _HOST


def _new_host() -> PluginHost:
    # When the first rnnkit call of a process is made under torch.compile, dynamo would trace
    # the plugin loading (pluggy's introspection fails there): build the host outside the
    # graph. torch.compile has imported dynamo by then; an eager process never pays for the
    # import (about 2 s).
    if "torch._dynamo" in sys.modules:
        import torch

        make = cast(Callable[[], PluginHost], torch.compiler.disable(PluginHost))  # type: ignore[no-untyped-call]
        return make()
    return PluginHost()


def set_host(host: PluginHost | None) -> PluginHost | None:
    """Replace the process-wide host (``None`` reloads on next use); returns the old one."""
    global _HOST
    old, _HOST = _HOST, host
    return old


@contextlib.contextmanager
def use_host(host: PluginHost) -> Iterator[PluginHost]:
    """Use ``host`` as the process-wide host inside a ``with`` block (for tests)."""
    old = set_host(host)
    try:
        yield host
    finally:
        set_host(old)


def module_plugin(name: str, **hooks: Callable[..., None]) -> ModuleType:
    """Build an in-memory plugin module from hook functions (handy in tests and notebooks).

    Example: ``module_plugin("mine", rnnkit_register_cells=lambda register: ...)``.
    """
    mod = ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(mod, hook_name, hookspecs.hookimpl(fn))
    return mod


def _registered_kernels() -> list[Kernel]:
    return [e.obj for e in get_host().kernels]


# Dispatch finds kernels through this host (see rnnkit.core.dispatch: the source is installed
# here so that dispatch, which the cell ABI imports, needs nothing from this module).
dispatch.set_kernel_source(_registered_kernels)
