"""Plugin registry: every plugin, built-in or third-party, comes from the entry-point group ``melanoma.plugins``."""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Iterable
from typing import Any

from melanoma_models.api import Plugin, PluginError

GROUP = "melanoma.plugins"
#: The distribution whose entry points are the built-in plugins.
DISTRIBUTION = "melanoma-toolkit"


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered plugin: its name, where it comes from, and (once loaded) its class or load error."""

    name: str
    value: str
    dist: str
    cls: type[Plugin] | None = None
    error: str | None = None


class Registry:
    """Name → plugin class, loaded lazily from entry points; duplicates and unknown names are errors."""

    def __init__(self, entry_points: Iterable[Any] | None = None) -> None:
        eps = list(entry_points) if entry_points is not None else list(importlib.metadata.entry_points(group=GROUP))
        seen: dict[str, Any] = {}
        for ep in eps:
            if ep.name in seen and seen[ep.name].value != ep.value:
                raise PluginError(
                    f"duplicate plugin name {ep.name!r}: registered by {_dist(seen[ep.name])} ({seen[ep.name].value}) "
                    f"and by {_dist(ep)} ({ep.value}); uninstall one of them"
                )
            seen[ep.name] = ep
        self._eps = dict(sorted(seen.items()))
        self._loaded: dict[str, Entry] = {}

    def names(self) -> list[str]:
        """Registered plugin names, sorted."""
        return list(self._eps)

    def entry(self, name: str) -> Entry:
        """Load a plugin's entry (import errors are kept, not raised)."""
        if name not in self._eps:
            known = ", ".join(self._eps) or "none (is the toolkit installed? run `uv sync`)"
            raise PluginError(f"unknown plugin {name!r}; known plugins: {known}")
        if name not in self._loaded:
            ep = self._eps[name]
            try:
                cls = ep.load()
            except Exception as exc:  # a broken third-party plugin must not break the others
                self._loaded[name] = Entry(name, ep.value, _dist(ep), error=f"{type(exc).__name__}: {exc}")
            else:
                if not (isinstance(cls, type) and issubclass(cls, Plugin)):
                    self._loaded[name] = Entry(name, ep.value, _dist(ep),
                                               error=f"{ep.value} is not a melanoma_models.api.Plugin subclass")
                elif cls.name != name:
                    self._loaded[name] = Entry(name, ep.value, _dist(ep),
                                               error=f"{ep.value} declares name {cls.name!r}, registered as {name!r}")
                else:
                    self._loaded[name] = Entry(name, ep.value, _dist(ep), cls=cls)
        return self._loaded[name]

    def get(self, name: str) -> type[Plugin]:
        """The plugin class registered as ``name``.

        Raises:
            PluginError: unknown name (listing the known ones) or a plugin that cannot be imported.
        """
        entry = self.entry(name)
        if entry.cls is None:
            raise PluginError(f"plugin {name!r} ({entry.value}) cannot be loaded: {entry.error}")
        return entry.cls

    def entries(self) -> list[Entry]:
        """Every registered plugin, loaded."""
        return [self.entry(n) for n in self._eps]


def builtin_entry_points() -> list[Any]:
    """The entry points this toolkit itself registers (third-party plugins left out)."""
    return [ep for ep in importlib.metadata.entry_points(group=GROUP) if _dist(ep) == DISTRIBUTION]


def builtins(extra: Iterable[Any] = ()) -> Registry:
    """A fresh registry of the built-in plugins plus ``extra`` entry points (what the tests use, so
    that a third-party plugin installed beside the toolkit cannot fail the toolkit's own tests)."""
    return Registry([*builtin_entry_points(), *extra])


def _dist(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or "?"


_DEFAULT: Registry | None = None


def registry() -> Registry:
    """The process-wide registry of installed plugins."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Registry()
    return _DEFAULT


def get_plugin(name: str) -> type[Plugin]:
    """Shortcut for ``registry().get(name)``."""
    return registry().get(name)
