"""Run a sweep: workers that pull trials from the shared storage until the study's budget is spent.

Many GPUs, many machines: every worker is the same loop over the same storage. ``python run.py sweep`` starts
``workers`` processes on this machine (each sees its own ``devices_per_worker`` GPUs through
``CUDA_VISIBLE_DEVICES`` — ``workers_per_device`` of them per GPU group — or an equal share of the CPU cores),
waits for them, then writes the leaderboard;
the same command on another machine with the same PostgreSQL ``storage`` joins the study.

A grid study whose file gained choices (more seeds, another method) is extended when it is opened: only
the new points run (:mod:`.extend`).

The budget is counted in the storage, not per worker: a worker starts a trial only while
``finished + running < n_trials`` (finished = complete, pruned, or failed and not retried), so N workers
together run ``n_trials``. A worker with nothing left to start still waits while trials are running, because
one of them may belong to a killed process: once its heartbeat is stale the worker fails it, and the retry
(same parameters, same run directory) resumes from its last checkpoint. Nothing already finished is lost.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import warnings
from typing import Dict, List, Optional, Sequence

import optuna

from .budget import budget, target_trials
from .config import Sweep
from .objective import Objective
from .storage import fail_running, heartbeat_enabled, open_study

log = logging.getLogger(__name__)


def work(sweep: Sweep, meta: dict, devices: Optional[int] = None, poll_s: Optional[float] = None,
         study: Optional[optuna.Study] = None) -> int:
    """One worker's loop (module docstring); returns the number of trials this worker ran. ``study``: the
    study if the caller opened it already (else it is created or joined here with ``meta``)."""
    from optuna.storages import fail_stale_trials

    from .extend import pinned_sweep

    if study is None:
        study, _ = open_study(sweep, meta)
    total, started, ran = target_trials(sweep, study), time.time(), 0
    objective = Objective(pinned_sweep(sweep, study), devices, total)  # samples with the study's choice lists
    timeout = sweep.config.study.timeout_s
    beating = heartbeat_enabled(study)
    poll = poll_s if poll_s is not None else max(1.0, sweep.config.study.heartbeat_s / 2)
    while True:
        if beating:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fail_stale_trials(study)
        c = budget(study)
        if timeout is not None and time.time() - started > timeout:
            log.info("timeout: %.0f s passed, no new trial", timeout)
            break
        if c["waiting"] > 0 or c["finished"] + c["running"] < total:
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
            ran += 1
            continue
        if c["running"] == 0 or not beating:
            break
        time.sleep(poll)  # others' trials run; one may be a killed process whose heartbeat goes stale
    return ran


def visible_gpus(env: Optional[Dict[str, str]] = None) -> List[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them (indices or UUIDs); all of them
    when it is unset. NOTE: a worker's own list is taken from this one, never from physical indices, so a
    sweep started with ``CUDA_VISIBLE_DEVICES=4,5,6,7`` stays on those four GPUs."""
    import torch

    env = os.environ if env is None else env
    given = env.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d.strip() for d in given.split(",") if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def worker_env(index: int, workers: int, devices_per_worker: int, workers_per_device: int = 1,
               gpus: Optional[Sequence[str]] = None, env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of worker ``index``. With ``gpus`` (CUDA): its group of ``devices_per_worker`` of them,
    group ``index // workers_per_device`` (so that many workers share each group); without (CPU): an equal
    share of the cores."""
    env = dict(os.environ if env is None else env)
    if gpus:
        group = index // workers_per_device
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[group * devices_per_worker:(group + 1) * devices_per_worker])
    else:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    return env


def gpus_needed(workers: int, devices_per_worker: int, workers_per_device: int) -> int:
    return -(-workers // workers_per_device) * devices_per_worker


def check_devices(sweep: Sweep) -> None:
    import torch

    c = sweep.config
    if torch.cuda.is_available():
        need, have = gpus_needed(c.workers, c.devices_per_worker, c.workers_per_device), len(visible_gpus())
        if need > have:
            raise ValueError(f"workers={c.workers} with devices_per_worker={c.devices_per_worker} and "
                             f"workers_per_device={c.workers_per_device} needs {need} GPUs; this process sees {have}")
    if c.workers > 4 and sweep.storage_url.startswith("sqlite"):
        raise ValueError(f"workers={c.workers} on SQLite: SQLite serialises writers; use PostgreSQL "
                         "(study.storage: postgresql://user@host/db) for more than 4 workers")


def launch(sweep: Sweep, argv: List[str]) -> int:
    """Start ``workers`` child processes running ``argv`` (the same sweep command plus ``--worker I``) and wait
    for all of them; returns the number that failed. The caller creates the study (and enqueues the grid)
    first, so the children only join it."""
    import torch

    c = sweep.config
    gpus = visible_gpus() if torch.cuda.is_available() else None
    procs = []
    for i in range(c.workers):
        cmd = [sys.executable, "-m", "irpe_bench.cli", *argv, "--worker", str(i)]
        env = worker_env(i, c.workers, c.devices_per_worker, c.workers_per_device, gpus)
        procs.append(subprocess.Popen(cmd, env=env))
    failed = 0
    for i, p in enumerate(procs):
        if p.wait() != 0:
            failed += 1
            log.error("worker %d exited with code %d", i, p.returncode)
    return failed


__all__ = ["work", "launch", "fail_running", "check_devices", "worker_env", "visible_gpus"]
