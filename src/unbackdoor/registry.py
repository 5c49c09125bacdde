"""Named plug-ins (objectives, attacks, detectors): the built-in ones, one module each, and those
other packages declare as entry points.

A registry fills itself on first use: every module of its package is imported (so adding a
method is adding a file), then every entry point of its group is loaded. The command line, the
configs and `unbackdoor list` all read the registry, so a name is never listed by hand.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Iterator, Mapping

from .errors import PluginError, UnknownName


class Registry(Mapping):
    def __init__(self, package: str, group: str, noun: str, plural: str):
        self.package, self.group, self.noun, self.plural = package, group, noun, plural
        self._classes: dict[str, type] = {}
        self._sources: dict[str, str] = {}
        self._filled = False

    def register(self, cls: type) -> type:
        """Class decorator; the class's `name` is its key."""
        self._add(cls, cls.__module__)
        return cls

    def _add(self, cls: type, source: str) -> None:
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"{source}: a {self.noun} class needs a class attribute `name`")
        if name in self._classes and self._classes[name] is not cls:
            raise PluginError(f"{self.noun} '{name}' from {source} clashes with the one from {self._sources[name]}")
        self._classes[name], self._sources[name] = cls, source

    def _fill(self) -> None:
        if self._filled:
            return
        self._filled = True  # first, so that a plug-in importing this package does not recurse
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{self.package}.{module.name}")
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            try:
                cls = ep.load()
            except Exception as e:  # noqa: BLE001 - whatever a third-party module raises, name the plug-in
                raise PluginError(f"plug-in {ep.value!r} (entry point '{ep.name}' in group {self.group}) "
                                  f"failed to load: {type(e).__name__}: {e}") from e
            if getattr(cls, "name", None) != ep.name:
                raise PluginError(f"entry point '{ep.name}' in group {self.group} names {ep.value!r}, whose `name` "
                                  f"is {getattr(cls, 'name', None)!r}; the two must agree")
            self._add(cls, f"entry point {ep.value}")

    def __getitem__(self, name: str) -> type:
        self._fill()
        try:
            return self._classes[name]
        except KeyError:
            raise UnknownName(self.unknown(name)) from None

    def unknown(self, name: str) -> str:
        valid = sorted(self)
        close = difflib.get_close_matches(name, valid, n=1)
        return (f"unknown {self.noun} '{name}'; valid {self.plural}: {', '.join(valid)}"
                + (f" (did you mean '{close[0]}'?)" if close else ""))

    def __contains__(self, name) -> bool:
        self._fill()
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        self._fill()
        return iter(sorted(self._classes))

    def __len__(self) -> int:
        self._fill()
        return len(self._classes)

    def source(self, name: str) -> str:
        self._fill()
        return self._sources[name]
