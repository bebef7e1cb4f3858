"""A queued trial runs once: workers released together on a fresh study each claim different trials.

The README's first command starts two workers on a fresh SQLite study; a cluster's array job starts many on one
PostgreSQL database. Each worker pops the grid's queued (WAITING) trials with Optuna's ``ask`` through the
worker's own storage (:func:`irpe_bench.sweep.storage.storage_from_url` with the study settings, as
:func:`irpe_bench.sweep.storage.open_storage` builds it). The processes are real (forked, released by a
barrier), the storages real: SQLite files, a PostgreSQL database, a journal file. Before the claim was one
compare-and-set (:mod:`irpe_bench.sweep.claim`), every SQLite round here ran some trials two to four times.

And a worker whose trial the storage finished meanwhile (failed as stale by another worker and queued again)
goes on with the next trial instead of dying on Optuna's "Cannot tell a FAIL trial"."""
from __future__ import annotations

import collections
import multiprocessing as mp
import threading
import time
import uuid
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from irpe_bench.cli import main
from irpe_bench.sweep.config import StudyConfig
from irpe_bench.sweep.storage import put_back, storage_from_url

from ._train_helpers import tiny_dict, write_yaml

N_WORKERS, N_TRIALS, ROUNDS = 4, 8, 3


def _worker(url: str, barrier, results) -> None:
    """Pop queued trials until none is left (then ``ask`` makes a new trial: failed and not counted)."""
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    got, error = [], None
    try:
        storage = storage_from_url(url, StudyConfig(name="race", heartbeat_s=60, grace_s=600))
        study = optuna.load_study(study_name="race", storage=storage)
        barrier.wait()
        while True:
            trial = study.ask()
            if "fixed_params" not in storage.get_trial_system_attrs(trial._trial_id):  # the queue is empty
                study.tell(trial, state=TrialState.FAIL)
                break
            got.append(trial.number)
            study.tell(trial, float(trial.number))
    except Exception as e:  # noqa: BLE001 - the parent reports what each process saw
        error = f"{type(e).__name__}: {e}"
    results.put((got, error))


def _race(url: str) -> None:
    """A fresh study with ``N_TRIALS`` queued trials, ``N_WORKERS`` processes released at once: each trial ran
    exactly once and is complete."""
    study = optuna.create_study(study_name="race", storage=storage_from_url(url))
    for i in range(N_TRIALS):
        study.enqueue_trial({"x": i})
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(N_WORKERS), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, barrier, results)) for _ in range(N_WORKERS)]
    for p in procs:
        p.start()
    out = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [e for _, e in out if e] == []
    runs = collections.Counter(n for got, _ in out for n in got)
    assert {n: c for n, c in runs.items() if c != 1} == {}, f"trials run more than once: {runs}"
    assert sorted(runs) == list(range(N_TRIALS))
    done = optuna.load_study(study_name="race", storage=storage_from_url(url)).trials
    assert [(t.number, t.state, t.value) for t in done[:N_TRIALS]] == \
        [(i, TrialState.COMPLETE, float(i)) for i in range(N_TRIALS)]


@pytest.mark.slow
def test_workers_released_together_on_fresh_sqlite_studies_run_each_trial_once(tmp_path):
    for i in range(ROUNDS):  # a race: several fresh files (before the fix every round had duplicates)
        _race(f"sqlite:///{tmp_path}/r{i}/optuna.db")


def test_workers_released_together_on_a_fresh_journal_run_each_trial_once(tmp_path):
    for i in range(2):
        _race(f"journal:///{tmp_path}/r{i}/optuna.log")


@pytest.mark.postgresql
def test_workers_released_together_on_a_fresh_postgresql_database_run_each_trial_once(postgresql_url):
    import psycopg

    admin = psycopg.connect(postgresql_url, autocommit=True)
    db = f"pytest_claim_{uuid.uuid4().hex[:8]}"
    admin.execute(f"CREATE DATABASE {db}")
    try:
        _race(postgresql_url.rsplit("/", 1)[0] + f"/{db}")
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin.close()


def _fail_as_stale(url: str, number: int, seen: dict, stop: threading.Event) -> None:
    """What another worker's heartbeat check does to a trial it thinks dead: fail it and queue its copy — here
    once trial ``number`` has reported its first epoch, while its worker still trains it."""
    storage = storage_from_url(url)
    while not stop.is_set():
        try:
            study = optuna.load_study(study_name="s", storage=storage)
        except KeyError:  # not created yet
            time.sleep(0.05)
            continue
        running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number == number
                   and t.intermediate_values]
        if running:
            seen["copy"] = put_back(study, running[0]._trial_id, "stale heartbeat (failed by the test)")
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_a_worker_whose_trial_was_finished_elsewhere_goes_on(tmp_path):
    write_yaml(tmp_path / "base.yaml", tiny_dict(tmp_path, trainer={"max_epochs": 3, "benchmark_batches": 0}))
    data = {"study": {"name": "s", "sampler": "grid", "pruner": "none"}, "base": "base.yaml",
            "space": {"seed": {"choices": [0, 1]}}, "out_dir": str(tmp_path / "out")}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    url = f"sqlite:///{tmp_path}/out/optuna.db"
    seen, stop = {}, threading.Event()
    thread = threading.Thread(target=_fail_as_stale, args=(url, 0, seen, stop), daemon=True)
    thread.start()
    try:
        assert main(["sweep", str(path), "--no-leaderboard"]) == 0  # before: "Cannot tell a FAIL trial", exit 2
    finally:
        stop.set()
        thread.join(timeout=10)
    assert seen.get("copy") == 2
    trials = optuna.load_study(study_name="s", storage=url).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[2].system_attrs["retry_history"] == [0]
    assert Path(trials[2].user_attrs["run_dir"]) == Path(trials[0].user_attrs["run_dir"])  # the same run, resumed
    assert sorted(t.params["seed"] for t in trials[1:]) == [0, 1]


