"""The end of a sweep in words (``report.verdict``), on the committed mnist_quick study (real trials): the
comparison, Δ [95 % CI] recomputed here with scipy from its trials.csv, resolved or not, n, the CPU and the
report's path; the whole Markdown only with ``--markdown``."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
from scipy import stats

from irpe_bench.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "results" / "sweeps" / "mnist_quick"


def _paired():
    with open(QUICK / "trials.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["state"] == "COMPLETE"]
    by = {(r["variant"], int(r["seed"])): float(r["test_acc1"]) for r in rows}
    d = np.array([by[("deit_tiny_norpe", s)] - by[("deit_tiny_norpe_noabs", s)] for s in range(4)])
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half, rows[0]["device"].split(" / ")[0]


def _run(tmp_path, capsys, *extra):
    db = tmp_path / "quick.db"
    shutil.copy(QUICK / "optuna.db", db)
    out = tmp_path / "out"
    assert main(["leaderboard", str(ROOT / "sweeps/mnist_quick.yaml"), "--storage", f"sqlite:///{db}", "--set",
                 f"out_dir={out}", "overrides.log.wandb=false", *extra]) == 0
    return capsys.readouterr().out, out


def test_the_leaderboard_ends_in_a_verdict_in_words(tmp_path, capsys):
    printed, out = _run(tmp_path, capsys)
    mean, low, high, cpu = _paired()
    lines = printed.strip().splitlines()
    assert len(lines) == 3, printed
    assert lines[0].startswith("Verdict on test acc1 (held-out test split") and "4 seed(s) per row" in lines[0]
    assert cpu in lines[0]
    assert (f"deit_tiny_norpe − deit_tiny_norpe_noabs: {mean:+.2f} points [95 % CI {low:+.2f}, {high:+.2f}] "
            "(paired t, n = 4") in lines[1] and lines[1].endswith("resolved, deit_tiny_norpe is higher")
    assert lines[2] == f"Report: {out / 'leaderboard.md'} (--markdown prints it whole)"
    assert "## Statistics" not in printed and (out / "leaderboard.md").is_file()


def test_markdown_on_request(tmp_path, capsys):
    printed, out = _run(tmp_path, capsys, "--markdown")
    assert printed.startswith("# Leaderboard: mnist_quick") and "## Statistics" in printed
    assert printed.rstrip("\n") == (out / "leaderboard.md").read_text().rstrip("\n")
