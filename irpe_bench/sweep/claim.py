"""Claiming a queued trial, and failing a running one: atomic compare-and-sets, so that a WAITING trial is run by
exactly one worker and a killed trial is failed (and queued again) by exactly one.

Optuna pops a queued (WAITING) trial with ``storage.set_trial_state_values(id, RUNNING)``, which reads the
trial's row ``FOR UPDATE``, checks that it is still WAITING and then writes RUNNING. PostgreSQL and MySQL lock
the row, but SQLite ignores ``FOR UPDATE``, and its driver begins the transaction only at the write: two workers
read WAITING, both write RUNNING, both "win" and train the same trial in the same run directory. (Seen with
the README's first command, two workers on a fresh SQLite study: trial 0 started twice, one worker died on
"Cannot tell a FAIL trial"; with four workers released together on a fresh grid of eight points, every round
ran some point two to four times.)

:func:`claim` makes the pop a single conditional ``UPDATE trials SET state = RUNNING WHERE trial_id = ? AND
state = WAITING``: the database evaluates the condition under its write lock (SQLite's database lock, the row
lock elsewhere), so exactly one worker sees a row changed. The journal storage needs nothing: its log is
appended under a file lock and replayed in order, and only the first RUNNING record of a trial takes effect.

Failing a trial without values (:func:`fail`) is the same read-then-write in Optuna and had the same race: two
workers whose heartbeat check found the same killed trial stale both failed it, both queued its retry, and two
retries resumed the same run directory at once (seen on SQLite: a two-worker sweep run again after both workers
were killed, one retry failing on the other's CSV log). It is one conditional ``UPDATE`` too.
"""
from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import TrialState


def _move(storage: RDBStorage, trial_id: int, sources: tuple, target: TrialState, **stamp: datetime) -> bool:
    """One conditional ``UPDATE``: trial ``trial_id`` to ``target`` if its state is one of ``sources``. True for the
    one caller whose update changed the row; False if it was in another unfinished state;
    ``UpdateFinishedTrialError`` if it had finished (what Optuna expects of ``set_trial_state_values``)."""
    T = models.TrialModel
    with _create_scoped_session(storage.scoped_session) as session:
        changed = session.execute(
            sa.update(T).where(T.trial_id == trial_id, T.state.in_(sources)).values(state=target, **stamp)
            .execution_options(synchronize_session=False)).rowcount
        if changed == 1:
            return True
        storage.check_trial_is_updatable(trial_id, T.find_or_raise_by_id(trial_id, session).state)
        return False


def claim(storage: RDBStorage, trial_id: int) -> bool:
    """Move trial ``trial_id`` from WAITING to RUNNING if nobody did yet: True for the one caller that did it.

    False when another worker claimed it first; ``UpdateFinishedTrialError`` when it has finished meanwhile
    (what Optuna's pop expects of ``set_trial_state_values``)."""
    return _move(storage, trial_id, (TrialState.WAITING,), TrialState.RUNNING, datetime_start=datetime.now())


def fail(storage: RDBStorage, trial_id: int) -> bool:
    """Move trial ``trial_id`` to FAIL if it has not finished yet: True for the one caller that did it (Optuna's
    ``set_trial_state_values(id, FAIL)``, whose read and write are one step here); ``UpdateFinishedTrialError``
    when it had finished (another worker failed it as stale, or it was told), as Optuna's raises."""
    return _move(storage, trial_id, (TrialState.RUNNING, TrialState.WAITING), TrialState.FAIL,
                 datetime_complete=datetime.now())


def retries_first(storage: RDBStorage, trial_id: int) -> bool:
    """Whether a worker may claim WAITING trial ``trial_id`` now: yes if it is a retry (a killed or preempted
    trial queued again, ``retry_history``) or no retry waits in its study.

    NOTE: Optuna pops the queue in trial-number order, and a retry's copy is the newest trial, so after a SIGTERM
    the interrupted trial used to resume last, behind every grid point queued before it. Refusing the older
    trials while a retry waits makes Optuna's pop move on to the retry: a resumed trial runs first. A worker that
    loses the retry to another worker at that instant finds no queued trial this once, and Optuna creates a new
    one: a grid study discards it untrained (over its budget), a sampled study samples one point early."""
    T, A = models.TrialModel, models.TrialSystemAttributeModel
    with _create_scoped_session(storage.scoped_session) as session:
        study_id = T.find_or_raise_by_id(trial_id, session).study_id
        retries = {r for (r,) in session.query(A.trial_id).join(T, T.trial_id == A.trial_id).filter(
            T.study_id == study_id, T.state == TrialState.WAITING, A.key == "retry_history")}
    return not retries or trial_id in retries


__all__ = ["claim", "fail", "retries_first"]
