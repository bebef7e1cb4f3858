"""The Lightning side of a worker's progress line: a callback that tells :class:`.progress.Progress` each
epoch's end. Apart from :mod:`.progress` so that the processes which only print progress (a launcher of several
workers) never import Lightning.
"""
from __future__ import annotations

from typing import Callable, Optional

import lightning.pytorch as pl
import optuna

from .. import keys as K


class EpochProgress(pl.Callback):
    """Reports the end of each training epoch (after its validation): ``epoch_ended(study, epoch, val acc1)``,
    :meth:`.progress.Progress.epoch_ended`."""

    def __init__(self, epoch_ended: Callable[[optuna.Study, int, Optional[float]], None], study: optuna.Study) -> None:
        self.epoch_ended = epoch_ended
        self.study = study

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking:
            acc1 = trainer.callback_metrics.get(K.MONITOR)
            self.epoch_ended(self.study, trainer.current_epoch + 1, None if acc1 is None else float(acc1))
