"""A study's disk: checkpoint retention, what it occupies, and no trial started without room for a checkpoint.

**Retention** (``study.checkpoints``; may change between runs of a study: it is not part of its identity):

* ``keep-all`` (default): every run keeps ``last.ckpt`` and its best checkpoint (what studies always did).
* ``keep-best``: a finished trial (complete or pruned) keeps only its best checkpoint — the one its test split
  was evaluated on (``summary.json``'s ``best_checkpoint``), to evaluate again or fine-tune; ``last.ckpt`` goes.
* ``keep-none``: a finished trial keeps no checkpoint; its results are in the storage and its ``summary.json``.

Never deleted, whatever the setting: the checkpoints of a run directory that a running, queued or failed (thus
retryable: ``--retry-failed`` resumes it) trial names — a retry shares its killed trial's directory, so a copy
waiting to resume keeps the files it needs. Retention runs when a trial ends (a callback of the worker loop) and
once when a worker starts (trials finished by a worker killed before its callback ran).

**Room**: before each trial a worker checks that the filesystem of the study's run directories has room for
:func:`needed_bytes` (twice the largest checkpoint the study wrote: a temporary file beside ``last.ckpt``
plus a new best checkpoint in the same epoch); when it has not, the worker starts no trial and stops with
the resumable exit code (75) and a message saying how much is free and needed (:class:`NoRoom`). Before the first
checkpoint of a study nothing is known, and a full disk is caught at the write instead (the trial is put back).
"""
from __future__ import annotations

import json
import logging
import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Set

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..train.disk_faults import free_bytes, hsize
from .config import Sweep

log = logging.getLogger(__name__)
#: the values of ``study.checkpoints``
RETENTION = ("keep-all", "keep-best", "keep-none")
#: files of a checkpoint directory: checkpoints, those set aside as unloadable, partial writes
_CKPT_GLOBS = ("*.ckpt", "*.ckpt.unloadable", "*.tmp")


class NoRoom(RuntimeError):
    """Too little free space to start a trial (module docstring); the worker stops resumably."""


def runs_dir(sweep: Sweep) -> Path:
    return sweep.out_dir / "runs"


def _checkpoint_files(root: Path) -> Iterable[Path]:
    """Every checkpoint file under ``root`` (a run directory, its seed directories, or the study's runs)."""
    if not root.is_dir():
        return []
    return [p for g in _CKPT_GLOBS for p in root.rglob(f"checkpoints/{g}") if p.is_file()]


def needed_bytes(sweep: Sweep) -> Optional[int]:
    """Free space one more trial needs to write an epoch's checkpoints: twice the largest checkpoint of the
    study (None before the study wrote one)."""
    sizes = file_sizes(p for p in _checkpoint_files(runs_dir(sweep)) if p.suffix == ".ckpt")
    return 2 * max(sizes) if sizes else None


def file_sizes(paths: Iterable[Path]) -> list:
    """The sizes of the files still there. NOTE: another worker's trial replaces its best checkpoint (top-k)
    while this one lists the study's: a file listed a moment ago may be gone when its size is read, and a worker
    must not die of that (it once did, halving a study's workers)."""
    sizes = []
    for p in paths:
        try:
            sizes.append(p.stat().st_size)
        except FileNotFoundError:
            continue
    return sizes


def check_room(sweep: Sweep) -> None:
    """Raise :class:`NoRoom` when the run directories' filesystem has less free space than :func:`needed_bytes`."""
    need = needed_bytes(sweep)
    if need is None:
        return
    where = runs_dir(sweep)
    free = free_bytes(where)
    if free < need:
        raise NoRoom(f"no space left on {where} for another trial: {hsize(free)} free, one epoch's checkpoints need "
                     f"{hsize(need)}; free some (or set study.checkpoints: keep-best or keep-none) and run the same "
                     "sweep command again")


@dataclass(frozen=True)
class DiskUse:
    total: int  # bytes under the study's output folder
    checkpoints: int  # of which checkpoint files
    files: int  # checkpoint files
    free: int  # free bytes where the runs are written
    where: Path


def disk_use(sweep: Sweep) -> DiskUse:
    """What the study occupies under its output folder, its checkpoints and the free space where runs go."""
    total = 0
    for dirpath, _, names in os.walk(sweep.out_dir):
        for n in names:
            with suppress(OSError):
                total += os.lstat(os.path.join(dirpath, n)).st_size
    sizes = file_sizes(_checkpoint_files(runs_dir(sweep)))
    return DiskUse(total, sum(sizes), len(sizes), free_bytes(runs_dir(sweep)), runs_dir(sweep))


def describe(use: DiskUse, policy: str) -> str:
    return (f"disk: {hsize(use.total)} in the study's folder, of which {hsize(use.checkpoints)} in {use.files} "
            f"checkpoint file(s) (study.checkpoints: {policy}); {hsize(use.free)} free on {use.where}")


def _protected(trials: Iterable[FrozenTrial]) -> Set[str]:
    """Run directories a running, queued or failed (retryable) trial names: their checkpoints may be resumed."""
    trials = list(trials)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    keep = set()
    for t in trials:
        failed = t.state == TrialState.FAIL and t.number not in retried
        if t.state in (TrialState.RUNNING, TrialState.WAITING) or failed:
            if t.user_attrs.get("run_dir"):
                keep.add(str(Path(t.user_attrs["run_dir"])))
    return keep


def _best_of(run_dir: Path) -> Set[Path]:
    """The best checkpoints the run (each of its seeds) tested, from their ``summary.json``."""
    out = set()
    for summary in [run_dir / "summary.json", *run_dir.glob("seed-*/summary.json")]:
        with suppress(OSError, ValueError):
            best = json.loads(summary.read_text()).get("best_checkpoint")
            if best:
                out.add(Path(best).resolve())
    return out


def retain(study: optuna.Study, policy: str, numbers: Optional[Set[int]] = None) -> int:
    """Apply ``policy`` to the finished trials (those numbered in ``numbers``; None: all): bytes freed."""
    if policy == "keep-all":
        return 0
    trials = study.get_trials(deepcopy=False)
    keep = _protected(trials)
    freed = 0
    for t in trials:
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED) or (numbers is not None and t.number not in numbers):
            continue
        run_dir = t.user_attrs.get("run_dir")
        if not run_dir or str(Path(run_dir)) in keep:
            continue
        best = _best_of(Path(run_dir)) if policy == "keep-best" else set()
        for p in _checkpoint_files(Path(run_dir)):
            if p.resolve() in best:
                continue
            with suppress(OSError):
                size = p.stat().st_size
                p.unlink()
                freed += size
    if freed:
        log.info("study.checkpoints=%s: %s of finished trials' checkpoints deleted", policy, hsize(freed))
    return freed


class Retention:
    """Optuna's trial-end callback: retention for the trial that just ended (``study.checkpoints``)."""

    def __init__(self, policy: str) -> None:
        self.policy = policy

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        try:
            retain(study, self.policy, {trial.number})
        except Exception as e:  # noqa: BLE001 - a retention that failed costs disk, never the sweep
            log.warning("study.checkpoints=%s: retention after trial %d failed: %s", self.policy, trial.number, e)


__all__ = ["RETENTION", "NoRoom", "DiskUse", "check_room", "disk_use", "describe", "needed_bytes", "retain",
           "Retention"]
