"""Evaluation at other image sizes: the checkpoint chosen on validation, tested at each of ``eval.img_sizes``.

Why: position encodings differ most when the test resolution differs from the training one (RoPE-ViT, the
extrapolation studies). The model is the one ``test/*`` was computed on (the checkpoint chosen on validation,
never one chosen at the new size), copied and made to take the new size by
:func:`irpe_bench.models.resize_input` (each encoding as its paper transfers it); the test images are the same
held-out split (``data.split_seed``), passed through the evaluation transform at the new size. Rank zero
evaluates alone, one size after another; nothing here synchronises ranks.

The result is one summary entry, ``test/by_img_size`` (``{"48": {"acc1": …, "acc5": …, "loss": …}}``, accuracies in
percent), and flat ``test/acc1@48`` … for the loggers.
"""
from __future__ import annotations

import copy
import itertools
from contextlib import nullcontext
from typing import Dict, Optional, Union

import torch
from torch import nn

from .. import keys as K
from .config import TrainConfig


def batches_of(loader, limit: Optional[Union[int, float]]):
    """The first batches of ``loader`` that ``trainer.limit_test_batches`` lets Lightning's test loop see (an int:
    that many; a float: that fraction of the loader, rounded down), so that every size is measured on the batches
    ``test/*`` was: at the training size the two agree."""
    if limit is None:
        return loader
    n = min(int(limit), len(loader)) if isinstance(limit, int) else int(len(loader) * limit)
    return itertools.islice(loader, n)


@torch.inference_mode()
def evaluate_at(net: nn.Module, loader, num_classes: int, device: torch.device, precision: str) -> Dict[str, float]:
    """Top-1, top-5 (percent) and mean cross-entropy of ``net`` over ``loader``, as ``test/*`` measures them."""
    from torchmetrics.classification import MulticlassAccuracy

    top1 = MulticlassAccuracy(num_classes, top_k=1, average="micro").to(device)
    top5 = MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro").to(device)
    loss_sum, count = 0.0, 0
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision.startswith("bf16") else \
        torch.autocast(device.type, dtype=torch.float16) if precision.startswith("16") else nullcontext()
    net.eval()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        with autocast:
            logits = net(x)
        loss_sum += float(nn.functional.cross_entropy(logits.float(), y, reduction="sum"))
        count += len(y)
        top1.update(logits, y)
        top5.update(logits, y)
    return {"acc1": 100 * float(top1.compute()), "acc5": 100 * float(top5.compute()), "loss": loss_sum / count}


def evaluate_sizes(config: TrainConfig, net: nn.Module, device: torch.device, precision: str
                   ) -> Dict[str, Dict[str, float]]:
    """``{str(size): metrics}`` for each of ``config.eval.img_sizes``; ``net`` itself is left unchanged."""
    from ..models import resize_input
    from .data import build_datamodule

    out: Dict[str, Dict[str, float]] = {}
    for size in config.eval.img_sizes:
        dm = build_datamodule(config.data, size, config.seed)
        dm.setup("test")
        model = resize_input(copy.deepcopy(net).to(device), size)
        loader = batches_of(dm.test_dataloader(), config.trainer.limit_test_batches)
        out[str(size)] = evaluate_at(model, loader, dm.num_classes, device, precision)
    return out


def flat_metrics(by_size: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """``test/acc1@48`` … for the loggers (CSV, W&B)."""
    return {K.at_size(f"test/{name}", size): value for size, metrics in by_size.items()
            for name, value in metrics.items()}
