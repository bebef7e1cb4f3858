"""What a running sweep shows on the terminal: one progress line per event, and nothing else from its trials.

A line at each trial's start, each epoch's end and each trial's end, for the whole study (every worker on every
machine), counted in the storage by :func:`.status.study_status`::

    [paper_table4] trial 41 (deit_tiny_ctx_product_50_shared_k) epoch 12/30 val acc1 58.40 · 40/60 done,
    0 failed, 2 running · ETA 23m · best val acc1 61.20

On a terminal (stderr is a TTY) a trial's epoch line is rewritten in place and its start and end stay; piped
or redirected, every event is its own line (for log collectors). NOTE: only the epoch line is rewritten
because while it shows, the trial's output goes to its log (below), so nothing else can write after it.

Everything a trial prints goes to its run directory's ``train.log`` instead (:meth:`Progress.quiet`):
Lightning's "GPU available" lines, tips and progress bars, Python warnings, W&B's messages, the trial's own
log records and its traceback when it fails. NOTE: this redirects the file descriptors 1 and 2, not
``sys.stdout``/``sys.stderr``: torch's C++ warnings, W&B's service process and the DDP ranks Lightning starts
write to the descriptors directly, and logging handlers made at import hold the old stream objects.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Iterator, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from .. import keys as K
from ..redact import redact
from .status import StudyStatus, study_status

if TYPE_CHECKING:
    from .epoch_progress import EpochProgress

#: a trial's log file in its run directory: everything the trial printed (appended by a resumed attempt)
LOG_FILE = "train.log"


def _eta(s: Optional[float]) -> str:
    if s is None:
        return "ETA —"
    m = int(round(s / 60))
    return f"ETA {int(s)}s" if s < 60 else f"ETA {m}m" if m < 60 else f"ETA {m // 60}h {m % 60:02d}m"


def counts_text(st: StudyStatus) -> str:
    """``40/60 done, 0 failed, 2 running · ETA 23m · best val acc1 61.20`` (best: over epochs, optimistic)."""
    c = st.counts
    best = f" · best val acc1 {st.best_value:.2f}" if st.best_value is not None else ""
    eta = f" · {_eta(st.eta_s)}" if c["finished"] < st.target else ""
    return f"{c['finished']}/{st.target} done, {c['failed']} failed, {c['running']} running{eta}{best}"


class Progress:
    """The progress line of one worker's trials (``Objective.progress``; its call is Optuna's trial-end callback).

    ``stream``: where lines go (default the process's stderr at the time of writing).
    """

    def __init__(self, study_name: str, target: Optional[int], stream: Optional[IO[str]] = None) -> None:
        self.name = study_name
        self.target = target
        self.stream = stream
        self._terminal: Optional[IO[str]] = None  # the real stderr while a trial's output goes to its log
        self._trial: Optional[str] = None  # "trial 41 (variant)" of the trial running here
        self._epochs: Optional[int] = None

    # ---------------------------------------------------------------------------------------------- output
    def _out(self) -> IO[str]:
        return self._terminal or self.stream or sys.stderr

    def write(self, text: str, final: bool = False) -> None:
        """One event: a new line, or on a TTY the running line rewritten (``final``: it stays)."""
        out = self._out()
        text = " ".join(redact(f"[{self.name}] {text}").split())  # a reason may span lines
        try:
            tty = out.isatty()
        except (AttributeError, ValueError):
            tty = False
        if tty:
            out.write(f"\r\x1b[K{text}" + ("\n" if final else ""))
        else:
            out.write(text + "\n")
        out.flush()

    def _status(self, study: optuna.Study) -> str:
        return counts_text(study_status(study, self.target or 0))

    # ---------------------------------------------------------------------------------------------- events
    def trial_started(self, trial: optuna.Trial, variant: str, epochs: Optional[int]) -> None:
        self._trial = f"trial {trial.number} ({variant})"
        self._epochs = epochs
        self.write(f"{self._trial} started · {self._status(trial.study)}", final=True)

    def epoch_ended(self, study: optuna.Study, epoch: int, acc1: Optional[float]) -> None:
        of = f"/{self._epochs}" if self._epochs else ""
        acc = f" val acc1 {acc1:.2f}" if acc1 is not None else ""  # percent: what the run logs
        self.write(f"{self._trial or 'trial'} epoch {epoch}{of}{acc} · {self._status(study)}")

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Optuna's callback after each trial (``study.optimize(callbacks=[progress])``): its outcome."""
        ua = trial.user_attrs
        if ua.get("status") == K.DISCARDED:
            return
        what = f"trial {trial.number} ({ua.get('variant') or 'no variant'})"
        if trial.state == TrialState.COMPLETE:
            best = ua.get(K.MONITOR_BEST)
            outcome = "complete" + (f", val acc1 best {K.percent(best, ua):.2f}" if best is not None else "")
        elif trial.state == TrialState.PRUNED:
            outcome = f"pruned at epoch {len(trial.intermediate_values)}"
        else:
            run_dir = Path(ua["run_dir"]) if ua.get("run_dir") else None  # (repeats: a log per seed-<s>/)
            logs = [] if run_dir is None else [run_dir / LOG_FILE] if (run_dir / LOG_FILE).is_file() else \
                sorted(run_dir.glob(f"seed-*/{LOG_FILE}"))
            outcome = f"{ua.get('status') or 'failed'}: {ua.get('error') or 'no reason recorded'}" + \
                (f" (log: {logs[-1]})" if logs else "")
        self._trial = None
        self.write(f"{what} {outcome} · {self._status(study)}", final=True)

    def callback(self, study: optuna.Study) -> "EpochProgress":
        """The Lightning callback that reports each epoch's end (rank zero only)."""
        from .epoch_progress import EpochProgress  # NOTE: Lightning only where a trial trains (epoch_progress.py)

        return EpochProgress(self.epoch_ended, study)

    # ---------------------------------------------------------------------------------------------- quiet
    @contextlib.contextmanager
    def quiet(self, run_dir: Path) -> Iterator[Path]:
        """While the block runs, file descriptors 1 and 2 write to ``run_dir/train.log`` (appended); progress
        lines still reach the terminal (module docstring). A DDP rank started inside inherits the log."""
        path = Path(run_dir) / LOG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._terminal is not None:  # already quiet (nested): one redirection
            yield path
            return
        for s in (sys.stdout, sys.stderr):
            s.flush()
        saved = os.dup(1), os.dup(2)
        stream = None
        try:
            with open(path, "ab") as log:
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
            self._terminal = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding="utf-8", errors="replace")
            # NOTE: sys.stdout/sys.stderr too: what is made during the trial holding them (a progress bar that
            # an exception left open prints its last state when collected) writes to this log, never later to
            # the terminal; once it is closed, tqdm drops such late writes quietly
            stream = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
            with contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
                yield path
        finally:
            for s in (sys.stdout, sys.stderr, stream):
                with contextlib.suppress(Exception):
                    s.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            for f in (stream, self._terminal):
                if f is not None:
                    f.close()
            self._terminal = None
