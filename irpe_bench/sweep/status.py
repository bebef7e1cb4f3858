"""How far a study has got, read from its storage while workers run: a pure function of the trials and a clock.

What ``irpe-bench status SWEEP`` prints: trials done / running / failed / pruned / queued of the budget; each
running trial's variant, worker (host and process, as the objective records them), epoch (the number of
``val/acc1`` values it has reported to the pruner) and elapsed time; an ETA; the best trial so far.

* **ETA** = the median duration of the finished trials × the trials still to finish (budget − finished, the
  running ones counted as half done) ÷ the trials running now (the study's parallelism; at least 1). It is an
  estimate for a homogeneous grid, not a promise: trials of larger variants take longer.
* **Best so far** is the trial with the best Optuna value, which is the best *validation* accuracy over epochs
  (optimistic); the leaderboard ranks by test accuracy with CIs and rank bands.
"""
from __future__ import annotations

import datetime as dt
import statistics
from dataclasses import dataclass, field
from typing import List, Optional

import optuna
from optuna.trial import TrialState

from .. import keys as K
from .budget import budget


@dataclass(frozen=True)
class RunningTrial:
    number: int
    variant: str
    worker: Optional[str]  # "host:pid" (the objective's ``worker`` attribute)
    epoch: int  # epochs reported to the pruner so far
    epochs: Optional[int]  # the trial's ``trainer.max_epochs``
    elapsed_s: Optional[float]


@dataclass(frozen=True)
class StudyStatus:
    study: str
    target: int
    counts: dict  # budget(): complete, pruned, failed, running, waiting, retried, discarded, finished
    running: List[RunningTrial] = field(default_factory=list)
    median_trial_s: Optional[float] = None
    eta_s: Optional[float] = None
    best_trial: Optional[int] = None
    best_variant: Optional[str] = None
    best_value: Optional[float] = None  # percent, best validation over epochs (optimistic)
    best_test: Optional[float] = None  # percent, that trial's test accuracy at its chosen epoch


def study_status(study: optuna.Study, target: int, now: Optional[dt.datetime] = None) -> StudyStatus:
    """The status of ``study`` against a budget of ``target`` trials at time ``now`` (default: the clock)."""
    now = now or dt.datetime.now()
    trials = study.get_trials(deepcopy=False)
    counts = budget(study)
    running = []
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        config = t.user_attrs.get("config") or {}
        started = t.datetime_start
        running.append(RunningTrial(
            number=t.number, variant=str(t.user_attrs.get("variant") or f"trial-{t.number}"),
            worker=t.user_attrs.get("worker"), epoch=len(t.intermediate_values),
            epochs=config.get("trainer.max_epochs"),
            elapsed_s=None if started is None else max(0.0, (now - started).total_seconds())))
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in trials
                 if t.state == TrialState.COMPLETE and t.datetime_start and t.datetime_complete]
    median = statistics.median(durations) if durations else None
    eta = None
    if median is not None:
        left = max(0.0, target - counts["finished"] - 0.5 * len(running))
        eta = median * left / max(1, len(running))
    def acc(t):  # the best val acc1 in percent, also in a study with other or several objectives (t.value raises)
        return K.percent(t.user_attrs.get(K.MONITOR_BEST, t.values[0] if t.values and len(t.values) == 1 else None),
                         t.user_attrs)

    done = [t for t in trials if t.state == TrialState.COMPLETE and acc(t) is not None]
    best = max(done, key=lambda t: (acc(t), -t.number), default=None)
    test = None if best is None else best.user_attrs.get(K.TEST_ACC1)
    return StudyStatus(
        study=study.study_name, target=target, counts=counts, running=running, median_trial_s=median, eta_s=eta,
        best_trial=None if best is None else best.number,
        best_variant=None if best is None else best.user_attrs.get("variant"),
        best_value=None if best is None else acc(best),
        best_test=None if test is None else K.percent(float(test), best.user_attrs))


def _duration(s: Optional[float]) -> str:
    if s is None:
        return "—"
    s = int(round(s))
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s"


def to_text(st: StudyStatus) -> str:
    """The status as a few lines for the terminal."""
    c = st.counts
    lines = [f"study {st.study}: {c['finished']} of {st.target} finished ({c['complete']} complete, "
             f"{c['pruned']} pruned, {c['failed']} failed), {c['running']} running, {c['waiting']} queued"
             + (f"; {c['retried']} retried" if c.get("retried") else "")]
    for r in st.running:
        of = f"/{r.epochs}" if r.epochs else ""
        lines.append(f"  running: trial {r.number} {r.variant} on {r.worker or '?'}, epoch {r.epoch}{of}, "
                     f"{_duration(r.elapsed_s)} elapsed")
    if st.eta_s is not None:
        lines.append(f"ETA about {_duration(st.eta_s)} (median trial {_duration(st.median_trial_s)}, "
                     f"{max(1, len(st.running))} at a time)")
    else:
        lines.append("ETA: no finished trial yet")
    if st.best_trial is not None:
        test = f", test acc1 {st.best_test:.2f}" if st.best_test is not None else ""
        lines.append(f"best so far: trial {st.best_trial} {st.best_variant}, val acc1 best {st.best_value:.2f} "
                     f"(optimistic{test}); the leaderboard ranks by test with CIs")
    return "\n".join(lines) + "\n"
