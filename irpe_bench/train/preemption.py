"""A run told to stop (SIGTERM: a cluster preempting the job, or its time limit coming) saves where it is first.

Lightning already owns the signal: during ``fit`` its signal connector records SIGTERM
(``trainer.received_sigterm``), keeps any handler installed before (the sweep's, :mod:`irpe_bench.sweep.preempt`)
and raises ``SIGTERMException`` at the next batch boundary, after the batch's progress is counted — the point a
checkpoint can resume from. :class:`PreemptionCheckpoint` is the callback that turns that exception into
``last.ckpt`` (the file a resume reads), so a preempted run loses at most one batch, not the epoch in progress.

A stop asked for before ``fit`` listens (Lightning forgets a SIGTERM that came before its ``fit`` started, e.g.
while the data loaded) is kept by :func:`.stop.request_stop`; the callback then stops the run as it starts training.

NOTE: a checkpoint taken mid-epoch resumes mid-epoch, and Lightning restarts a plain ``DataLoader``'s stream of
that epoch (it warns that the loader is not resumable): the rest of the interrupted epoch is not bit-identical
to an uninterrupted run. A resume from an epoch-end checkpoint (a killed run, SIGKILL) stays exact.
The file is written beside and renamed over ``last.ckpt`` so that a SIGKILL during the write (the scheduler's
grace period ending) leaves the previous epoch's checkpoint intact.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Union

import lightning.pytorch as pl
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from .stop import stop_requested

log = logging.getLogger(__name__)

class PreemptionCheckpoint(pl.Callback):
    """On a stop while fitting (``SIGTERMException``, or any exception after SIGTERM): write ``path`` (the
    run's ``last.ckpt``) now.

    Not on other exceptions (a crash or a divergence must not overwrite the last good checkpoint), not while
    testing (training is over; the epoch-end ``last.ckpt`` is the state to resume), not during the epoch's
    validation (Lightning resumes such a checkpoint past the validation it interrupted, so that epoch would never
    be validated, reported to the pruner or considered for the best checkpoint: the previous epoch's
    ``last.ckpt`` stands and the epoch is trained again, exactly), and not when nothing was trained since ``fit``
    started (the checkpoint it resumed, if any, holds that state). ``saved`` holds the file once written."""

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        self.saved: Optional[Path] = None
        self._start_step = 0

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_step = trainer.global_step
        if stop_requested():
            raise SIGTERMException()  # the stop came before Lightning's connector listened

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        stopping = isinstance(exception, SIGTERMException) or trainer.received_sigterm or stop_requested()
        if not stopping or trainer.state.fn != TrainerFn.FITTING or trainer.validating \
                or trainer.global_step == self._start_step:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp)  # NOTE: collective under DDP (every rank calls it; rank 0 writes)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
            log.warning("stop requested: saved %s at epoch %d, step %d", self.path, trainer.current_epoch,
                        trainer.global_step)
        self.saved = self.path
