"""Run a sweep: workers that pull trials from the shared storage until the study's budget is spent.

Many GPUs, many machines: every worker is the same loop over the same storage. ``python run.py sweep`` starts
``workers`` processes on this machine (each sees its own ``devices_per_worker`` GPUs through
``CUDA_VISIBLE_DEVICES`` — ``workers_per_device`` of them per GPU group — or an equal share of the CPU cores),
waits for them, then writes the leaderboard;
the same command on another machine with the same PostgreSQL ``storage`` joins the study.

A grid study whose file gained choices (more seeds, another method) is extended when it is opened: only
the new points run (:mod:`.extend`). A study with ``study.seeds`` (seeds until decided) takes its due looks
before each trial and while it waits, and enqueues the seeds they allot (:mod:`.decided`).

The budget is counted in the storage, not per worker: a worker starts a trial only while
``finished + running < n_trials`` (finished = complete, pruned, or failed and not retried), so N workers
together run ``n_trials``. A worker with nothing left to start still waits while trials are running, because
one of them may belong to a killed process: once its heartbeat is stale the worker fails it, and the retry
(same parameters, same run directory) resumes from its last checkpoint. Nothing already finished is lost.

A worker told to stop (SIGTERM or SIGUSR1: a cluster's preemption or time limit) or whose storage stayed
unreachable past ``study.storage_retry_s`` does not wait for its heartbeat to go stale: its trial checkpoints at
the next batch, is put back in the queue at once and the process exits with code 75 (:mod:`.preempt`); the
launcher forwards the signal to its workers and exits the same way. The next start resumes that trial first.
"""
from __future__ import annotations

import gc
import logging
import os
import signal
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Dict, List, NoReturn, Optional, Sequence

import optuna

from .. import preloaded
from ..train.disk_faults import environment_error
from . import preempt
from .budget import budget, target_trials
from .config import Sweep
from .disk import NoRoom, Retention, check_room, retain
from .objective import Objective
from .resilient import ResilientRDBStorage, StorageUnavailable
from .storage import WORKER_ENV, fail_running, heartbeat_enabled, open_study, put_back

log = logging.getLogger(__name__)

#: A worker with nothing to start waits while others' trials run: mostly they end soon (the last trials of a
#: sweep), and its first look comes after this many seconds, each next one twice as late; the looks level off at
#: half the heartbeat interval (or ``work``'s ``poll_s``), often enough to see a killed worker's trial go stale.
FIRST_LOOK_S = 0.25


class _Tracked:
    """The objective, remembering the trial it runs until that trial returns or fails on its own (what a stop
    request must put back)."""

    def __init__(self, objective: Objective) -> None:
        self.objective, self.trial, self.last = objective, None, None

    def __call__(self, trial: optuna.Trial) -> float:
        self.trial = self.last = trial
        try:
            value = self.objective(trial)
        except Exception as e:
            fault = environment_error(e)
            if fault is not None and preempt.requested() is None:
                # NOTE: a full disk, a quota or a read-only run directory is not the trial's fault: stop like a
                # preempted worker (the trial, RUNNING still, is put back by ``work``), not a FAIL told to Optuna
                preempt.request_stop(str(fault))
                raise preempt.Preempted() from e
            if preempt.requested() is None:  # NOTE: a stop's own errors keep the trial for put-back
                self.trial = None
            raise
        self.trial = None
        return value

    def __getattr__(self, name: str):  # the objective's other attributes (callbacks of the loop)
        return getattr(self.objective, name)


def work(sweep: Sweep, meta: dict, devices: Optional[int] = None, poll_s: Optional[float] = None,
         study: Optional[optuna.Study] = None) -> int:
    """One worker's loop (module docstring); returns the number of trials this worker ran. ``study``: the
    study if the caller opened it already (else it is created or joined here with ``meta``).
    Raises :class:`.preempt.Preempted` (exit 75) after a stop request or a storage lost for good, its trial
    put back first (:func:`_stop`)."""
    if study is None:
        study, _ = open_study(sweep, meta)
    tracked: List[_Tracked] = []
    with preempt.stop_on_signals():
        try:
            ran = _loop(sweep, study, devices, poll_s, tracked)
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt) or (preempt.requested() is None and not
                                                   isinstance(e, StorageUnavailable)):
                raise
            _stop(sweep, study, tracked[0].trial if tracked else None, e)
        if preempt.requested() is not None:
            _stop(sweep, study, None, None)
    return ran


