"""A wall-clock limit on one training run: checked after every batch, it stops the run with an error.

Why an error and not Lightning's ``Timer`` (which sets ``trainer.should_stop``): a graceful stop ends the fit
as if it were done — the run is then tested, summarised as finished and the sweep records a value for a trial
that never trained its epochs. Raising instead leaves ``last.ckpt`` at the last whole epoch (nothing is saved
mid-epoch), so a retry resumes exactly, and the run's summary says ``stopped`` with the reason.

The clock starts when the callback is made (just before the run is built, so data and model setup count) and
is per attempt: a resumed run starts a new clock (:mod:`irpe_bench.sweep.retry`). Under DDP rank zero decides
and broadcasts its decision every batch (as ``Timer`` does), so all ranks stop at the same batch.
"""
from __future__ import annotations

import time
from typing import Optional

import lightning.pytorch as pl


class TimeLimitExceeded(RuntimeError):
    """The run took longer than its limit; the message is the reason a sweep records."""


class TimeLimit(pl.Callback):
    """Raise :class:`TimeLimitExceeded` at the first train or validation batch end past ``seconds``.

    ``label`` names the setting in the message: ``trial_timeout_s=600 exceeded after 12 epochs``.
    """

    def __init__(self, seconds: float, label: str = "time limit") -> None:
        if not seconds > 0:
            raise ValueError(f"{label}={seconds!r}: expected a positive number of seconds")
        self.seconds = float(seconds)
        self.label = label
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def _check(self, trainer: pl.Trainer) -> None:
        over: Optional[bool] = self.elapsed() > self.seconds
        if trainer.world_size > 1:
            over = trainer.strategy.broadcast(over)
        if over:
            raise TimeLimitExceeded(f"{self.label}={self.seconds:g} exceeded after {trainer.current_epoch} "
                                    f"epoch{'' if trainer.current_epoch == 1 else 's'}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._check(trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._check(trainer)
