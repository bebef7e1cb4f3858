"""Train one variant: typed config, DataModules, LightningModule, throughput, W&B, checkpoints that resume.

The names below are imported on first use (PEP 562): ``import irpe_bench.train.cli`` — what ``run.py train
--help`` does — reads no torch or Lightning.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "MONITOR": "..keys",
    "TrainConfig": ".config", "build_config": ".config", "load_config": ".config",
    "TrainingDiverged": ".run", "find_checkpoint": ".run", "train": ".run",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)


__all__ = sorted(_WHERE)
