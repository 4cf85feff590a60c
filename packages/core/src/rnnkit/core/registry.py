"""Name registries with provenance: which plugin and distribution registered each entry."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from rnnkit.core.errors import PluginConflictError, UnknownNameError, unknown_name
from rnnkit.core.listing import match_names

T = TypeVar("T")


@dataclass(frozen=True)
class Origin:
    """Where a registration came from."""

    plugin: str
    distribution: str | None = None
    version: str | None = None

    def describe(self) -> str:
        """``plugin (distribution version)`` for messages and listings."""
        if self.distribution:
            return f"{self.plugin} ({self.distribution} {self.version or '?'})"
        return self.plugin


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object with its name, description and origin."""

    name: str
    obj: T
    origin: Origin
    description: str = ""


@dataclass
class Registry(Generic[T]):
    """A name -> entry map for one kind of object (cells, kernels, models, tasks, commands)."""

    kind: str
    _entries: dict[str, Entry[T]] = field(default_factory=dict)
    #: appended to the unknown-name error: the plugins that failed to load, one of which may
    #: have been meant to register the name (set by the plugin host)
    skipped: str = ""

    def add(self, entry: Entry[T]) -> None:
        """Add ``entry``; a name registered before is an error naming both plugins."""
        old = self._entries.get(entry.name)
        if old is not None:
            raise PluginConflictError(
                f"{self.kind} {entry.name!r} is registered twice: by plugin "
                f"{old.origin.describe()} and by plugin {entry.origin.describe()}; "
                "uninstall one of them or disable it with RNNKIT_DISABLE_PLUGINS"
            )
        self._entries[entry.name] = entry

    def get(self, name: str) -> Entry[T]:
        """The entry called ``name``; an unknown name raises with the closest names."""
        try:
            return self._entries[name]
        except KeyError:
            error = unknown_name(self.kind, name, self._entries)
            if self.skipped:
                error = UnknownNameError(f"{error} ({self.skipped})")
            raise error from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted names selected by ``pattern`` (see :mod:`rnnkit.core.listing`)."""
        return match_names(sorted(self._entries), pattern)
