"""Optuna sweeps over iRPE variants: search space, objective, storage, workers (see each module).

The names below are imported on first use (PEP 562), so that ``import irpe_bench.sweep.cli`` — what
``run.py sweep --help`` does — reads no torch, Lightning or Optuna.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "budget": ".budget",
    "STORAGE_ENV": ".config", "Sweep": ".config", "SweepConfig": ".config", "build_sweep": ".config",
    "load_sweep": ".config", "redact": ".config",
    "Objective": ".objective", "config_key": ".objective",
    "launch": ".runner", "work": ".runner",
    "open_storage": ".storage", "open_study": ".storage",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)


__all__ = sorted(_WHERE)
