"""A storage that rides out a database outage: every call retries a lost connection with bounded backoff.

A PostgreSQL restart (or a network cut) ends every open connection; Optuna's ``RDBStorage`` then raises
SQLAlchemy's ``OperationalError`` (inside a session: ``StorageInternalError`` caused by it) from whichever
call came next — the worker loop's budget check, the objective's user attributes, the pruning callback's
``trial.report`` at an epoch end, or the heartbeat thread. :class:`ResilientRDBStorage` retries each of them
(0.5 s, 1 s, 2 s, 4 s, then every 5 s, each retry logged with the error, the password redacted) for up to
``study.storage_retry_s``; the call then returns as if nothing happened, so no worker and no trial is lost.

Past the bound the storage *gives up*: it raises :class:`StorageUnavailable`, refuses every later call at once
(so that nothing — say, the objective recording the error — can mark the trial failed when the database comes
back) and asks the worker to stop like a preempted one (:func:`.preempt.request_stop`: checkpoint, exit 75).
:meth:`ResilientRDBStorage.one_try` lets the worker make one last attempt to queue its trial again.

It is a subclass, not a wrapper, on purpose: Optuna wraps an ``RDBStorage`` in its ``_CachedStorage``, keeps the
heartbeat (``is_heartbeat_enabled``: ``BaseHeartbeat`` with an interval) and lets
``PyTorchLightningPruningCallback`` prune DDP trials only for ``_CachedStorage`` over ``RDBStorage``; all of that
stays as it is. The retried methods are the ones that open a session (:data:`RETRIED`).

NOTE: two judgements the outage changes.
* Heartbeats: no trial could beat while the database was down, so right after an outage every running trial
  looks stale. For ``grace_s`` after this process saw the storage come back it reports no stale trials; by then
  the live ones have beaten again, and only a trial whose process really died is retried.
* A write whose commit reached the database but whose answer was lost is sent again. Attributes and
  intermediate values are idempotent; creating a trial is not (a rare duplicate WAITING/RUNNING trial).
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence

from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy import exc as sa_exc

from ..redact import redact
from . import preempt
from .claim import claim as _claim
from .claim import fail as _fail
from .claim import retries_first

log = logging.getLogger(__name__)

#: the ``RDBStorage`` methods that open a database session (Optuna 4–5); ``_CachedStorage`` calls the private ones
RETRIED = ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
           "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
           "get_study_system_attrs", "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies",
           "_create_new_trial", "_set_trial_param", "get_trial_param", "set_trial_state_values",
           "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
           "get_trial_id_from_study_id_trial_number", "get_trial", "_get_trials", "_get_best_trial_id",
           "record_heartbeat", "_get_stale_trial_ids")
#: waits between attempts, seconds; the last one repeats
BACKOFF = (0.5, 1.0, 2.0, 4.0, 5.0)


class StorageUnavailable(RuntimeError):
    """The storage stayed unreachable past ``study.storage_retry_s`` (or the worker was told to stop meanwhile)."""


def lost_connection(e: BaseException) -> bool:
    """Whether ``e`` (or what caused it) is a lost or refused database connection, not a bad request."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return True
        if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
            return True
        e = e.__cause__ or e.__context__
    return False


def _root_message(e: BaseException) -> str:
    while e.__cause__ is not None:
        e = e.__cause__
    orig = getattr(e, "orig", None) or e
    text = str(orig).strip().splitlines()
    return redact(f"{type(orig).__name__}: {text[0] if text else ''}")


