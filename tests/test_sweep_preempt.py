"""Preemption of real sweep workers (real subprocesses, real Lightning trainers, real SQLite and PostgreSQL).

What a cluster user relies on: SIGTERM (or SIGUSR1) mid-trial makes the worker save the trial's checkpoint,
put the trial back in the queue and exit at once with code 75 and a message saying what happened; the next
start resumes that trial from its checkpoint without waiting for a heartbeat to go stale, trains none of the
epochs done before the signal again, and every grid point ends complete exactly once. The launcher of several
workers forwards the signal to all of them."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from irpe_bench.cli import main
from irpe_bench.sweep.preempt import EXIT_PREEMPTED

from ._processes import start
from ._train_helpers import tiny_dict, write_yaml

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, BATCHES = 8, 6
GRACE_S = 600  # a restart that waited for the heartbeat would wait this long


def _sweep(tmp_path: Path, seeds, name: str = "pre", storage: str | None = None, **top) -> Path:
    write_yaml(tmp_path / "base.yaml", tiny_dict(tmp_path, trainer={"max_epochs": EPOCHS,
                                                                    "limit_train_batches": BATCHES,
                                                                    "benchmark_batches": 0}))
    study = {"name": name, "sampler": "grid", "pruner": "none", "heartbeat_s": 1, "grace_s": GRACE_S}
    data = {"study": study, "base": "base.yaml", "out_dir": str(tmp_path / "out"),
            "space": {"seed": {"choices": list(seeds)}}, **top}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **extra}


def _start(path: Path, log: Path, env: dict):
    return start(["sweep", str(path), "--no-leaderboard"], cwd=path.parent, env=env, stdout=subprocess.DEVNULL,
                 stderr=log.open("w"))


def _wait_for_epochs(proc, load, epochs: int, trials: int = 1, timeout: float = 300) -> None:
    """Until ``trials`` trials are RUNNING, one has reported ``epochs`` validation epochs to the storage and each
    has written an epoch's checkpoint."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the sweep ended before the signal"
        time.sleep(0.2)
        try:
            running = load().get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except (KeyError, Exception):  # noqa: BLE001 - the storage or study is not created yet
            continue
        if len(running) >= trials and max(len(t.intermediate_values) for t in running) >= epochs and all(
                "run_dir" in t.user_attrs and (Path(t.user_attrs["run_dir"]) / "checkpoints" / "last.ckpt").is_file()
                for t in running):
            return
    raise AssertionError("the trial never reached the wanted epoch")


def _stop(proc, sig: int) -> float:
    t0 = time.time()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=90)  # NOTE: a cluster sends SIGKILL this long after (--signal=B:TERM@120)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError("the worker did not exit after the signal") from None
    return time.time() - t0


def _logged_epochs(run_dir: Path) -> list:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return sorted({int(r["epoch"]) for r in csv.DictReader(f) if r.get("epoch") and r.get("train/loss")})


def _check_resumed(study: optuna.Study, seeds, stopped: dict) -> None:
    """Every grid point complete exactly once; each stopped trial finished by its copy, resumed from the
    checkpoint written at the signal (the epochs before it not trained again)."""
    trials = study.trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["seed"] for t in complete) == sorted(seeds)
    assert all(t.state == TrialState.FAIL for t in trials if t not in complete)
    for number, (epoch, step) in stopped.items():
        original = trials[number]
        assert original.state == TrialState.FAIL and original.user_attrs["status"] == "preempted"
        (retry,) = [t for t in complete if t.user_attrs["retry_of"] == number]
        assert retry.params == original.params and retry.user_attrs["run_dir"] == original.user_attrs["run_dir"]
        run_dir = Path(retry.user_attrs["run_dir"])
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
        assert summary["epochs"] == EPOCHS and summary["global_step"] == EPOCHS * BATCHES  # no batch twice
        # the resumed run's log starts at the epoch of the signal (the next one when it came during validation):
        # the epochs before it were not trained again
        logged = _logged_epochs(run_dir)
        assert logged and epoch <= logged[0] <= epoch + 1 and logged == list(range(logged[0], EPOCHS))
        assert sorted(retry.intermediate_values) == list(range(EPOCHS))  # every epoch reported exactly once


def _checkpoint_at(path: Path) -> tuple:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt["epoch"], ckpt["global_step"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT], ids=["SIGTERM", "SIGUSR1", "SIGINT"])
def test_a_signal_checkpoints_the_trial_and_the_restart_resumes_it_at_once(tmp_path, sig):
    seeds = (0, 1)
    path = _sweep(tmp_path, seeds)
    storage = f"sqlite:///{tmp_path / 'out' / 'optuna.db'}"
    load = lambda: optuna.load_study(study_name="pre", storage=storage)  # noqa: E731
    log = tmp_path / "worker.log"
    proc = _start(path, log, _env())
    _wait_for_epochs(proc, load, 2)
    _stop(proc, sig)
    err = log.read_text()
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    trials = load().trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING, TrialState.WAITING]  # none RUNNING
    ckpt = Path(trials[0].user_attrs["run_dir"]) / "checkpoints" / "last.ckpt"
    assert ckpt.is_file() and not ckpt.with_name("last.ckpt.tmp").exists()
    epoch, step = _checkpoint_at(ckpt)
    assert step >= 2 * BATCHES  # taken at the signal (or, during validation, the epoch before it), not earlier
    assert f"stopped (received {signal.Signals(sig).name})" in err
    assert f"Trial 0 (deit_tiny_ctx_product_50_shared_k) will resume from {ckpt} and is queued again as " \
           "trial 2" in err and f"exit code {EXIT_PREEMPTED}" in err
    copy = trials[2]
    assert copy.system_attrs["retry_history"] == [0] and copy.user_attrs["run_dir"] == trials[0].user_attrs["run_dir"]

    t0 = time.time()
    assert main(["sweep", str(path), "--no-leaderboard"]) == 0
    assert time.time() - t0 < GRACE_S / 2  # nothing waited for a heartbeat to go stale
    _check_resumed(load(), seeds, {0: (epoch, step)})
    after = load().trials
    assert after[2].datetime_start < after[1].datetime_start  # the interrupted trial resumed first, then seed 1


