"""Names of a package that load on first use (PEP 562 module ``__getattr__``).

A neutral module (it imports nothing of the package). The ``train``, ``sweep`` and ``report`` packages re-export
their main names this way, so that importing one of their command modules — what ``run.py <command> --help``
does — does not pull in torch, Lightning or Optuna through the package's ``__init__``.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Tuple


def lazy_names(package: str, where: Dict[str, str]) -> Tuple[Callable[[str], Any], List[str]]:
    """``(__getattr__, __all__)`` for ``package``: ``where`` maps each name to the (relative) module defining it."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name], package), name)

    return __getattr__, sorted(where)


__all__ = ["lazy_names"]
