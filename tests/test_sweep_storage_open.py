"""Workers started together on a fresh storage: each one creates the storage's tables, and all of them must open it.

Optuna's ``RDBStorage`` creates the tables and then inserts its ``alembic_version`` row; two processes doing this
at the same moment collide (SQLite: ``UNIQUE constraint failed: alembic_version.version_num``; PostgreSQL: a
duplicate key or "already exists"). A cluster's array job starts its workers within the same second, and a user
watching with ``status`` opens the storage while the first worker creates it: the loser of that race must open
the storage the winner made, not fail the worker. The processes here are real (spawned, released together by a
barrier; forked, so that each starts at once), on a real SQLite file and a real PostgreSQL database."""
from __future__ import annotations

import multiprocessing as mp
import uuid

import pytest

from irpe_bench.sweep.storage import storage_from_url

N_PROCS = 8
ROUNDS = 3


def _open(url: str, barrier, results) -> None:
    barrier.wait()
    try:
        storage = storage_from_url(url)
        storage.get_all_studies()
        results.put("ok")
    except Exception as e:  # noqa: BLE001 - the parent reports what each process saw
        results.put(f"{type(e).__name__}: {e}")


def _race(url: str) -> list:
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(N_PROCS), ctx.Queue()
    procs = [ctx.Process(target=_open, args=(url, barrier, results)) for _ in range(N_PROCS)]
    for p in procs:
        p.start()
    out = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return out


@pytest.mark.slow
def test_workers_opening_a_fresh_sqlite_storage_together_all_open_it(tmp_path):
    import sqlite3

    for i in range(ROUNDS):  # the race is a matter of timing: several fresh files
        path = tmp_path / f"r{i}" / "optuna.db"
        out = _race(f"sqlite:///{path}")
        assert out == ["ok"] * N_PROCS, out
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT COUNT(*) FROM alembic_version").fetchone() == (1,)


@pytest.mark.slow
@pytest.mark.postgresql
def test_workers_opening_a_fresh_postgresql_storage_together_all_open_it(postgresql_url):
    import psycopg

    admin = psycopg.connect(postgresql_url, autocommit=True)
    names = [f"pytest_race_{uuid.uuid4().hex[:8]}" for _ in range(ROUNDS)]
    try:
        for db in names:
            admin.execute(f"CREATE DATABASE {db}")
            url = postgresql_url.rsplit("/", 1)[0] + f"/{db}"
            out = _race(url)
            assert out == ["ok"] * N_PROCS, out
            with psycopg.connect(url) as conn:
                assert conn.execute("SELECT COUNT(*) FROM alembic_version").fetchone() == (1,)
    finally:
        for db in names:
            admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.close()


def _journal_mode(path) -> str:
    import sqlite3

    with sqlite3.connect(path) as c:
        return c.execute("PRAGMA journal_mode").fetchone()[0]


def test_a_writer_puts_sqlite_in_wal_mode_and_a_reader_leaves_the_file_as_it_is(tmp_path):
    """Workers commit without waiting for the disk (WAL, synchronous=NORMAL); a command that only reads — the
    leaderboard of a committed study — must not rewrite the file's header (a clean clone stays clean)."""
    import hashlib

    import optuna

    read = tmp_path / "read.db"
    optuna.create_study(storage=f"sqlite:///{read}", study_name="s").optimize(lambda t: t.suggest_float("x", 0, 1),
                                                                               n_trials=2)
    before = hashlib.sha256(read.read_bytes()).hexdigest()
    reader = storage_from_url(f"sqlite:///{read}")
    assert len(reader.get_all_trials(reader.get_study_id_from_name("s"))) == 2
    reader.engine.dispose()
    assert _journal_mode(read) == "delete" and hashlib.sha256(read.read_bytes()).hexdigest() == before

    written = tmp_path / "written.db"
    writer = storage_from_url(f"sqlite:///{written}", wal=True)
    study = optuna.create_study(storage=writer, study_name="s")
    with writer.engine.connect() as c:
        from sqlalchemy import text

        assert c.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL, on every pooled connection
    trial = study.ask()
    for i in range(5):
        trial.set_user_attr(f"k{i}", i)
    study.tell(trial, 0.5)
    writer.engine.dispose()  # the last connection closes: the log is folded back into the file
    assert not (tmp_path / "written.db-wal").exists()
    assert _journal_mode(written) == "wal"
    again = optuna.load_study(storage=f"sqlite:///{written}", study_name="s")
    assert again.trials[0].user_attrs == {f"k{i}": i for i in range(5)} and again.trials[0].value == 0.5
