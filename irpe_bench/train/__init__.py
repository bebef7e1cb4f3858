"""Train one variant: typed config, DataModules, LightningModule, throughput, W&B, checkpoints that resume.

The names below are imported on first use (PEP 562): ``import irpe_bench.train.cli`` — what ``run.py train
--help`` does — reads no torch or Lightning.
"""
from __future__ import annotations

from ..lazy import lazy_names

_WHERE = {
    "MONITOR": "..keys",
    "TrainConfig": ".config", "build_config": ".config", "load_config": ".config",
    "TrainingDiverged": ".run", "find_checkpoint": ".run", "train": ".run",
}


__getattr__, __all__ = lazy_names(__name__, _WHERE)