@pytest.mark.slow
def test_four_real_sweep_workers_on_a_fresh_study_run_each_point_once(tmp_path):
    """The issue's end-to-end race: one ``run.py sweep`` with four workers started at once on a fresh SQLite
    study (the README's first command starts two): every grid point trains exactly once, in its own run directory,
    no trial fails or is discarded untrained, and the sweep exits 0 (before the claim was atomic, two workers
    trained trial 0 in one run directory, Lightning's CSV logger failed and a worker died with exit 2). One round:
    the repeated rounds are the bare claim race's above (a whole sweep costs ~45 s on 2 cores)."""
    round_ = 0
    write_yaml(tmp_path / "base.yaml", tiny_dict(tmp_path, trainer={
        "max_epochs": 1, "benchmark_batches": 0, "limit_train_batches": 2, "limit_val_batches": 1,
        "limit_test_batches": 1}))
    data = {"study": {"name": f"race{round_}", "sampler": "grid", "pruner": "none"}, "base": "base.yaml",
            "space": {"model.rpe.method": {"choices": ["none", "product"]}, "seed": {"choices": [0, 1, 2, 3]}},
            "out_dir": str(tmp_path / "out"), "workers": N_WORKERS}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["sweep", str(path), "--no-leaderboard"]) == 0
    trials = optuna.load_study(study_name=f"race{round_}", storage=f"sqlite:///{tmp_path}/out/optuna.db").trials
    assert all(t.state == TrialState.COMPLETE for t in trials), [(t.number, t.state, t.user_attrs.get("error"))
                                                                 for t in trials]
    points = collections.Counter((t.params["model.rpe.method"], t.params["seed"]) for t in trials)
    assert len(points) == 8 and set(points.values()) == {1}, points
    dirs = [t.user_attrs["run_dir"] for t in trials]
    assert len(set(dirs)) == len(dirs) == 8
    assert len({t.user_attrs["worker"] for t in trials}) >= 2  # the workers did share the grid


def _fail_stale(url: str, ready, go, results) -> None:
    """Once released: the heartbeat check every worker makes before it starts a trial (stale trials failed,
    each failed one queued again by the retry callback). NOTE: opened a grace period before (``ready``): a storage
    that met a locked database while opening judges no trial stale for that long (it may have missed beats)."""
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    error = None
    try:
        storage = storage_from_url(url, StudyConfig(name="stale", heartbeat_s=1, grace_s=2))
        study = optuna.load_study(study_name="stale", storage=storage)
        ready.wait()
        go.wait()
        optuna.storages.fail_stale_trials(study)
    except Exception as e:  # noqa: BLE001 - the parent reports what each process saw
        error = f"{type(e).__name__}: {e}"
    results.put(error)


@pytest.mark.slow
def test_workers_finding_the_same_killed_trials_stale_queue_each_retry_once(tmp_path):
    """Trials whose worker died (running, heartbeat stale) are found by every worker's heartbeat check; workers
    released together at that check fail each such trial once and queue one retry of it (before, on SQLite, two
    workers could both fail it and both queue a retry: two retries then resumed one run directory at once)."""
    url = f"sqlite:///{tmp_path}/stale.db"
    storage = storage_from_url(url, StudyConfig(name="stale", heartbeat_s=1, grace_s=2))
    study = optuna.create_study(study_name="stale", storage=storage)
    for i in range(N_TRIALS):
        study.enqueue_trial({"x": i})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        killed = [study.ask() for _ in range(N_TRIALS)]  # running, as the workers that were killed left them
    for trial in killed:
        storage.record_heartbeat(trial._trial_id)
    ctx = mp.get_context("fork")
    ready, go, results = ctx.Barrier(N_WORKERS + 1), ctx.Barrier(N_WORKERS + 1), ctx.Queue()
    procs = [ctx.Process(target=_fail_stale, args=(url, ready, go, results)) for _ in range(N_WORKERS)]
    for p in procs:
        p.start()
    ready.wait(timeout=120)
    # past the grace period (2 s; SQLite's clock has whole seconds): the trials are stale, every worker may judge
    time.sleep(3.2)
    go.wait(timeout=120)
    errors = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [e for e in errors if e] == []
    trials = optuna.load_study(study_name="stale", storage=storage_from_url(url)).trials
    assert [t.state for t in trials[:N_TRIALS]] == [TrialState.FAIL] * N_TRIALS
    retries = collections.Counter(t.system_attrs["retry_history"][-1] for t in trials[N_TRIALS:])
    assert retries == {n: 1 for n in range(N_TRIALS)}, retries
    assert all(t.state == TrialState.WAITING for t in trials[N_TRIALS:])