class ResilientRDBStorage(RDBStorage):
    """``RDBStorage`` whose session-opening calls retry a lost connection for ``retry_s`` seconds (module
    docstring). Opening it (``__init__``) does not retry: a wrong URL should fail at once, not in two minutes."""

    def __init__(self, url: str, *, retry_s: float, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.retry_s = retry_s
        self.shown_url = redact(url)
        self._local = threading.local()
        self._gave_up: Optional[str] = None  # the message, once past the bound
        self._back_at: Optional[float] = None  # monotonic time of the last recovery from an outage

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        del state["_local"]
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._local = threading.local()

    @property
    def gave_up(self) -> Optional[str]:
        return self._gave_up

    @contextmanager
    def one_try(self) -> Iterator[None]:
        """Calls in the block make a single attempt even after the storage gave up (the worker's last try to
        queue its trial again)."""
        self._local.once = True
        try:
            yield
        finally:
            self._local.once = False

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        local = self._local
        if getattr(local, "depth", 0):  # a retried method calling another: the outer one retries
            return fn(self, *args, **kwargs)
        once = getattr(local, "once", False)
        if self._gave_up is not None and not once:
            raise StorageUnavailable(self._gave_up)
        started, attempt = time.monotonic(), 0
        while True:
            local.depth = 1
            try:
                result = fn(self, *args, **kwargs)
            except Exception as e:
                if not lost_connection(e):
                    raise
                waited, why = time.monotonic() - started, _root_message(e)
                if once:
                    raise StorageUnavailable(f"storage {self.shown_url} unreachable: {why}") from None
                if waited >= self.retry_s:
                    raise self._give_up(f"storage {self.shown_url} unreachable for {waited:.0f} s "
                                        f"(study.storage_retry_s={self.retry_s:g}): {why}") from None
                delay = min(BACKOFF[min(attempt, len(BACKOFF) - 1)], self.retry_s - waited)
                log.warning("storage unreachable: %s (%s); retrying in %.3g s (%.0f s of study.storage_retry_s=%g)",
                            why, self.shown_url, delay, waited, self.retry_s)
                attempt += 1
                if preempt.wait(delay):  # told to stop meanwhile: no waiting out the outage
                    raise self._give_up(f"storage {self.shown_url} unreachable ({why}) when the worker was "
                                        f"told to stop ({preempt.requested()})") from None
                continue
            finally:
                local.depth = 0
            if attempt:
                self._back_at = time.monotonic()
                log.warning("storage reachable again after %.0f s: %s", time.monotonic() - started, self.shown_url)
            return result

    def _give_up(self, message: str) -> StorageUnavailable:
        if self._gave_up is None:
            self._gave_up = message
            log.error("%s; the worker stops", message)
            preempt.request_stop(message)
        return StorageUnavailable(message)

    def record_heartbeat(self, trial_id: int) -> None:
        """A heartbeat that cannot be recorded is not an error of the trial: logged, and the thread goes on (the
        give-up has already asked the worker to stop)."""
        try:
            self._call(RDBStorage.record_heartbeat, trial_id)
        except StorageUnavailable as e:
            log.debug("heartbeat of trial id %d not recorded: %s", trial_id, e)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Optional[Sequence[float]] = None
                               ) -> bool:
        """Claiming a WAITING trial (Optuna's pop: RUNNING, no values) is one atomic compare-and-set
        (:func:`.claim.claim`: SQLite ignores the ``FOR UPDATE`` that Optuna relies on), and a queued retry is
        claimed before older queued trials (:func:`.claim.retries_first`); failing a trial without values (a stale
        trial, a failed one, one put back) is one compare-and-set as well (:func:`.claim.fail`), so that exactly
        one worker fails a killed trial and queues its retry; the rest as Optuna does.
        NOTE: a claim whose commit arrived but whose answer was lost is retried and then reads False: that trial
        stays RUNNING without a heartbeat (rare; ``--fail-running`` with no worker alive recovers it)."""
        if state == TrialState.RUNNING and values is None:
            if not self._call(retries_first, trial_id):  # a queued retry runs before older queued trials
                return False
            return self._call(_claim, trial_id)
        if state == TrialState.FAIL and values is None:
            return self._call(_fail, trial_id)
        return self._call(RDBStorage.set_trial_state_values, trial_id, state, values)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        grace = self.grace_period or 2 * (self.heartbeat_interval or 0)
        if self._back_at is not None and time.monotonic() - self._back_at < grace:
            return []  # NOTE: just after an outage nobody could beat; judge after one grace period
        return self._call(RDBStorage._get_stale_trial_ids, study_id)


def _retrying(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def call(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._call(method, *args, **kwargs)

    return call


for _name in RETRIED:
    if _name not in ResilientRDBStorage.__dict__:
        setattr(ResilientRDBStorage, _name, _retrying(_name))

__all__ = ["ResilientRDBStorage", "StorageUnavailable", "RETRIED", "lost_connection"]