def _freeze_what_outlives_trials() -> None:
    """Keep what this process holds before its first trial (the imported torch, timm, Lightning and Optuna, the
    open study) out of the collection after each trial. That collection (``gc_after_trial``) is there for the
    trial's model, trainer and loaders, whose reference cycles only the collector frees, before the next trial
    allocates its own; a full one otherwise visits every object the imports created, hundreds of thousands, after
    every trial. Collected once first, so nothing that is garbage already is kept; an object alive now that turns
    into cyclic garbage later is never freed (:func:`gc.freeze`), which objects that live as long as the worker
    do not."""
    gc.collect()
    gc.freeze()


def _loop(sweep: Sweep, study: optuna.Study, devices: Optional[int], poll_s: Optional[float],
          tracked: List[_Tracked]) -> int:
    from optuna.storages import fail_stale_trials

    from .extend import pinned_sweep

    _freeze_what_outlives_trials()  # NOTE: before the clock of study.timeout_s starts: it counts trials
    total, started, ran = target_trials(sweep, study), time.time(), 0
    objective = _Tracked(Objective(pinned_sweep(sweep, study), devices, total))  # the study's choice lists
    tracked.append(objective)
    timeout = sweep.config.study.timeout_s
    beating = heartbeat_enabled(study)
    longest = poll_s if poll_s is not None else max(1.0, sweep.config.study.heartbeat_s / 2)
    first = pause = min(FIRST_LOOK_S, longest)
    policy = sweep.config.study.checkpoints
    retain(study, policy)  # trials finished by a worker killed before its retention ran
    while preempt.requested() is None:
        if beating:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                fail_stale_trials(study)
        if sweep.config.study.seeds is not None:  # seeds until decided: take the due looks, enqueue their seeds
            from .decided import step

            step(sweep, study)
            total = objective.objective.target = objective.progress.target = target_trials(sweep, study)
        c = budget(study)
        if timeout is not None and time.time() - started > timeout:
            log.info("timeout: %.0f s passed, no new trial", timeout)
            break
        if c["waiting"] > 0 or c["finished"] + c["running"] < total:
            try:
                check_room(sweep)
            except NoRoom as e:  # no trial started: the worker stops resumably (work() says so, exit 75)
                preempt.request_stop(str(e))
                break
            objective.last = None
            try:
                study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True,
                               callbacks=[objective.progress, Retention(policy)])  # progress: the outcome
            except Exception as e:  # NOTE: a failed tell of a FAIL trial surfaces as Optuna's AssertionError
                if not _finished_elsewhere(study, objective.last, e):
                    raise
            ran, pause = ran + 1, first
            continue
        if c["running"] == 0 or not beating:
            break
        preempt.wait(pause)  # others' trials run; one may be a killed process whose heartbeat goes stale
        pause = min(2 * pause, longest)
    return ran


def _finished_elsewhere(study: optuna.Study, trial: Optional[optuna.Trial], error: BaseException) -> bool:
    """Whether ``error`` (out of Optuna's ``tell``: "Cannot tell a FAIL trial", or an update of a finished trial)
    means that the storage had already finished this worker's trial: another worker failed it as stale (a
    heartbeat that could not beat in time) and queued its retry, or told it. The storage's outcome stands —
    the retry resumes the same run directory — and this worker goes on with the next trial instead of dying."""
    if trial is None:
        return False
    try:
        state = study._storage.get_trial(trial._trial_id).state
    except Exception:  # noqa: BLE001 - the storage cannot say: the original error stands
        return False
    if not state.is_finished():
        return False
    log.warning("trial %d was already %s in the storage when this worker ended it (%s: %s): its outcome there "
                "stands; this worker goes on", trial.number, state.name, type(error).__name__, error)
    return True


