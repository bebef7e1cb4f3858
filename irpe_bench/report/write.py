"""Write a study's report: ``leaderboard.{md,csv,html,json,tex}``, ``trials.csv`` and the plots."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import optuna

from .latex import to_latex
from .leaderboard import Leaderboard, collect
from .page import to_html
from .plots import make_plots
from .render import redact_data, to_csv, to_markdown


def to_json(board: Leaderboard, meta: Optional[Mapping[str, Any]] = None) -> str:
    """The board as plain data, keys in a fixed order, for scripts and for diffing two reports."""
    data = redact_data({"meta": dict(meta or {}), **asdict(board)})  # the study's own sweep attrs too
    omit = board.omitted()  # fields a single-objective, unconstrained, one-seed study does not have
    for k in omit["board"]:
        data.pop(k)
    for g in data["groups"]:
        for k in omit["group"]:
            g.pop(k)
    for t in (t for k in ("trials", "failed", "retried", "pruned", "running") for t in data[k]):
        for k in omit["trial"]:
            t.pop(k)
    return json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n"


def write_report(study: optuna.Study, out_dir: Path, meta: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Write ``leaderboard.{md,csv,html,json,tex}``, ``trials.csv`` and the PNG plots into ``out_dir``.

    Returns name → path for every file written (``md``, ``csv``, ``trials_csv``, ``html``, ``json``, ``tex``
    and one key per drawn plot, e.g. ``forest``), plus ``markdown`` (the Markdown text, to print) and
    ``board`` (the ``Leaderboard``, e.g. for ``wandb_table.log_leaderboard``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    board = collect(study)
    plots = make_plots(study, board, out)
    drawn = {name: p.path for name, p in plots.items() if p.path is not None}
    for name in set(plots) - set(drawn):  # a plot of an earlier report that no longer applies would mislead
        (out / f"{name}.png").unlink(missing_ok=True)

    markdown = to_markdown(board, meta, drawn)
    paths: Dict[str, Any] = {"md": out / "leaderboard.md", "html": out / "leaderboard.html",
                             "json": out / "leaderboard.json", "tex": out / "leaderboard.tex"}
    paths["md"].write_text(markdown, encoding="utf-8")
    paths["csv"], paths["trials_csv"] = to_csv(board, out)
    paths["html"].write_text(to_html(board, meta, plots), encoding="utf-8")
    paths["json"].write_text(to_json(board, meta), encoding="utf-8")
    paths["tex"].write_text(to_latex(board), encoding="utf-8")
    return {**paths, **drawn, "markdown": markdown, "board": board}


__all__ = ["to_json", "write_report"]
