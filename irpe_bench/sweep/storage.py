"""The study's storage (the sweep's source of truth), its sampler and pruner, and creating or joining a study.

* SQLite (default, one machine) and PostgreSQL/MySQL (many machines) are Optuna ``RDBStorage`` with a
  heartbeat: a trial whose process was killed stops beating, the next worker fails it after ``grace_s`` and
  ``RetryHeartbeatStaleTrialCallback`` puts the same parameters back in the queue — with the killed trial's user
  attributes, so the retry finds its run directory and resumes from the last checkpoint.
* A journal file (``journal:///path``) has no heartbeat: ``--fail-running`` recovers killed trials by hand.

A study has one direction per objective (``study.objectives``; one: the single-objective study of old). Its
user attributes ``objectives`` (``[{metric, attr, key, direction}]`` in ``trial.values`` order), ``constraints``
(``[{text, metric, attr, key, op, bound}]``) and ``repeats`` (seeds per trial) tell the leaderboard what was
optimised (:mod:`.objectives` has the vocabulary).

Creating the study is the one race between workers that start together; ``create_study`` without
``load_if_exists`` is atomic in the storage, so exactly one worker creates it (and enqueues the grid).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from ..keys import REFERENCE_ATTR
from .allotted import grid_params
from .config import StudyConfig, Sweep, redact

log = logging.getLogger(__name__)
#: the worker's index on its machine (the launcher sets it; a worker joined by hand may set it): seeds its sampler
WORKER_ENV = "IRPE_BENCH_WORKER"
#: study user attributes: the objectives (in ``trial.values`` order), constraints and repeats (:mod:`.objectives`)
OBJECTIVES_ATTR = "objectives"


def driver_url(url: str) -> str:
    """``postgresql://`` means psycopg2 to SQLAlchemy; this project installs psycopg 3, so use it unless
    psycopg2 is there (an explicit ``postgresql+driver://`` is kept)."""
    if url.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg2") is None:
            return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def open_storage(sweep: Sweep, wal: bool = False) -> optuna.storages.BaseStorage:
    """The sweep's storage, with its heartbeat and retry settings (``study.heartbeat_s``, ``grace_s``, …);
    ``wal``: a worker's (:func:`wal_mode`)."""
    return storage_from_url(sweep.storage_url, sweep.config.study, wal=wal)


def wal_mode(storage: optuna.storages.BaseStorage) -> None:
    """Put a SQLite storage in write-ahead-log mode with ``synchronous=NORMAL``, on every connection.

    Why: a worker writes some forty trial attributes per trial, each its own transaction; in SQLite's default
    rollback-journal mode every commit waits for the disk twice, in WAL mode for none (docs/cluster.md gives
    the times). What it costs: a power cut may lose the last commits (never
    corrupts the file); a killed process loses nothing committed (the log is in the operating system's hands).
    The mode is stored in the file, so only writers (sweep workers) set it: a command that only reads a
    committed study leaves the file as it is. NOTE: WAL needs the processes on one machine (shared memory), as
    SQLite always did in practice: several machines share a PostgreSQL server instead (docs/cluster.md). Until
    the last connection closes, the latest commits live in ``optuna.db-wal`` beside the file: copy a study when
    its sweep has ended (closing folds the log back into the file)."""
    from sqlalchemy import event

    engine = getattr(storage, "engine", None)
    if engine is None or engine.dialect.name != "sqlite":
        return

    def pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", pragmas)
    engine.dispose()  # the connections opened while the storage was built reconnect with the pragmas


def storage_from_url(url: str, st: Optional[StudyConfig] = None, wal: bool = False) -> optuna.storages.BaseStorage:
    """A storage from its URL; ``st`` adds the heartbeat, the retry of stale trials and the riding out of a
    database outage for ``st.storage_retry_s`` (:mod:`.resilient`) — workers need them, a command that only
    reads or lists does not. ``wal``: SQLite in write-ahead-log mode (:func:`wal_mode`), for writers."""
    storage = _storage_from_url(url, st)
    if wal:
        wal_mode(storage)
    return storage


def _storage_from_url(url: str, st: Optional[StudyConfig]) -> optuna.storages.BaseStorage:
    url = driver_url(url)
    if url.startswith("journal://"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal://"):])
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    engine: dict = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    if url.startswith("postgresql") and "connect_timeout" not in url:  # NOTE: an unreachable host, not a hang
        engine["connect_args"] = {"connect_timeout": 10}
    import time

    waited, pause, raced = 0.0, 1.0, 0
    while True:
        try:
            if st is None:
                return RDBStorage(url, engine_kwargs=engine)
            from .resilient import ResilientRDBStorage

            return ResilientRDBStorage(url, retry_s=st.storage_retry_s, engine_kwargs=engine,
                                       heartbeat_interval=st.heartbeat_s, grace_period=st.grace_s,
                                       heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                           max_retry=st.max_retry, inherit_intermediate_values=True))
        except Exception as e:  # noqa: BLE001 - SQLAlchemy/driver errors: say which storage, never its password
            # NOTE: a server at max_connections is busy, not wrong: wait for a free slot (a wrong URL still fails
            # at once); bounded by storage_retry_s, 60 s for a command that only reads
            bound = st.storage_retry_s if st is not None else 60.0
            if any(r in str(e) for r in _SCHEMA_RACE) and raced < 5:
                # NOTE: workers started together on a fresh storage each create its tables; the losers of that
                # race see the winner's rows — the schema exists now, so opening it again succeeds
                log.info("storage %s: its tables were created by another process meanwhile; opening it again",
                         redact(url))
                raced += 1
                time.sleep(0.2 * raced)
                continue
            if any(b in str(e) for b in _BUSY) and waited < bound:
                log.warning("storage %s has no free connection; retrying in %.0f s", redact(url), pause)
                time.sleep(pause)
                waited, pause = waited + pause, min(pause * 2, 10.0)
                continue
            raise ValueError(f"study.storage={redact(url)!r}: cannot open it: {type(e).__name__}: "
                             f"{redact(str(e)).splitlines()[0]}") from None


#: PostgreSQL's messages when every connection slot (of the server, or of a database or role with a CONNECTION
#: LIMIT) is taken, SQLSTATE 53300: transient, worth waiting for
_BUSY = ("too many clients already", "too many connections for")

#: What a process sees when another one created the same fresh storage's tables at the same moment (Optuna's
#: ``create_all`` and its ``alembic_version`` row are not atomic across processes): SQLite, PostgreSQL, MySQL
_SCHEMA_RACE = ("alembic_version", "already exists", "pg_type_typname_nsp_index", "Duplicate entry")


def make_sampler(sweep: Sweep) -> optuna.samplers.BaseSampler:
    """The study's sampler from the registry of :mod:`.samplers` (tpe, random, grid, gp, cmaes, nsga2, brute;
    each entry says why it is built as it is). Grid points are enqueued as trials (:func:`open_study`), so grid
    runs them with a seeded random sampler for anything left.

    Each worker samples with ``study.seed`` plus its index (``IRPE_BENCH_WORKER``, set by the launcher; 0 when
    unset): workers seeded alike would draw the same start-up points, each training the same configuration."""
    import os

    from .samplers import make

    st = sweep.config.study
    offset = int(os.environ.get(WORKER_ENV, "0") or 0)
    return make(st.model_copy(update={"seed": st.seed + offset}) if offset else st)


def make_pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    st = sweep.config.study
    if st.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=st.pruner_warmup_epochs)
    if st.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=sweep.base_config.trainer.max_epochs)
    return optuna.pruners.NopPruner()