def _stop(sweep: Sweep, study: optuna.Study, trial: Optional[optuna.Trial], error: Optional[BaseException]) -> NoReturn:
    """Put the interrupted ``trial`` back in the queue (one attempt, even if the storage gave up), say on stderr
    which trial, where its checkpoint is and how to go on, and exit with :data:`.preempt.EXIT_PREEMPTED`."""
    from ..train.run import CKPT_DIR, LAST_CKPT

    st, name = sweep.config.study, sweep.config.study.name
    reason = preempt.requested() or f"{type(error).__name__}: {error}"
    backend = getattr(study._storage, "_backend", study._storage)
    if trial is None:
        preempt.say(f"sweep {name}: stopped ({reason}) with no trial of this worker running; run the same sweep "
                    f"command to go on (exit code {preempt.EXIT_PREEMPTED})")
        raise preempt.Preempted()
    attrs = trial.user_attrs  # NOTE: Optuna's cached copy: readable with the storage down
    run_dir = attrs.get("run_dir")
    ckpt = Path(run_dir) / CKPT_DIR / LAST_CKPT if run_dir else None
    where = f"will resume from {ckpt}" if ckpt is not None and ckpt.is_file() else \
        "had no checkpoint yet (it starts again from its first epoch)"
    try:
        with backend.one_try() if isinstance(backend, ResilientRDBStorage) else nullcontext():
            copy = put_back(study, trial._trial_id, f"stopped: {reason}",
                            {"status": preempt.PREEMPTED, "error": f"stopped: {reason}"})
    except Exception as e:  # noqa: BLE001 - the storage is down: the heartbeat's retry takes over
        copy, queued = None, (f"could not be queued again ({type(e).__name__}: {e}): it stays RUNNING, and the "
                              f"next start retries it from that checkpoint once its heartbeat is older than "
                              f"study.grace_s={st.grace_s} s (or run the sweep with --fail-running when no worker "
                              "is alive)")
    else:
        queued = f"is queued again as trial {copy}" if copy is not None else "had finished meanwhile"
    preempt.say(f"sweep {name}: stopped ({reason}). Trial {trial.number} ({attrs.get('variant', '?')}) {where} and "
                f"{queued}. Run the same sweep command to resume it (exit code {preempt.EXIT_PREEMPTED}: try again; "
                "examples/slurm requeues on it).")
    raise preempt.Preempted()


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
    env[WORKER_ENV] = str(index)  # seeds its sampler apart from the others' (storage.make_sampler)
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
    """Start ``workers`` processes running ``argv`` (the same sweep command plus ``--worker I``) and wait
    for all of them; returns the number that failed. The caller creates the study (and enqueues the grid)
    first, so the children only join it. SIGTERM/SIGUSR1 are forwarded to the children (each puts its trial
    back); when any of them stopped so (exit 75), :class:`.preempt.Preempted` is raised after all have ended."""
    import torch

    c = sweep.config
    gpus = visible_gpus() if torch.cuda.is_available() else None
    procs: List[preloaded.Started] = []
    received: List[str] = []

    def forward(signum: int, _frame) -> None:
        received.append(signal.Signals(signum).name)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in preempt.SIGNALS}
    try:
        for i in range(c.workers):
            if received:
                break  # told to stop while starting them
            env = worker_env(i, c.workers, c.devices_per_worker, c.workers_per_device, gpus)
            # NOTE: forked from one server that imported torch, timm and Lightning once (:mod:`..preloaded`), each in
            # a session of its own, so that Ctrl-C in the terminal reaches the launcher alone, which forwards it
            procs.append(preloaded.start([*argv, "--worker", str(i)], env=env))
            # NOTE: a signal that came while this one was being started (the first start waits for the server's
            # imports) found it not yet in ``procs``: it is told now (a repeat changes nothing, :mod:`.preempt`)
            if received:
                procs[-1].send_signal(signal.Signals[received[0]])
        failed, stopped = 0, 0
        for i, p in enumerate(procs):
            if p.wait() == preempt.EXIT_PREEMPTED:
                stopped += 1
            elif p.returncode != 0:
                failed += 1
                log.error("worker %d exited with code %d", i, p.returncode)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if received or stopped:
        why = f"received {received[0]}, forwarded to the workers" if received else \
            "a worker stopped itself: storage unreachable, or no room to write (see its message)"
        preempt.say(f"sweep {c.study.name}: stopped ({why}): {stopped} of {len(procs)} worker(s) put their trial "
                    f"back{f', {failed} failed' if failed else ''}; run the same sweep command to resume (exit code "
                    f"{preempt.EXIT_PREEMPTED})")
        raise preempt.Preempted()
    return failed


__all__ = ["work", "launch", "fail_running", "check_devices", "worker_env", "visible_gpus"]
