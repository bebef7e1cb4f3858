"""One trial: draw a point, train it with :func:`irpe_bench.train.train`, record everything in the storage.

The trial's value is the best ``val/acc1`` (the monitored metric, ``MONITOR``); each epoch's ``val/acc1`` is
reported to the pruner. With ``study.objectives`` the trial returns one value per objective, in their order
(:mod:`.objectives`: validation accuracy, speeds, params, MACs), and with ``study.constraints`` it sets the
trial's constraint values (``trial.set_constraint``; user attributes ``constraints`` and ``feasible``). With
``study.repeats: k`` it trains k seeds and returns their means (:mod:`.repeats`; user attribute ``repeats``).
Nothing ever reads a test metric: the test split is evaluated once per run, on the
checkpoint chosen on validation, and only recorded. What the leaderboard reads is written as user attributes
(:data:`irpe_bench.keys.RECORDED`; ``report/`` documents the keys): the variant slug, a key shared by the seeds of one
configuration, the flattened config, metrics (accuracies in percent), status and — for anything but
a finished run — the reason. A trial that fails is recorded with its reason and the
sweep goes on (``catch``); a trial whose process was killed is retried by the storage's heartbeat with the
same user attributes, so it resumes its own run directory from the last checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Dict, List, Tuple

import optuna

from .. import keys as K
from ..keys import DISCARDED, MONITOR
from ..redact import redact
from ..train import ddp_env
from ..train.config import flatten
from . import objectives as O
from . import repeats as R
from . import space as S
from .budget import over_budget
from .config import Sweep, digest, without_logging
from .progress import Progress

log = logging.getLogger(__name__)
def config_key(flat: Dict[str, Any]) -> str:
    """Equal for configs that differ only in seed or logging: the trials a leaderboard row averages. Fields
    added later (:data:`irpe_bench.keys.LATER_FIELDS`) count only away from their default."""
    return digest({k: v for k, v in K.without_later_defaults(without_logging(flat)).items() if k != "seed"}, 12)


def retried_trial(trial: optuna.Trial) -> int | None:
    """The number of the (killed) trial this one retries, from ``RetryFailedTrialCallback``'s system attribute
    (read from the storage: Optuna 5's ``Trial`` does not expose system attributes)."""
    history = trial.storage.get_trial_system_attrs(trial._trial_id).get("retry_history") or []
    return history[-1] if history else None


def variant_of(config) -> str:
    """The run's slug before training: the model built on PyTorch's meta device (no memory, no init cost)."""
    import torch

    from ..train.run import build_model

    with torch.device("meta"):
        return build_model(config, config.model.num_classes or 2).variant


class OverBudget(RuntimeError):
    """A trial created after the budget was spent (:mod:`.budget`): recorded as discarded, never trained."""


class Objective:
    """``study.optimize(Objective(sweep), catch=(Exception,))``. ``devices``: ``trainer.devices`` per trial;
    ``target``: the budget in trials (None: unchecked), against which each new trial checks its own place."""

    def __init__(self, sweep: Sweep, devices: int | None = None, target: int | None = None):
        self.sweep = sweep
        self.devices = devices
        self.target = target
        self.progress = Progress(sweep.config.study.name, target)  # also Optuna's trial-end callback (runner)

    def run_dir(self, trial: optuna.Trial, slug: str) -> Path:
        return self.sweep.out_dir / "runs" / f"trial-{trial.number:04d}-{slug}"

    def __call__(self, trial: optuna.Trial) -> float | Tuple[float, ...]:
        from optuna_integration import PyTorchLightningPruningCallback

        sweep = self.sweep
        if self.target is not None and over_budget(trial.study, trial.number, self.target):
            trial.set_user_attr("status", DISCARDED)
            why = (f"trial {trial.number} is over the budget of {self.target}: another worker took the last slot "
                   "at the same time; discarded before any work")
            trial.set_user_attr("error", why)
            raise OverBudget(why)
        point = S.suggest(trial, sweep.config.space, sweep.base_flat)
        retry_of = retried_trial(trial)
        name = sweep.config.study.name
        try:
            config = sweep.trial_config(point, log={"group": name, "tags": [f"sweep:{name}",
                                                                            f"trial:{trial.number}"]},
                                        trainer={} if self.devices is None else {"devices": self.devices})
            slug = variant_of(config)
        except ValueError as e:  # a combination the rules did not foresee: recorded, no training
            trial.set_user_attr("status", K.INVALID)
            trial.set_user_attr("error", redact(str(e)))
            raise
        flat = flatten(config.model_dump(mode="json"))
        attrs = {"variant": slug, "config_key": config_key(flat), "seed": config.seed, "baseline": config.model.rpe
                 is None and config.model.pos is None, "config": without_logging(flat),
                 "retry_of": retry_of, "status": K.RUNNING, "error": None, K.ACC_UNIT: K.PERCENT,
                 "worker": f"{socket.gethostname()}:{os.getpid()}"}
        # a retry keeps the killed trial's run directory (copied user attribute) and resumes its checkpoint
        run_dir = Path(trial.user_attrs["run_dir"]) if retry_of is not None and "run_dir" in trial.user_attrs \
            else self.run_dir(trial, slug)
        attrs["run_dir"] = str(run_dir)
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        self.progress.trial_started(trial, slug, config.trainer.max_epochs)
        st = sweep.config.study
        # several objectives: Optuna's trial.report (the pruning callback) takes one value only, and pruning is
        # refused for such studies at load; with repeats the pruner watches the first seed's epochs
        pruning = PyTorchLightningPruningCallback(trial, monitor=MONITOR) if len(st.objectives) == 1 else None
        summaries: List[Dict[str, Any]] = []
        entries: List[Dict[str, Any]] = []  # the ``repeats`` attribute (k > 1)
        for i, seed in enumerate(R.seeds(config.seed, st.repeats)):
            seed_config = config if st.repeats == 1 else config.model_copy(update={"seed": seed})
            summaries.append(self._train_seed(trial, seed_config, R.seed_dir(run_dir, seed, st.repeats), retry_of,
                                              pruning if i == 0 else None, entries, f"{slug} {point}"))
        metrics = summaries[0] if st.repeats == 1 else R.mean_summary(summaries, K.RECORDED)
        self._record(trial, run_dir, K.FINISHED, None, metrics)
        return self._values(trial, metrics)

    def _train_seed(self, trial: optuna.Trial, config, run_dir: Path, retry_of: int | None,
                    pruning, entries: List[Dict[str, Any]], what: str) -> Dict[str, Any]:
        """Train one seed of the trial in ``run_dir`` → its summary. A retry resumes the killed run's last
        checkpoint; with several seeds a retry also keeps the seeds the killed trial had finished."""
        from ..train.run import TrainingDiverged, train

        several = self.sweep.config.study.repeats > 1
        done = run_dir / "summary.json"
        if several and retry_of is not None and done.is_file():
            summary = json.loads(done.read_text())
            if summary.get("status") == K.FINISHED:
                log.info("trial %d: seed %d finished before the retry, kept (%s)", trial.number, config.seed, run_dir)
                return self._seed_done(trial, config.seed, run_dir, summary, entries)
        resume = self._resume(trial, run_dir, config.seed if several else None) if retry_of is not None else None
        prefix = f"seed {config.seed}: " if several else ""
        with ddp_env.published_trial(trial._trial_id, resume), self.progress.quiet(run_dir):  # DDP ranks; train.log
            log.info("trial %d: %s%s%s", trial.number, what, f" seed {config.seed}" if several else "",
                     f" (resuming {resume})" if resume else "")
            try:
                summary = train(config, run_dir=run_dir, wandb_id=None if several else trial.user_attrs.get("wandb_id"),
                                resume_from=resume, callbacks=[*([pruning] if pruning is not None else []),
                                                               *self._callbacks(trial)])
                if pruning is not None:
                    pruning.check_pruned()  # DDP: the pruning decision travels through the storage
            except optuna.TrialPruned:
                self._record(trial, run_dir, K.PRUNED, prefix + "pruned by the pruner at epoch "
                             f"{max(trial.storage.get_trial(trial._trial_id).intermediate_values, default=0)}",
                             entries=entries if several else None, seed=config.seed)
                raise
            except TrainingDiverged as e:
                self._record(trial, run_dir, K.DIVERGED, prefix + str(e), e.summary,
                             entries=entries if several else None, seed=config.seed)
                raise
            except Exception as e:
                log.error("trial %d failed", trial.number, exc_info=True)  # the traceback: into train.log
                from ..train.time_limit import TimeLimitExceeded

                why = str(e) if isinstance(e, TimeLimitExceeded) else f"{type(e).__name__}: {e}"
                self._record(trial, run_dir, K.FAILED, f"{prefix}{why}",
                             entries=entries if several else None, seed=config.seed)
                raise
        return self._seed_done(trial, config.seed, run_dir, summary, entries) if several else summary

    @staticmethod
    def _resume(trial: optuna.Trial, run_dir: Path, seed: int | None) -> Path | None:
        """The retried run's checkpoint to resume: ``last.ckpt``, or when it does not load (torn by a kill or a
        full disk, garbage) the newest one that does, else a fresh start (:mod:`..train.checkpoint_io`).
        Anything skipped is recorded in the trial's ``resume`` user attribute (``resume/seed<k>`` per seed)."""
        from ..train.checkpoint_io import loadable_checkpoint
        from ..train.run import CKPT_DIR, LAST_CKPT

        found = loadable_checkpoint(run_dir / CKPT_DIR, LAST_CKPT)
        if found.skipped:
            log.warning("trial %d: %s; skipped %s", trial.number,
                        f"resuming {found.path}" if found.path else "starting again from scratch",
                        "; ".join(f"{f} ({e})" for f, e in found.skipped))
        if found.skipped or found.path is not None:
            trial.set_user_attr("resume" if seed is None else f"resume/seed{seed}", found.record())
        return found.path

    def _callbacks(self, trial: optuna.Trial) -> List[Any]:
        """The progress line's epoch events and, with ``study.trial_timeout_s``, the time limit of one run."""
        from ..train.time_limit import TimeLimit  # NOTE: Lightning only in a process that trains

        limit = self.sweep.config.study.trial_timeout_s
        return [self.progress.callback(trial.study),
                *([TimeLimit(limit, "trial_timeout_s")] if limit is not None else [])]

    @staticmethod
    def _seed_done(trial: optuna.Trial, seed: int, run_dir: Path, summary: Dict[str, Any],
                   entries: List[Dict[str, Any]]) -> Dict[str, Any]:
        entries.append(R.seed_entry(seed, K.FINISHED, run_dir, summary, K.RECORDED))
        trial.set_user_attr(R.REPEATS_ATTR, entries)
        return summary

    def _values(self, trial: optuna.Trial, metrics: Dict[str, Any]) -> float | Tuple[float, ...]:
        """The objective values for the sampler (one float for one objective) and, in a constrained study, the
        trial's constraint values: Optuna 5's ``trial.set_constraint`` (what TPE, NSGA-II and GP read) and the
        ``constraints`` / ``feasible`` user attributes for reports (:mod:`.objectives`)."""
        st = self.sweep.config.study
        values = O.values_of(st.objectives, metrics)
        if st.constraints:
            violations = O.violations(st.parsed_constraints, metrics)
            for text, v in violations.items():
                trial.set_constraint(text, v)
            trial.set_user_attr("constraints", violations)
            trial.set_user_attr("feasible", all(v <= 0 for v in violations.values()))
        return values[0] if len(values) == 1 else values

    @staticmethod
    def _record(trial: optuna.Trial, run_dir: Path, status: str, error: str | None,
                summary: Dict[str, Any] | None = None, entries: List[Dict[str, Any]] | None = None,
                seed: int | None = None) -> None:
        """The trial's metrics, status and reason; ``entries`` (several seeds): the failing seed's own entry is
        added to the ``repeats`` attribute beside the seeds done."""
        error = redact(error)  # an exception's message may hold a storage URL: never stored with its password
        if summary is None and (run_dir / "summary.json").is_file():
            summary = json.loads((run_dir / "summary.json").read_text())
        summary = summary or {}
        for k in K.RECORDED:
            if summary.get(k) is not None:
                trial.set_user_attr(k, summary[k])
        if summary.get("wandb_id"):
            trial.set_user_attr("wandb_id", summary["wandb_id"])
        if entries is not None and status != K.FINISHED:
            trial.set_user_attr(R.REPEATS_ATTR, [*entries, R.seed_entry(seed, status, run_dir, summary, K.RECORDED,
                                                                         error)])
        trial.set_user_attr("status", status)
        trial.set_user_attr("error", error)


def ddp_rank_main(sweep: Sweep) -> int:
    """A DDP rank > 0 of a multi-device trial: Lightning re-ran the sweep command with ``LOCAL_RANK`` set.
    It trains the same trial (same run directory, config, checkpoint) beside rank 0 instead of starting a
    sweep loop of its own; rank 0's objective records the result."""
    from optuna_integration import PyTorchLightningPruningCallback

    from ..train.config import load_config
    from ..train.run import train
    from ..train.time_limit import TimeLimit
    from .storage import open_storage

    trial_id, run_dir, resume = ddp_env.joined_trial()
    study = optuna.load_study(study_name=sweep.config.study.name, storage=open_storage(sweep))
    trial = optuna.Trial(study, trial_id)
    config = load_config(Path(run_dir) / "config.yaml")
    single = len(sweep.config.study.objectives) == 1  # several objectives: no trial.report, no pruning callback
    limit = sweep.config.study.trial_timeout_s  # NOTE: on every rank: rank zero broadcasts its decision
    train(config, run_dir=run_dir, resume_from=resume,
          callbacks=[*([PyTorchLightningPruningCallback(trial, monitor=MONITOR)] if single else []),
                     *([TimeLimit(limit, "trial_timeout_s")] if limit is not None else [])])
    return 0