def open_study(sweep: Sweep, meta: dict) -> Tuple[optuna.Study, bool]:
    """Create the study (and enqueue the grid) or join the existing one → (study, created).

    Joining checks that the trials stay comparable and refuses otherwise (``ValueError`` saying what differs);
    a grid study whose file gained choices (seeds, methods) grows: only its new points are enqueued
    (:mod:`.extend` has the rules). ``meta`` (stored as the study's ``sweep`` attribute: file, space,
    command — never the storage URL) is written by the creator, and updated by an extension."""
    from .extend import CHOICES_ATTR, IDENTITY_ATTR, differences, extend, refuse, stored_state

    storage = open_storage(sweep, wal=True)  # NOTE: workers only write through this one
    name = sweep.config.study.name
    kw = dict(storage=storage, study_name=name, sampler=make_sampler(sweep), pruner=make_pruner(sweep))
    st = sweep.config.study
    try:  # one objective: the same single-objective study as ever; several: trial.values in the listed order
        study = optuna.create_study(directions=[o.direction for o in st.objectives], load_if_exists=False, **kw)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(**kw)
        created = False
    grid = sweep.config.study.sampler == "grid"
    if created:
        study.set_user_attr(IDENTITY_ATTR, sweep.identity())
        study.set_user_attr(CHOICES_ATTR, sweep.choices())
        study.set_user_attr("sweep", meta)
        _set_objective_attrs(sweep, study)
    else:
        identity, choices = stored_state(sweep, study)
        diffs = ["the base config, overrides, space, sampler or pruner differ (the study predates itemised "
                 "checks)"] if identity is None else differences(identity, sweep.identity(), choices, sweep.choices())
        if diffs:
            raise refuse(sweep, study, diffs)
        if IDENTITY_ATTR not in study.user_attrs:  # an older study: record what it is, for the next join
            study.set_user_attr(IDENTITY_ATTR, sweep.identity())
            study.set_user_attr(CHOICES_ATTR, choices)
        if not study.user_attrs.get("sweep"):
            study.set_user_attr("sweep", meta)
        if OBJECTIVES_ATTR not in study.user_attrs:  # a study made before several objectives existed
            _set_objective_attrs(sweep, study)
        if grid and study.user_attrs.get("grid_enqueued"):
            study = extend(sweep, study, storage, meta, choices, lambda: optuna.load_study(**kw))
    if study.user_attrs.get(REFERENCE_ATTR) != sweep.config.study.reference:  # the leaderboard reads it
        study.set_user_attr(REFERENCE_ATTR, sweep.config.study.reference)
    if grid and not study.user_attrs.get("grid_enqueued"):
        if created or not study.trials:  # the creator, or a creator killed before it enqueued
            for params in grid_params(sweep, study):  # seeds until decided: the first look's seeds only
                study.enqueue_trial(params, skip_if_exists=True)
            study.set_user_attr("grid_enqueued", True)
    return study, created


