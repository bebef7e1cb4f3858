"""Preemption: a worker told to stop (SIGTERM, SIGUSR1 or Ctrl-C's SIGINT) saves its trial, queues it again and
exits at once.

A cluster ends a job with SIGTERM (SLURM: ``--signal=B:TERM@120`` before the time limit, or preemption), then
SIGKILL after a grace period. Waiting for the heartbeat would cost the trial ``grace_s`` on the next start and
the epoch in progress; instead:

1. :func:`stop_on_signals` installs a handler for SIGTERM, SIGUSR1 and SIGINT that records the request (the
   first one; a repeat, e.g. Ctrl-C reaching a worker from the terminal and again from its launcher, changes
   nothing). During ``Trainer.fit`` Lightning's signal connector keeps it and records SIGTERM itself; SIGUSR1
   and SIGINT are re-sent as SIGTERM so that all take Lightning's path: ``SIGTERMException`` at the next batch
   boundary, where
   :class:`irpe_bench.train.preemption.PreemptionCheckpoint` writes the run's ``last.ckpt`` (a request that
   came before ``fit`` started stops it as it starts). Installed first, it also keeps Lightning's own SLURM
   handler off SIGUSR1 (that one would requeue the job itself and write a checkpoint of its own).
2. The worker (:func:`irpe_bench.sweep.runner.work`) marks the trial failed and puts a copy back in the queue
   (:func:`irpe_bench.sweep.storage.put_back`: same parameters, same user attributes, run directory included),
   so the next start resumes it from that checkpoint immediately: it is WAITING, not a RUNNING trial whose
   heartbeat must first go stale.
3. The process exits with :data:`EXIT_PREEMPTED` (75, ``EX_TEMPFAIL`` of ``sysexits.h``: "temporary failure,
   try again"), which ``examples/slurm/sweep.sbatch`` answers with ``scontrol requeue``. The launcher of several
   workers forwards the signal to each of them, waits, and exits with the same code.

The storage layer asks for the same stop when the database stays unreachable past ``study.storage_retry_s``
(:func:`request_stop`, from :mod:`.resilient`), so a worker that lost its storage leaves the same way.
NOTE: a signal handler belongs to the process, so the request is module state (one per process, installed by
the worker loop); without :func:`stop_on_signals` nothing here is active.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

from ..train import stop as train_stop

log = logging.getLogger(__name__)

#: the exit status of a worker (or launcher) that stopped for a signal or a lost storage: run it again
EXIT_PREEMPTED = 75
#: a trial's ``status`` while its copy waits to resume after a preemption
PREEMPTED = "preempted"
#: NOTE: SIGINT (Ctrl-C; a terminal sends it to the launcher and its workers alike) stops a sweep as SIGTERM does:
#: the trial checkpoints and is queued again, instead of being left RUNNING until its heartbeat goes stale
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preempted(SystemExit):
    """Raised (after the message is printed) to end the process with :data:`EXIT_PREEMPTED`; it passes through
    ``except Exception`` on its way out, as a signal's exit should."""

    def __init__(self) -> None:
        super().__init__(EXIT_PREEMPTED)


class StopRequest:
    """Why this process was asked to stop (None: it was not); :meth:`wait` wakes as soon as it is."""

    def __init__(self) -> None:
        self.reason: Optional[str] = None
        self.event = threading.Event()

    def set(self, reason: str) -> None:
        if self.reason is None:  # NOTE: the first reason wins; SLURM and the launcher may both send SIGTERM
            self.reason = reason
            log.warning("%s: stopping: the running trial saves a checkpoint at the next batch", reason)
        train_stop.request_stop()  # for a trial whose fit has not started listening yet
        self.event.set()

    def wait(self, timeout: float) -> bool:
        return self.event.wait(timeout)


_request: Optional[StopRequest] = None


def requested() -> Optional[str]:
    """The reason this process was asked to stop, None when it was not (or no handler is installed)."""
    return _request.reason if _request is not None else None


def wait(timeout: float) -> bool:
    """Sleep up to ``timeout`` seconds, waking at once on a stop request; True when one came."""
    if _request is None:
        threading.Event().wait(timeout)
        return False
    return _request.wait(timeout)


def _handler(signum: int, _frame) -> None:
    assert _request is not None
    name = signal.Signals(signum).name
    first = _request.reason is None
    _request.set(f"received {name}")
    if signum != signal.SIGTERM and first:
        os.kill(os.getpid(), signal.SIGTERM)  # Lightning's connector acts on SIGTERM only: one path for both


def request_stop(reason: str) -> None:
    """Stop this worker as if it were preempted (the storage gave up): a no-op where no handler is installed
    (a command that only reads the storage)."""
    if _request is None or _request.reason is not None:
        return
    _request.set(reason)
    os.kill(os.getpid(), signal.SIGTERM)  # NOTE: reaches Lightning's connector, wherever the request came from


@contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Handle SIGTERM, SIGUSR1 and SIGINT as stop requests for the block (the main thread only; elsewhere a
    no-op)."""
    global _request
    if threading.current_thread() is not threading.main_thread():
        yield StopRequest()
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _request = StopRequest()
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield _request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _request = None
        train_stop.clear_stop()


def say(message: str) -> None:
    """One clear line on stderr (logging may be configured to go elsewhere)."""
    print(message, file=sys.stderr, flush=True)


__all__ = ["EXIT_PREEMPTED", "PREEMPTED", "Preempted", "StopRequest", "requested", "wait", "request_stop",
           "stop_on_signals", "say"]
