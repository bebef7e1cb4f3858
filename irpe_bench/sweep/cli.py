"""``irpe-bench sweep SWEEP.yaml``: run or resume a study, then write its leaderboard (:mod:`.leaderboard`); and
the commands on an existing study (``leaderboard``, ``status``, ``studies``, ``delete``, ``dashboard``, ``plan``)."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, List

from .. import keys as K
from ..overrides import add_set_argument, parse_overrides
from ..redact import redact
from .arguments import add_markdown_argument, add_storage_argument, take_storage

if TYPE_CHECKING:  # NOTE: the sweep's config pulls in torch; `run.py sweep --help` must not wait for it
    from .config import Sweep


def load_sweep(path, overrides=None) -> "Sweep":
    """:func:`.config.load_sweep`, imported when a command first needs it."""
    from .config import load_sweep as load

    return load(path, overrides)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sweep", help="sweep YAML (see sweeps/)")
    add_set_argument(p, "dotted overrides of the sweep file, e.g. --set study.n_trials=20 "
                        "overrides.trainer.max_epochs=3 workers=2")
    add_storage_argument(p)
    p.add_argument("--fail-running", action="store_true",
                   help="first mark this study's RUNNING trials failed and retry them (after a crash, when no "
                        "worker is alive; needed only for storages without a heartbeat)")
    p.add_argument("--retry-failed", action="store_true",
                   help="first list this study's failed trials (number, variant, reason) and queue each again with "
                        "the same parameters, resuming its checkpoint (invalid and diverged ones are not retried)")
    p.add_argument("--no-leaderboard", action="store_true", help="skip writing the leaderboard at the end")
    add_markdown_argument(p)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher


def _argv_for_workers(args: argparse.Namespace) -> List[str]:
    argv = ["sweep", args.sweep]
    for group in args.overrides:
        argv += ["--set", *([group] if isinstance(group, str) else group)]
    return argv  # NOTE: the storage travels in the environment (take_storage), never on a command line


def _meta(sweep: Sweep, args: argparse.Namespace) -> Dict[str, Any]:
    from ..train.provenance import git_commit
    from .space import describe

    st = sweep.config.study
    cmd = " ".join(["python run.py", *_argv_for_workers(args)]) + (" --storage …" if args.storage else "")
    return {"name": st.name, "sweep_file": str(sweep.path) if sweep.path else None,
            "base_config": sweep.config.base, "overrides": sweep.config.overrides,
            "space": describe(sweep.config.space),
            "sampler": st.sampler, "sampler_seed": st.seed, "pruner": st.pruner, "n_trials": st.n_trials,
            "storage": redact(sweep.storage_url), "command": cmd, "git_commit": git_commit(),
            "fingerprint": sweep.fingerprint(),
            "created": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def run(args: argparse.Namespace) -> int:
    """Run (or resume, or join) an Optuna sweep over iRPE variants, then write its leaderboard."""
    import torch

    from ..train.ddp_env import is_child_rank
    from .leaderboard import write_leaderboard
    from .runner import check_devices, fail_running, launch, work
    from .storage import open_study

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    _quiet_logs()
    take_storage(args)
    sweep = load_sweep(args.sweep, parse_overrides(args.overrides))  # every check before any work
    if is_child_rank():  # a DDP rank of one trial, started by Lightning re-running this command
        from .objective import ddp_rank_main

        return ddp_rank_main(sweep)
    check_devices(sweep)
    meta = _meta(sweep, args)
    c = sweep.config
    devices = c.devices_per_worker if torch.cuda.is_available() else None
    if args.worker is not None:  # a launched child: the loop only
        work(sweep, meta, devices=devices)
        return 0
    print(f"sweep {c.study.name}: storage {redact(sweep.storage_url)}, sampler {c.study.sampler}, "
          f"{c.workers} worker(s), output {sweep.out_dir}", file=sys.stderr)
    study, _ = open_study(sweep, meta)  # created (grid enqueued) before any worker starts; opened once here
    if args.fail_running:
        print(f"--fail-running: {fail_running(study)} running trial(s) failed and queued again", file=sys.stderr)
    if args.retry_failed:
        from .retry import retry_failed

        retry_failed(study)
    failed_workers = 0
    if c.workers == 1:
        work(sweep, meta, devices=devices, study=study)
    else:
        failed_workers = launch(sweep, _argv_for_workers(args))
    if not args.no_leaderboard:
        write_leaderboard(sweep, meta, study, markdown=args.markdown)
    return 1 if failed_workers else 0


def _quiet_logs() -> None:
    """The terminal of a sweep: every log line redacted; Optuna's per-trial messages and experimental-feature
    warnings left out (the progress line reports each trial; a failed one's traceback is in its ``train.log``)."""
    import warnings

    import optuna

    from ..redact import redact_handlers

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    redact_handlers(logging.getLogger())
    optuna_log = logging.getLogger("optuna")
    redact_handlers(optuna_log, keep_traceback=False)
    for handler in optuna_log.handlers:
        if _not_a_trial_outcome not in handler.filters:
            handler.addFilter(_not_a_trial_outcome)


def _not_a_trial_outcome(record: logging.LogRecord) -> bool:
    """Optuna's "Trial N failed …" / "Trial N pruned" records: the progress line says it, with the reason."""
    return not (record.name == "optuna.study._optimize" and str(record.msg).startswith("Trial "))


def _existing_storage(url: str):
    """A storage that must already exist (a command that reads or deletes never creates an empty one)."""
    from pathlib import Path

    from .storage import storage_from_url

    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise ValueError(f"storage {redact(url)!r}: no such SQLite file; run the sweep first (or give --storage)")
    return storage_from_url(url)


def _load_study(sweep: Sweep):
    import optuna

    try:
        return optuna.load_study(study_name=sweep.config.study.name, storage=_existing_storage(sweep.storage_url))
    except KeyError:
        raise ValueError(f"study.name={sweep.config.study.name!r}: no such study in {redact(sweep.storage_url)}; "
                         "run the sweep first (or give --storage)") from None


def add_study_arguments(p: argparse.ArgumentParser, what: str) -> None:
    """The arguments of a command about one existing study: its sweep file, ``--set`` and ``--storage``."""
    p.add_argument("sweep", help=f"the sweep YAML whose study to {what}")
    add_set_argument(p, "dotted overrides of the sweep file (e.g. study.name=...)")
    add_storage_argument(p)


def open_existing(args: argparse.Namespace):
    """(sweep, study) of a command about one existing study; the storage secret handled first."""
    take_storage(args)
    sweep = load_sweep(args.sweep, parse_overrides(args.overrides))
    return sweep, _load_study(sweep)


class Leaderboard:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("sweep", help="the sweep YAML whose study to report")
        add_set_argument(p, "dotted overrides of the sweep file (e.g. study.name=...)")
        add_storage_argument(p)
        add_markdown_argument(p)

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        """Write a sweep's leaderboard (markdown, CSV, HTML, plots, W&B table) from its Optuna storage."""
        from .leaderboard import write_leaderboard

        take_storage(args)
        write_leaderboard(load_sweep(args.sweep, parse_overrides(args.overrides)), markdown=args.markdown)
        return 0


class Status:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        add_study_arguments(p, "show")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        """How far a study has got: trials done of the budget, what runs where, an ETA, the best so far; the
        study's disk use and the free space where its runs are written."""
        from .budget import target_trials
        from .disk import describe, disk_use
        from .status import study_status, to_text

        sweep, study = open_existing(args)
        print(to_text(study_status(study, target_trials(sweep, study))), end="")
        print(describe(disk_use(sweep), sweep.config.study.checkpoints))
        return 0


class Studies:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        p.add_argument("--storage", required=True, help="storage URL (sqlite:///..., postgresql://..., "
                                                        "journal:///...); shown with its password as ***")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        """List the studies of a storage: name, trials, when it started, its best value."""
        import optuna

        from .config import check_storage_url

        url = check_storage_url(args.storage)
        sys.argv[:] = [redact(a) for a in sys.argv]
        summaries = optuna.get_all_study_summaries(_existing_storage(url), include_best_trial=True)
        print(f"{len(summaries)} studies in {redact(url)}")
        for s in sorted(summaries, key=lambda s: s.study_name):
            best = "" if s.best_trial is None or s.best_trial.value is None else \
                f", best val acc1 {K.percent(s.best_trial.value, s.best_trial.user_attrs):.2f}"
            started = s.datetime_start.strftime("%Y-%m-%d %H:%M") if s.datetime_start else "—"
            print(f"  {s.study_name}: {s.n_trials} trials, started {started}{best}")
        return 0


class Delete:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        add_study_arguments(p, "delete")
        p.add_argument("--yes", action="store_true", help="do not ask; delete (for scripts)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        """Delete a study from its storage after confirmation (its run directories and reports stay)."""
        import optuna

        sweep, study = open_existing(args)
        name, n = study.study_name, len(study.get_trials(deepcopy=False))
        if not args.yes:
            print(f"delete study {name!r} ({n} trials) from {redact(sweep.storage_url)}? type its name to confirm: ",
                  end="", file=sys.stderr, flush=True)
            try:
                answer = input()
            except EOFError:
                answer = ""
            if answer.strip() != name:
                raise ValueError(f"delete {name!r}: not confirmed (type the study name, or pass --yes)")
        optuna.delete_study(study_name=name, storage=_existing_storage(sweep.storage_url))
        print(f"deleted study {name!r} ({n} trials); run directories and reports under {sweep.out_dir} are kept",
              file=sys.stderr)
        return 0


class Dashboard:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        add_study_arguments(p, "show live (with every other study of its storage)")
        p.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes the storage's "
                            "studies to the network)")
        p.add_argument("--port", type=int, default=8080, help="port (default 8080)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        """A live view of a running study: optuna-dashboard on the study's storage (Ctrl-C stops it)."""
        from optuna_dashboard import run_server

        if not 0 < args.port < 65536:
            raise ValueError(f"--port={args.port}: expected 1..65535")
        sweep, _ = open_existing(args)  # a clear error when the study does not exist yet
        print(f"optuna-dashboard for study {sweep.config.study.name!r} ({redact(sweep.storage_url)}) at "
              f"http://{args.host}:{args.port}/dashboard/", file=sys.stderr, flush=True)
        run_server(_existing_storage(sweep.storage_url), host=args.host, port=args.port)
        return 0


class Plan:
    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        add_study_arguments(p, "plan from (the pilot)")
        p.add_argument("--mdd", type=float, default=1.0,
                       help="the difference to detect, in metric points (default 1.0)")
        p.add_argument("--power", type=float, default=0.8, help="the power to detect it with (default 0.8)")
        p.add_argument("--alpha", type=float, default=None,
                       help="family-wise error over the study's comparisons (default: its study.seeds alpha, else "
                            "0.05)")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        """Seeds (and compute) each row needs to detect a given difference, from a pilot study."""
        from .decided import ATTR, summary
        from .plan import check, plan, to_text

        check(args)  # before any work
        sweep, study = open_existing(args)
        if args.alpha is None:  # the level the study's own design runs at
            seeds = sweep.config.study.seeds
            args.alpha = seeds.alpha if seeds is not None else 0.05
        print(to_text(plan(sweep, study, args.mdd, args.power, args.alpha)), end="")
        record = study.user_attrs.get(ATTR)
        if record:
            print("seeds until decided, the looks so far (validation decides; test beside):")
            print("\n".join("  " + line for line in summary(record)))
        return 0
