"""Optuna sweeps over iRPE variants: search space, objective, storage, workers (see each module)."""
from .budget import budget
from .config import STORAGE_ENV, Sweep, SweepConfig, build_sweep, load_sweep, redact
from .objective import Objective, config_key
from .runner import launch, work
from .storage import open_storage, open_study

__all__ = ["STORAGE_ENV", "SweepConfig", "Sweep", "build_sweep", "load_sweep", "redact", "Objective", "config_key",
           "budget", "launch", "work", "open_storage", "open_study"]
