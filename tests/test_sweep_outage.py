"""Database outages under real sweep workers: a private PostgreSQL cluster restarted or stopped mid-sweep.

What a user relies on: a PostgreSQL restart (or the database unreachable for a while) costs no worker and no
trial — every storage call retries with backoff and says so in the log, the password never shown — and the
sweep finishes with exit 0; an outage longer than ``study.storage_retry_s`` stops the worker cleanly (exit 75,
a message) with its trial resumable, and once the database is back a rerun finishes the study.

NOTE: the server restarted here is a private cluster on a free port, never the shared one on 5432 that other
tests (``pytest -n 2``) use at the same time. It needs PostgreSQL's binaries (``initdb``, ``pg_ctl``); as root
they run as the ``postgres`` user (PostgreSQL refuses root)."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from irpe_bench.cli import main
from irpe_bench.sweep.preempt import EXIT_PREEMPTED

from ._processes import start
from ._train_helpers import tiny_dict, write_yaml

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cret-outage"  # trust auth ignores it; it is there to be redacted


def _binaries() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl and shutil.which("initdb") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A throw-away PostgreSQL cluster (trust auth) on a free port: start, stop, restart, remove."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin, self.port = bin_dir, _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="irpe-pg-"))  # NOTE: not under pytest's 0700 tmp of root
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.root, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    @property
    def url(self) -> str:
        return f"postgresql://postgres:{SECRET}@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        out = subprocess.run([*self.as_user, str(self.bin / tool), *args], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)}: {out.stdout}{out.stderr}"
                               f"{self.log.read_text() if self.log.exists() else ''}")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")  # ends every open connection

    def remove(self) -> None:
        subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def cluster():
    bin_dir = _binaries()
    why = None
    if bin_dir is None:
        why = "no PostgreSQL binaries (initdb, pg_ctl under /usr/lib/postgresql/*/bin or on PATH)"
    elif os.geteuid() == 0 and shutil.which("runuser") is None:
        why = "running as root without runuser: PostgreSQL refuses to run as root"
    if why is not None:
        required = os.environ.get("IRPE_BENCH_REQUIRE_POSTGRESQL", "").lower() in ("1", "true", "yes")
        (pytest.fail if required else pytest.skip)(why)  # as conftest's postgresql_url does
    c = Cluster(bin_dir)
    try:
        c.start()
        yield c
    finally:
        c.remove()


def _sweep(tmp_path: Path, seeds, epochs: int, **study) -> Path:
    write_yaml(tmp_path / "base.yaml", tiny_dict(tmp_path, trainer={"max_epochs": epochs, "limit_train_batches": 6,
                                                                    "benchmark_batches": 0}))
    data = {"study": {"name": "outage", "sampler": "grid", "pruner": "none", "heartbeat_s": 1, **study},
            "base": "base.yaml", "out_dir": str(tmp_path / "out"), "space": {"seed": {"choices": list(seeds)}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _env(url: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
            "IRPE_BENCH_STORAGE": url}


def _start(path: Path, log: Path, url: str, *extra: str):
    return start(["sweep", str(path), "--no-leaderboard", *extra], cwd=path.parent, env=_env(url),
                 stdout=subprocess.DEVNULL, stderr=log.open("w"))


def _load(url: str) -> optuna.Study:
    return optuna.load_study(study_name="outage", storage=url.replace("postgresql://", "postgresql+psycopg://"))


def _wait_running(proc, url: str, trials: int, epochs: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the sweep ended too early"
        time.sleep(0.3)
        try:
            running = _load(url).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except Exception:  # noqa: BLE001 - not created yet
            continue
        if len(running) >= trials and min(len(t.intermediate_values) for t in running) >= epochs:
            return
    raise AssertionError("the workers never got that far")


def _trial_logs(tmp_path: Path) -> str:
    """What the trials logged (a worker's records go to the running trial's ``train.log``, see sweep/progress.py)."""
    return "".join(p.read_text() for p in sorted((tmp_path / "out" / "runs").glob("*/train.log")))


def _counted(study: optuna.Study) -> list:
    # NOTE: two workers passing the budget check for the last slot at once: the later trial is discarded untrained
    return [t for t in study.trials if t.user_attrs.get("status") != "discarded"]


@pytest.mark.slow
def test_a_postgresql_restart_mid_sweep_costs_no_worker_and_no_trial(tmp_path, cluster):
    seeds, epochs = (0, 1, 2), 10  # NOTE: long enough that both workers (forked together) are mid-trial at once
    path = _sweep(tmp_path, seeds, epochs=epochs, grace_s=30)
    log = tmp_path / "sweep.log"
    proc = _start(path, log, cluster.url, "--set", "workers=2")
    try:
        _wait_running(proc, cluster.url, trials=2, epochs=1)
        cluster.stop()  # both workers mid-trial: their connections end, every call fails until it is back
        time.sleep(3)
        cluster.start()
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = log.read_text()
    assert proc.returncode == 0, err[-4000:]
    logged = err + _trial_logs(tmp_path)
    assert "storage unreachable: OperationalError" in logged and "retrying in" in logged
    assert "storage reachable again" in logged
    assert SECRET not in logged and f"postgres:***@127.0.0.1:{cluster.port}" in logged
    trials = _counted(_load(cluster.url))
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3  # no trial failed, retried or lost
    assert sorted(t.params["seed"] for t in trials) == list(seeds)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers went on after the restart
    assert all(sorted(t.intermediate_values) == list(range(epochs)) for t in trials)


@pytest.mark.slow
def test_an_outage_past_storage_retry_s_stops_the_worker_and_a_rerun_finishes(tmp_path, cluster, monkeypatch):
    seeds = (0, 1)
    path = _sweep(tmp_path, seeds, epochs=6, grace_s=4, storage_retry_s=3)
    log = tmp_path / "sweep.log"
    proc = _start(path, log, cluster.url)
    try:
        _wait_running(proc, cluster.url, trials=1, epochs=2)
        cluster.stop()
        t0 = time.time()
        proc.wait(timeout=120)
        stopped_after = time.time() - t0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
    err = log.read_text()
    assert proc.returncode == EXIT_PREEMPTED, err[-4000:]
    assert stopped_after < 60, "the worker waited far past study.storage_retry_s"
    assert "(study.storage_retry_s=3)" in err and SECRET not in err + _trial_logs(tmp_path)
    ckpt = next((tmp_path / "out" / "runs").glob("trial-0000-*/checkpoints/last.ckpt"))
    assert f"Trial 0 (deit_tiny_ctx_product_50_shared_k) will resume from {ckpt}" in err
    assert "could not be queued again" in err and "stays RUNNING" in err

    cluster.start()
    study = _load(cluster.url)
    assert [t.state for t in study.trials] == [TrialState.RUNNING, TrialState.WAITING]  # not failed: resumable
    # the rerun in this process (it has imported everything): what it checks is the resume, not a start-up
    monkeypatch.setenv("IRPE_BENCH_STORAGE", cluster.url)
    assert main(["sweep", str(path), "--no-leaderboard"]) == 0
    trials = _load(cluster.url).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["seed"] for t in complete) == list(seeds)
    (retry,) = [t for t in complete if t.user_attrs["retry_of"] == 0]
    summary = json.loads((Path(retry.user_attrs["run_dir"]) / "summary.json").read_text())
    assert summary["resumed_from"] == str(ckpt) and summary["epochs"] == 6
    assert [t.state for t in trials if t not in complete] == [TrialState.FAIL]  # the stopped one, retried


# ---------------------------------------------------------------------------------------------- the storage alone
def test_every_session_opening_method_of_rdbstorage_is_retried():
    """If Optuna adds a method that talks to the database, it must be in RETRIED (else it would not survive)."""
    import inspect

    from optuna.storages import RDBStorage

    from irpe_bench.sweep.resilient import RETRIED

    opening = {name for name, f in vars(RDBStorage).items()
               if callable(f) and "_create_scoped_session(" in inspect.getsource(f)}
    assert opening == set(RETRIED)


def test_the_resilient_storage_keeps_optunas_cache_heartbeat_and_ddp_pruning(tmp_path):
    from optuna.storages import RDBStorage, _CachedStorage
    from optuna.storages._heartbeat import is_heartbeat_enabled

    from irpe_bench.sweep import load_sweep, open_storage
    from irpe_bench.sweep.resilient import ResilientRDBStorage

    sweep = load_sweep(_sweep(tmp_path, (0,), epochs=1, storage_retry_s=7))
    storage = open_storage(sweep)
    assert isinstance(storage, ResilientRDBStorage) and storage.retry_s == 7
    study = optuna.create_study(storage=storage, study_name="x")
    # what PyTorchLightningPruningCallback checks before a DDP trial, and what the heartbeat needs
    assert isinstance(study._storage, _CachedStorage) and isinstance(study._storage._backend, RDBStorage)
    assert is_heartbeat_enabled(study._storage) and study._storage.get_heartbeat_interval() == 1


def test_storage_retry_s_is_validated(tmp_path):
    from irpe_bench.sweep import load_sweep

    with pytest.raises(ValueError) as e:
        load_sweep(_sweep(tmp_path, (0,), epochs=1, storage_retry_s=0))
    assert "storage_retry_s" in str(e.value) and "greater than 0" in str(e.value)


@pytest.mark.slow
def test_a_storage_call_waits_out_a_restart_and_gives_up_past_the_bound(cluster, caplog):
    import logging
    import threading

    from irpe_bench.sweep.resilient import ResilientRDBStorage, StorageUnavailable
    from irpe_bench.sweep.storage import driver_url

    storage = ResilientRDBStorage(driver_url(cluster.url), retry_s=60, engine_kwargs={"pool_pre_ping": True})
    study = optuna.create_study(storage=storage, study_name="calls")
    cluster.stop()
    threading.Timer(2, cluster.start).start()
    with caplog.at_level(logging.WARNING, logger="irpe_bench.sweep.resilient"):
        study.set_user_attr("k", 1)  # blocks while the server is down, then goes through
    assert optuna.load_study(study_name="calls", storage=storage).user_attrs == {"k": 1}
    text = caplog.text
    assert "storage unreachable: OperationalError" in text and "retrying in 0.5 s" in text
    assert "storage reachable again" in text and SECRET not in text and "postgres:***@" in text

    short = ResilientRDBStorage(driver_url(cluster.url), retry_s=2)
    study = optuna.load_study(study_name="calls", storage=short)
    cluster.stop()
    t0 = time.time()
    with pytest.raises(StorageUnavailable, match=r"unreachable for \d+ s \(study.storage_retry_s=2\)"):
        study.set_user_attr("k", 2)
    assert time.time() - t0 < 30
    t0 = time.time()
    with pytest.raises(StorageUnavailable):  # given up: at once, no attempt that could record anything
        study.set_user_attr("k", 3)
    assert time.time() - t0 < 1
    cluster.start()
    with short.one_try():  # the worker's last attempt to put its trial back
        study.set_user_attr("k", 4)
    assert optuna.load_study(study_name="calls", storage=storage).user_attrs == {"k": 4}


@pytest.mark.slow
@pytest.mark.postgresql
def test_opening_a_storage_waits_for_a_free_connection_slot(postgresql_url, caplog):
    """A server with every connection slot taken (SQLSTATE 53300) is busy, not wrong: opening the storage waits
    for a slot (bounded, logged, redacted) instead of failing the worker; past the bound it fails clearly."""
    import logging
    import threading

    import psycopg

    from irpe_bench.sweep.storage import storage_from_url

    db = f"pytest_busy_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(postgresql_url, autocommit=True)
    try:
        admin.execute(f"CREATE ROLE {db} LOGIN")  # not a superuser: a database's CONNECTION LIMIT binds it
        admin.execute(f"CREATE DATABASE {db} OWNER {db} CONNECTION LIMIT 3")
        url = postgresql_url.rsplit("/", 1)[0].replace("postgres@", f"{db}@") + f"/{db}"
        held = [psycopg.connect(url) for _ in range(3)]  # every slot (opening a storage takes more than one)
        threading.Timer(1.5, lambda: [c.close() for c in held]).start()
        with caplog.at_level(logging.WARNING, logger="irpe_bench.sweep.storage"):
            storage = storage_from_url(url)  # waits until the slot is free
        assert "has no free connection" in caplog.text and storage.get_all_studies() == []
        storage.engine.dispose()
        held = [psycopg.connect(url) for _ in range(3)]
        with pytest.raises(ValueError, match=r"study.storage=.*cannot open it: OperationalError"):
            from irpe_bench.sweep.config import StudyConfig

            storage_from_url(url, StudyConfig(name="busy", storage_retry_s=2))
        for c in held:
            c.close()
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.execute(f"DROP ROLE IF EXISTS {db}")
        admin.close()