@pytest.mark.slow
@pytest.mark.postgresql
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_launcher_forwards_sigterm_to_both_postgresql_workers(tmp_path, postgresql_url, sig, monkeypatch):
    seeds = (0, 1, 2)
    name = f"pytest-pre-{uuid.uuid4().hex[:8]}"
    path = _sweep(tmp_path, seeds, name=name, workers=2)
    env = _env(IRPE_BENCH_STORAGE=postgresql_url)  # NOTE: the secret route: the environment, never the file
    url = postgresql_url.replace("postgresql://", "postgresql+psycopg://")
    storage = optuna.storages.RDBStorage(url)  # one engine for every poll: a new one each time holds connections
    load = lambda: optuna.load_study(study_name=name, storage=storage)  # noqa: E731
    try:
        log = tmp_path / "launcher.log"
        proc = _start(path, log, env)
        _wait_for_epochs(proc, load, 2, trials=2)
        _stop(proc, sig)  # to the launcher only (Ctrl-C too: the workers are in sessions of their own)
        err = log.read_text()
        assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
        assert f"received {sig.name}, forwarded to the workers): 2 of 2 worker(s) put their trial back" in err
        assert "Traceback" not in err
        trials = load().trials
        assert not [t for t in trials if t.state == TrialState.RUNNING]
        stopped = {}
        for t in trials:
            if t.state == TrialState.FAIL:
                ckpt = Path(t.user_attrs["run_dir"]) / "checkpoints" / "last.ckpt"
                assert f"Trial {t.number} (deit_tiny_ctx_product_50_shared_k) will resume from {ckpt}" in err
                stopped[t.number] = _checkpoint_at(ckpt)
        # on a loaded machine one worker may finish its first trial before the other reaches the wanted epoch:
        # then it is on the third grid point at the signal; either way each unfinished point is queued once
        complete = sum(t.state == TrialState.COMPLETE for t in trials)
        assert len(stopped) == 2 and sum(t.state == TrialState.WAITING for t in trials) == len(seeds) - complete

        # the restart, as another machine (or the same one) would join: one worker, in this process, which has
        # imported everything already (what it checks is the queue and the checkpoints, not the launcher again)
        monkeypatch.setenv("IRPE_BENCH_STORAGE", postgresql_url)
        t0 = time.time()
        assert main(["sweep", str(path), "--no-leaderboard", "--set", "workers=1"]) == 0
        assert time.time() - t0 < GRACE_S / 2
        _check_resumed(load(), seeds, stopped)
    finally:
        optuna.delete_study(study_name=name, storage=storage)
        storage.engine.dispose()


@pytest.mark.slow
def test_the_slurm_script_forwards_the_signal_and_requeues_the_job(tmp_path):
    """examples/slurm/sweep.sbatch run by bash as SLURM would (the batch shell gets SIGTERM, --signal=B:TERM);
    ``scontrol`` is a stand-in that records its arguments, as there is no scheduler here."""
    path = _sweep(tmp_path, (0,))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'scontrol.args'}\n")
    (bin_dir / "scontrol").chmod(0o755)
    secret = tmp_path / "storage"
    storage = f"sqlite:///{tmp_path / 'out' / 'optuna.db'}"
    secret.write_text(storage + "\n")
    env = _env(SWEEP=str(path), IRPE_BENCH_STORAGE_FILE=str(secret), SLURM_JOB_ID="4242", WORKERS="1",
               PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}")
    env.pop("IRPE_BENCH_STORAGE", None)
    log = tmp_path / "job.log"
    job = subprocess.Popen(["bash", str(ROOT / "examples" / "slurm" / "sweep.sbatch")], cwd=ROOT, env=env,
                           stdout=log.open("w"), stderr=subprocess.STDOUT)
    _wait_for_epochs(job, lambda: optuna.load_study(study_name="pre", storage=storage), 1)
    _stop(job, signal.SIGTERM)  # to the batch shell only
    out = log.read_text()
    assert job.returncode == EXIT_PREEMPTED, out[-3000:]
    assert (tmp_path / "scontrol.args").read_text().split() == ["requeue", "4242"]
    assert "will resume from" in out and "requeueing job 4242" in out
    states = [t.state for t in optuna.load_study(study_name="pre", storage=storage).trials]
    assert states == [TrialState.FAIL, TrialState.WAITING]
