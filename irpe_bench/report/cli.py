"""``irpe-bench leaderboard SWEEP.yaml``: rewrite a study's leaderboard from its storage (no training).

:func:`write_leaderboard` is also what the ``sweep`` command calls when its trials are done. A command module:
it reads the sweep file and opens the study through ``irpe_bench.sweep``; the rest of ``report`` reads only
the study it is given.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Dict

from ..overrides import add_set_argument, parse_overrides
from ..redact import redact

if TYPE_CHECKING:
    from ..sweep.config import Sweep


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..sweep.arguments import add_storage_argument

    p.add_argument("sweep", help="the sweep YAML whose study to report")
    add_set_argument(p, "dotted overrides of the sweep file (e.g. study.name=...)")
    add_storage_argument(p)
    add_markdown_argument(p)


def add_markdown_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--markdown", action="store_true",
                   help="print the whole Markdown report (default: a short verdict and the report's path)")


def run(args: argparse.Namespace) -> int:
    """Write a sweep's leaderboard (markdown, CSV, HTML, plots, W&B table) from its Optuna storage."""
    from ..sweep.arguments import take_storage
    from ..sweep.config import load_sweep

    take_storage(args)
    write_leaderboard(load_sweep(args.sweep, parse_overrides(args.overrides)), markdown=args.markdown)
    return 0


def write_leaderboard(sweep: "Sweep", meta: Dict[str, Any] | None = None, study=None,
                      markdown: bool = False) -> Dict[str, Any]:
    """The report of the study's current state: files under ``out_dir``, a W&B run, and on stdout the verdict in
    words (``report.verdict``; ``markdown``: the whole Markdown report instead). ``study``: the already opened
    study; None loads it (never creates it)."""
    import optuna

    from ..sweep.storage import open_storage
    from .write import write_report

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
        from ..train.wandb_setup import resolve_mode
        from .wandb_table import log_leaderboard

        out["wandb_id"] = log_leaderboard(out["board"], out, project=log_cfg.project, group=sweep.config.study.name,
                                          save_dir=sweep.out_dir, mode=resolve_mode(sweep.base_config))
    from .verdict import verdict_text

    print(out["markdown"] if markdown else verdict_text(out["board"], str(out["md"])), end="" if not markdown else "\n")
    print(f"leaderboard: {out['md']} (also .csv, .html, .json, .tex and plots in {sweep.out_dir})", file=sys.stderr)
    return out
