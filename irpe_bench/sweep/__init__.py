"""Optuna sweeps over iRPE variants: search space, objective, storage, workers (see each module).

The names below are imported on first use (PEP 562), so that ``import irpe_bench.sweep.cli`` — what
``run.py sweep --help`` does — reads no torch, Lightning or Optuna. (``budget`` is the submodule: a name that is
also a submodule would be the function or the module depending on what was imported first.)
"""
from __future__ import annotations

from ..lazy import lazy_names

_WHERE = {
    "STORAGE_ENV": ".config", "Sweep": ".config", "SweepConfig": ".config", "build_sweep": ".config",
    "load_sweep": ".config", "redact": ".config",
    "Objective": ".objective", "config_key": ".objective",
    "launch": ".runner", "work": ".runner",
    "open_storage": ".storage", "open_study": ".storage",
}


__getattr__, __all__ = lazy_names(__name__, _WHERE)