def _set_objective_attrs(sweep: Sweep, study: optuna.Study) -> None:
    """What the leaderboard reads to know the study's objectives, constraints and repeats (:mod:`.objectives`)."""
    from .objectives import constraints_attr, objectives_attr

    st = sweep.config.study
    study.set_user_attr(OBJECTIVES_ATTR, objectives_attr(st.objectives))
    study.set_user_attr("constraints", constraints_attr(st.parsed_constraints))
    study.set_user_attr("repeats", st.repeats)


def heartbeat_enabled(study: optuna.Study) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(study._storage)


def requeue(study: optuna.Study, failed: optuna.trial.FrozenTrial) -> None:
    """A WAITING copy of the FAIL trial ``failed`` — same parameters, user attributes (its run directory) and
    intermediate values — as the heartbeat's retry makes it (one mechanism for every route back to the queue)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=None, inherit_intermediate_values=True)(study, failed)


def put_back(study: optuna.Study, trial_id: int, reason: str, attrs: Optional[dict] = None) -> Optional[int]:
    """Fail a RUNNING trial and queue its copy (same parameters, user attributes — the run directory — and
    intermediate values), as the heartbeat's retry does, but now: the number of the queued copy, or None when
    the trial had finished already. ``attrs``: user attributes set on the trial first (so the copy has them)."""
    storage = study._storage
    try:
        for k, v in (attrs or {}).items():
            storage.set_trial_user_attr(trial_id, k, v)
        storage.set_trial_system_attr(trial_id, "fail_reason", reason)
        if not storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:  # finished meanwhile (or failed as stale by another worker)
        return None
    failed = storage.get_trial(trial_id)
    requeue(study, failed)
    return next((t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
                 if (t.system_attrs.get("retry_history") or [None])[-1] == failed.number), None)


def fail_running(study: optuna.Study) -> int:
    """Mark every RUNNING trial failed and queue its retry (storages without a heartbeat, after a crash).
    Only safe when no worker of this study is alive; returns how many were recovered."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if put_back(study, t._trial_id, "recovered with --fail-running") is not None:
            n += 1
    return n
