"""``sweep --retry-failed``: put a study's failed trials back in its queue, each resuming its own checkpoint.

A retry is what the storage's heartbeat does for a killed trial (:mod:`.storage`): Optuna's
``RetryHeartbeatStaleTrialCallback`` adds a WAITING copy with the same parameters, user attributes (so the run
directory, hence ``last.ckpt``: the objective resumes it) and reported epochs, and records the failed trial's
number in the copy's ``retry_history``. From then on the failed trial counts as *retried*, not finished
(:mod:`.budget`), so the sweep runs the copy even when its budget was spent.

Not retried: a trial already retried (a copy exists, whatever became of it), and failures that are outcomes of
the parameters rather than accidents — an ``invalid`` configuration (the same parameters are refused again) and
a ``diverged`` run (its checkpoint and seed lead to the same non-finite loss). Discarded trials (over the budget,
never trained) are not failures at all.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import IO, List, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from .. import keys as K
from ..redact import redact
from .storage import requeue

#: trial statuses that are results of the parameters: retrying them would repeat the same outcome
NOT_RETRIED = {K.INVALID: "an invalid configuration: the same parameters fail again",
               K.DIVERGED: "diverged: a result of its parameters, the same checkpoint and seed diverge again"}


@dataclass(frozen=True)
class Failure:
    number: int
    variant: str
    reason: str  # redacted, on one line
    skip: Optional[str]  # why it is not retried; None: it is
    trial: FrozenTrial = field(repr=False, compare=False)


def failures(study: optuna.Study) -> List[Failure]:
    """The study's FAIL trials that no later copy retries yet (discarded ones left out), oldest first."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    out = []
    for t in trials:
        ua = t.user_attrs
        if t.state != TrialState.FAIL or t.number in retried or ua.get("status") == K.DISCARDED:
            continue
        reason = ua.get("error") or t.system_attrs.get("fail_reason") or "no reason recorded"
        out.append(Failure(t.number, str(ua.get("variant") or t.params or "—"), " ".join(redact(str(reason)).split()),
                           NOT_RETRIED.get(ua.get("status")), t))
    return out


def retry_failed(study: optuna.Study, out: Optional[IO[str]] = None) -> int:
    """Print each failed trial (number, variant, reason) and requeue those worth retrying; returns how many."""
    out = out or sys.stderr
    found = failures(study)
    if not found:
        print("--retry-failed: no failed trial to retry", file=out)
        return 0
    n = 0
    for f in found:
        print(f"--retry-failed: trial {f.number} {f.variant}: {f.reason}", file=out)
        if f.skip is not None:
            print(f"    not retried: {f.skip}", file=out)
            continue
        requeue(study, f.trial)
        n += 1
    print(f"--retry-failed: {n} of {len(found)} failed trial(s) queued again (same parameters, resumed from their "
          "checkpoints)", file=out)
    return n


__all__ = ["Failure", "NOT_RETRIED", "failures", "requeue", "retry_failed"]
