"""A sweep's leaderboard: the report of its study (:mod:`irpe_bench.report`, which reads only the study it is
given) written where the sweep file says, with its W&B table and the verdict on the terminal.

What the ``sweep`` command does when its trials are done and the ``leaderboard`` command does alone. It lives in
the sweep layer because it reads the sweep file (out_dir, logging, the storage); ``report`` imports nothing of
``sweep``.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Dict

from ..redact import redact

if TYPE_CHECKING:
    from .config import Sweep


def write_leaderboard(sweep: "Sweep", meta: Dict[str, Any] | None = None, study=None,
                      markdown: bool = False) -> Dict[str, Any]:
    """The report of the study's current state: files under ``out_dir``, a W&B run, and on stdout the verdict in
    words (``report.verdict``; ``markdown``: the whole Markdown report instead). ``study``: the already opened
    study; None loads it (never creates it)."""
    import optuna

    from ..report.write import write_report
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
    from ..report.verdict import verdict_text

    print(out["markdown"] if markdown else verdict_text(out["board"], str(out["md"])), end="" if not markdown else "\n")
    print(f"leaderboard: {out['md']} (also .csv, .html, .json, .tex and plots in {sweep.out_dir})", file=sys.stderr)
    if out.get("wandb_id"):
        print(f"W&B: run leaderboard-{sweep.config.study.name} ({out['wandb_id']}) under {sweep.out_dir / 'wandb'}",
              file=sys.stderr)
    return out
