"""``irpe-bench sweep SWEEP.yaml`` (run or resume a study, then its leaderboard) and ``irpe-bench leaderboard``."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any, Dict, List

from .config import STORAGE_ENV, Sweep, load_sweep, redact


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..cli import add_set_argument

    p.add_argument("sweep", help="sweep YAML (see sweeps/)")
    add_set_argument(p, "dotted overrides of the sweep file, e.g. --set study.n_trials=20 "
                        "overrides.trainer.max_epochs=3 workers=2")
    p.add_argument("--storage", help=f"storage URL (overrides study.storage; or set {STORAGE_ENV})")
    p.add_argument("--fail-running", action="store_true",
                   help="first mark this study's RUNNING trials failed and retry them (after a crash, when no "
                        "worker is alive; needed only for storages without a heartbeat)")
    p.add_argument("--no-leaderboard", action="store_true", help="skip writing the leaderboard at the end")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # set by the launcher


def take_storage(args: argparse.Namespace) -> None:
    """Move ``--storage`` into the environment and out of ``sys.argv``.

    NOTE: W&B records the command line of every run (and Lightning's DDP launcher re-runs it), so a password in
    ``--storage`` would end up in each trial's W&B files. The URL goes to ``IRPE_BENCH_STORAGE``, which workers
    and DDP ranks inherit, and ``sys.argv`` keeps only the redacted form (which is then never used)."""
    import os

    if args.storage and "***" not in args.storage:  # a relaunched DDP rank sees the redacted form: keep the env's
        os.environ[STORAGE_ENV] = args.storage
    sys.argv[:] = [redact(a) for a in sys.argv]


def _argv_for_workers(args: argparse.Namespace) -> List[str]:
    argv = ["sweep", args.sweep]
    for group in args.overrides:
        argv += ["--set", *([group] if isinstance(group, str) else group)]
    return argv  # NOTE: the storage travels in the environment (take_storage), never on a command line


def _meta(sweep: Sweep, args: argparse.Namespace) -> Dict[str, Any]:
    from ..train.run import _git_commit
    from .space import describe

    st = sweep.config.study
    cmd = " ".join(["python run.py", *_argv_for_workers(args)]) + (" --storage …" if args.storage else "")
    return {"name": st.name, "sweep_file": str(sweep.path) if sweep.path else None,
            "base_config": sweep.config.base, "overrides": sweep.config.overrides, "space": describe(sweep.config.space),
            "sampler": st.sampler, "sampler_seed": st.seed, "pruner": st.pruner, "n_trials": st.n_trials,
            "storage": redact(sweep.storage_url), "command": cmd, "git_commit": _git_commit(),
            "fingerprint": sweep.fingerprint(),
            "created": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def run(args: argparse.Namespace) -> int:
    """Run (or resume, or join) an Optuna sweep over iRPE variants, then write its leaderboard."""
    import torch

    from ..cli import parse_overrides
    from .runner import check_devices, fail_running, launch, work
    from .storage import open_study

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    take_storage(args)
    sweep = load_sweep(args.sweep, parse_overrides(args.overrides))  # every check before any work
    from ..train.run import _is_child_rank

    if _is_child_rank():  # a DDP rank of one trial, started by Lightning re-running this command
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
    failed_workers = 0
    if c.workers == 1:
        work(sweep, meta, devices=devices, study=study)
    else:
        failed_workers = launch(sweep, _argv_for_workers(args))
    if not args.no_leaderboard:
        write_leaderboard(sweep, meta, study)
    return 1 if failed_workers else 0


def write_leaderboard(sweep: Sweep, meta: Dict[str, Any] | None = None, study=None) -> Dict[str, Any]:
    """The report of the study's current state: files under ``out_dir``, a W&B run, the table on stdout.
    ``study``: the already opened study; None loads it (never creates it)."""
    import optuna

    from ..report import write_report
    from .storage import open_storage

    if study is None:
        try:
            study = optuna.load_study(study_name=sweep.config.study.name, storage=open_storage(sweep))
        except KeyError:
            raise ValueError(f"study.name={sweep.config.study.name!r}: no such study in "
                             f"{redact(sweep.storage_url)}; run the sweep first") from None
    # the header comes from the study's own ``sweep`` attribute (the creator's meta): a function of the storage
    out = write_report(study, sweep.out_dir, None if "sweep" in study.user_attrs else meta)
    log_cfg = sweep.base_config.log
    if log_cfg.wandb:
        from ..report.wandb_table import log_leaderboard
        from ..train.wandb_setup import resolve_mode

        out["wandb_id"] = log_leaderboard(out["board"], out, project=log_cfg.project, group=sweep.config.study.name,
                                          save_dir=sweep.out_dir, mode=resolve_mode(sweep.base_config))
    print(out["markdown"])
    print(f"leaderboard: {out['md']} (also .csv, .html, .json and plots in {sweep.out_dir})", file=sys.stderr)
    return out


class Leaderboard:
    """``irpe-bench leaderboard SWEEP.yaml``: rewrite a study's leaderboard from its storage (no training)."""

    @staticmethod
    def add_arguments(p: argparse.ArgumentParser) -> None:
        from ..cli import add_set_argument

        p.add_argument("sweep", help="the sweep YAML whose study to report")
        add_set_argument(p, "dotted overrides of the sweep file (e.g. study.name=...)")
        p.add_argument("--storage", help=f"storage URL (overrides study.storage; or set {STORAGE_ENV})")

    @staticmethod
    def run(args: argparse.Namespace) -> int:
        """Write a sweep's leaderboard (markdown, CSV, HTML, plots, W&B table) from its Optuna storage."""
        from ..cli import parse_overrides

        take_storage(args)
        write_leaderboard(load_sweep(args.sweep, parse_overrides(args.overrides)))
        return 0
