"""The LightningModule: DeiT's loss, optimiser and schedule around a network it is handed.

It knows nothing about iRPE: the caller passes the names of parameters that must not be decayed (the RPE tables
when the paper's recipe is followed), so the same module trains any timm classifier.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from ..keys import ACC_UNIT, MONITOR, PERCENT
from .config import DataConfig, OptimConfig


def _percent(metric):
    """A torchmetrics accuracy that reports in percent (a composed metric: Lightning still accumulates, computes
    and resets it per epoch as it does the fraction it scales)."""
    return 100 * metric


def upgrade_checkpoint(checkpoint: Dict[str, Any]) -> None:
    """A checkpoint written before accuracies were percent, in percent: the module's best ``val/acc1``, the
    scores the ``val/acc1`` ModelCheckpoint compares new epochs with, and the epoch metrics kept for the summary.
    NOTE: without it a run resumed across the change would compare percent with fractions, and every epoch after
    the resume would look best."""
    if checkpoint.get(ACC_UNIT) == PERCENT:
        return
    if "best_acc1" in checkpoint:
        checkpoint["best_acc1"] = 100.0 * float(checkpoint["best_acc1"])
    for key, state in (checkpoint.get("callbacks") or {}).items():
        if not isinstance(state, dict):
            continue
        if str(key).startswith("ModelCheckpoint") and state.get("monitor") == MONITOR:
            for name in ("best_model_score", "kth_value", "current_score"):
                if state.get(name) is not None:
                    state[name] = state[name] * 100
            if isinstance(state.get("best_k_models"), dict):
                state["best_k_models"] = {p: v * 100 for p, v in state["best_k_models"].items()}
        if isinstance(state.get("metrics"), dict):  # EpochMetrics (train/run.py)
            state["metrics"] = {k: 100.0 * float(v) if "acc" in k else v for k, v in state["metrics"].items()}
    checkpoint[ACC_UNIT] = PERCENT


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN/inf: the run stops instead of wasting the remaining budget."""


