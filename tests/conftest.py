"""Shared test setup: offline W&B, deterministic CPU threads, CUDA-only tests skipped without CUDA."""
import os

import pytest
import torch
from hypothesis import settings

# CI explores a fixed set of examples (a red CI must be reproducible); locally hypothesis searches afresh.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(1)  # two xdist workers on two cores


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)
