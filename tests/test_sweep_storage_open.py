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


def test_workers_opening_a_fresh_sqlite_storage_together_all_open_it(tmp_path):
    import sqlite3

    for i in range(ROUNDS):  # the race is a matter of timing: several fresh files
        path = tmp_path / f"r{i}" / "optuna.db"
        out = _race(f"sqlite:///{path}")
        assert out == ["ok"] * N_PROCS, out
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT COUNT(*) FROM alembic_version").fetchone() == (1,)


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
