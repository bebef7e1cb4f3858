"""The process's stop request: set by the sweep's signal handler (or its storage watchdog), read by the training
callback that checkpoints and stops (:class:`.preemption.PreemptionCheckpoint`).

Its own module without Lightning, so that the sweep's signal handling (:mod:`irpe_bench.sweep.preempt`) imports
no training stack: a launcher of several workers forwards signals and never trains.
"""
from __future__ import annotations

import threading

# NOTE: a stop request belongs to the process, as the signal that brings it does
_stop = threading.Event()


def request_stop() -> None:
    """Ask this process's training to stop and checkpoint (set by the sweep's signal handler)."""
    _stop.set()


def clear_stop() -> None:
    _stop.clear()


def stop_requested() -> bool:
    return _stop.is_set()
