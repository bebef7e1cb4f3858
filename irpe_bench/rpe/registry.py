"""The one registry type behind index functions, mappings and datasets: a dict with a decorator and a clear
lookup error. Registered classes get their registry name as ``cls.name``."""
from __future__ import annotations

from typing import Any, Callable, Dict, TypeVar

T = TypeVar("T")


class Registry(Dict[str, Any]):
    """``name -> entry``; config validation, CLI choices and search spaces read its keys.

    Args:
        kind: what the entries are, for messages (``unknown mapping 'x'; choices: [...]``).
        instantiate: register ``cls()`` instead of the decorated object (mappings are classes).
    """

    def __init__(self, kind: str, instantiate: bool = False):
        super().__init__()
        self.kind, self.instantiate = kind, instantiate

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            if isinstance(obj, type):
                obj.name = name  # type: ignore[attr-defined]
            self[name] = obj() if self.instantiate else obj  # type: ignore[operator]
            return obj

        return decorator

    def lookup(self, name: str) -> Any:
        """The entry, or ``ValueError: unknown <kind> 'name'; choices: [...]``."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; choices: {sorted(self)}")
        return self[name]