class ClassificationModule(pl.LightningModule):
    """Cross-entropy with label smoothing (soft-target CE under mixup/cutmix), AdamW + cosine, top-1/top-5.

    Args:
        net: the built model (timm ViT with or without iRPE).
        num_classes: classes of the dataset.
        optim: the optimisation recipe.
        data: for mixup/cutmix settings, applied here on whole batches.
        no_weight_decay: parameter names (of ``net``) excluded from weight decay beyond timm's defaults.
    """

    def __init__(self, net: nn.Module, num_classes: int, optim: OptimConfig, data: DataConfig,
                 no_weight_decay: Iterable[str] = ()) -> None:
        super().__init__()
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        self.net = net
        self.optim_cfg, self.batch_size = optim, data.batch_size
        self.no_weight_decay = set(no_weight_decay)
        self.mixup: Optional[Mixup] = None
        if data.mixing:
            self.mixup = Mixup(mixup_alpha=data.mixup, cutmix_alpha=data.cutmix, prob=data.mixup_prob,
                               switch_prob=data.mixup_switch_prob, mode="batch", label_smoothing=optim.smoothing,
                               num_classes=num_classes)
            self.train_criterion: nn.Module = SoftTargetCrossEntropy()
        elif optim.smoothing > 0:
            self.train_criterion = LabelSmoothingCrossEntropy(optim.smoothing)
        else:
            self.train_criterion = nn.CrossEntropyLoss()
        self.val_criterion = nn.CrossEntropyLoss()
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        # accuracies in percent, as every file and report gives them (keys.py)
        self.val_acc1 = _percent(MulticlassAccuracy(num_classes, top_k=1, average="micro"))
        self.val_acc5 = _percent(MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"))
        self.test_acc1 = _percent(MulticlassAccuracy(num_classes, top_k=1, average="micro"))
        self.test_acc5 = _percent(MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"))
        self.best_acc1 = 0.0  # kept in the checkpoint (on_save_checkpoint) so resume keeps the best so far

    @property
    def global_batch(self) -> int:
        """Images per optimiser step across devices (DeiT: 128 × 8 = 1024)."""
        return self.batch_size * self.trainer.world_size * self.trainer.accumulate_grad_batches

    @property
    def lr(self) -> float:
        """DeiT's linear scaling rule: lr × global batch / 512."""
        o = self.optim_cfg
        return o.lr * self.global_batch / o.lr_base_batch if o.scale_lr else o.lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        loss = self.train_criterion(self(x), y)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"train/loss became {loss.item()} at epoch {self.current_epoch}, step "
                                     f"{self.global_step} (lr {self.lr:g}); lower optim.lr or set optim.clip_grad")
        # NOTE: every self.log call costs ~1 % of a small model's CPU step (Lightning's result bookkeeping;
        # benchmarks/bench_harness.py), so values are logged only on the steps Lightning writes to the loggers
        # (the loss also on every step a progress bar shows it); the epoch mean is accumulated (update, not
        # forward: no per-batch compute) and logged once per epoch.
        self.train_loss.update(loss.detach())
        written = self._written_this_step()
        if written or self.trainer.progress_bar_callback is not None:
            self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True)
        if written:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/loss_epoch", self.train_loss, on_step=False, on_epoch=True)  # Lightning computes, resets

    def _written_this_step(self) -> bool:
        """Whether Lightning writes this training step's logged values to the loggers (``log_every_n_steps``,
        a stop, ``fast_dev_run``). NOTE: Lightning's own decision, asked as its ``LearningRateMonitor`` asks it,
        rather than a copy of its step arithmetic."""
        t = self.trainer
        return bool(t.fast_dev_run) or t._logger_connector.should_update_logs

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_loss(self.val_criterion(logits.float(), y), len(y))  # NOTE: weighted: the mean over images
        self.val_acc1(logits, y)
        self.val_acc5(logits, y)
        self.log("val/loss", self.val_loss, on_epoch=True, sync_dist=True)
        self.log(MONITOR, self.val_acc1, on_epoch=True, prog_bar=True)
        self.log("val/acc5", self.val_acc5, on_epoch=True)

    def test_step(self, batch, batch_idx: int) -> None:
        """The held-out test split, evaluated once on the checkpoint chosen on validation (``train()``)."""
        x, y = batch
        logits = self(x)
        self.test_loss(self.val_criterion(logits.float(), y), len(y))
        self.test_acc1(logits, y)
        self.test_acc5(logits, y)
        self.log("test/loss", self.test_loss, on_epoch=True, sync_dist=True)
        self.log("test/acc1", self.test_acc1, on_epoch=True)
        self.log("test/acc5", self.test_acc5, on_epoch=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        acc1 = float(self.val_acc1.compute())
        self.best_acc1 = max(self.best_acc1, acc1)
        self.log(f"{MONITOR}_best", self.best_acc1, sync_dist=False)

    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint["best_acc1"] = self.best_acc1
        checkpoint[ACC_UNIT] = PERCENT

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        # NOTE: Lightning calls this before the callbacks load their state from the same dictionary
        upgrade_checkpoint(checkpoint)
        self.best_acc1 = float(checkpoint.get("best_acc1", 0.0))

    # ---- optimisation (timm factories)
    def configure_optimizers(self):
        from timm.optim import create_optimizer_v2, param_groups_weight_decay
        from timm.scheduler import create_scheduler_v2

        o = self.optim_cfg
        skip = set(getattr(self.net, "no_weight_decay", lambda: set())()) | self.no_weight_decay
        groups = param_groups_weight_decay(self.net, o.weight_decay, no_weight_decay_list=list(skip))
        optimizer = create_optimizer_v2(groups, opt=o.opt, lr=self.lr, weight_decay=o.weight_decay, eps=o.opt_eps)
        # NOTE: estimated_stepping_batches loads the train loader if needed; num_training_batches is not set yet.
        steps_per_epoch = max(1, int(self.trainer.estimated_stepping_batches) // self.trainer.max_epochs)
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=o.sched, num_epochs=self.trainer.max_epochs, warmup_epochs=o.warmup_epochs,
            min_lr=o.min_lr, warmup_lr=o.warmup_lr, cooldown_epochs=0, step_on_epochs=o.step_on_epochs,
            updates_per_epoch=steps_per_epoch,
        )
        interval = "epoch" if o.step_on_epochs else "step"
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        # NOTE: timm schedulers take the *next* epoch / update count; Lightning calls this after the epoch / step.
        if self.optim_cfg.step_on_epochs:
            scheduler.step(epoch=self.current_epoch + 1)
        else:
            scheduler.step_update(num_updates=self.global_step)
