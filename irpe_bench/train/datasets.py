"""The registry of datasets a config can name (``data.name``): light, so that :mod:`.config` validates names
without importing the DataModules (which import the config for its types).

The built-in datasets are declared here by the module that registers them; a user's own DataModule registers
with :func:`register_datamodule` (``@register_datamodule("mine")`` on an :class:`.datamodule.ImageDataModule`
subclass) before its config is loaded.
"""
from __future__ import annotations

from ..rpe.registry import Registry

#: name -> DataModule class; ``data.name`` in configs, CLI choices and tests read its keys.
DATAMODULES = Registry("dataset")
register_datamodule = DATAMODULES.register

for _name in ("digits", "mnist", "relpos"):
    DATAMODULES.declare(_name, "irpe_bench.train.embedded_data")
for _name in ("cifar10", "cifar100", "imagefolder", "synthetic"):
    DATAMODULES.declare(_name, "irpe_bench.train.data")
