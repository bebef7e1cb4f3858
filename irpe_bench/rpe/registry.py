"""The one registry type behind index functions, mappings, datasets and position-encoding families: a dict with
a decorator and a clear lookup error. Registered classes get their registry name as ``cls.name``.

An entry may also be *declared* before it is registered: its name and the module whose import registers it. A
config then validates names against the registry without importing what it names (the datasets pull in
Lightning and timm; a config must import nothing that imports the config), and the first :meth:`Registry.lookup`
imports the module.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, NamedTuple, TypeVar

T = TypeVar("T")


class Declared(NamedTuple):
    """A name whose entry the module ``where`` registers when it is imported."""

    where: str


class Registry(Dict[str, Any]):
    """``name -> entry``; config validation, CLI choices and search spaces read its keys.

    Args:
        kind: what the entries are, for messages (``unknown mapping 'x'; choices: [...]``).
        instantiate: register ``cls()`` instead of the decorated object (mappings are classes).
    """

    def __init__(self, kind: str, instantiate: bool = False):
        super().__init__()
        self.kind, self.instantiate = kind, instantiate

    def declare(self, name: str, where: str) -> None:
        """``name`` is registered by importing the module ``where`` (resolved by the first lookup)."""
        self[name] = Declared(where)

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self and not isinstance(self[name], Declared):
                raise ValueError(f"{self.kind} {name!r} is already registered")
            if isinstance(obj, type):
                obj.name = name  # type: ignore[attr-defined]
            self[name] = obj() if self.instantiate else obj  # type: ignore[operator]
            return obj

        return decorator

    def check(self, name: str) -> str:
        """``name`` if it is registered or declared, else ``ValueError: unknown <kind> 'name'; choices: [...]``;
        imports nothing."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; choices: {sorted(self)}")
        return name

    def lookup(self, name: str) -> Any:
        """The entry (importing its module first when it was only declared), or the error of :meth:`check`."""
        entry = self[self.check(name)]
        if isinstance(entry, Declared):
            importlib.import_module(entry.where)
            entry = self[name]
            if isinstance(entry, Declared):
                raise RuntimeError(f"{self.kind} {name!r}: importing {entry.where} did not register it")
        return entry
