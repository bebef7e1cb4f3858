"""The committed leaderboards under ``results/`` follow from their own data.

* Every ``leaderboard.json`` that names its ranking ``metric`` agrees with a recomputation from the
  ``trials.csv`` beside it, done here with scipy directly (not through ``irpe_bench.report.stats``): n, mean and
  Student-t CI per group; against the baseline the paired difference, its CI and the paired t-test's p-value;
  Holm's adjustment (written out here, independently of statsmodels).
* Every committed study storage (``optuna.db`` beside a leaderboard) rebuilds that leaderboard byte for byte
  (``python run.py leaderboard`` does the same from the sweep file).
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import optuna
import pytest
from scipy import stats

from ._independent import holm

ROOT = Path(__file__).resolve().parents[1]
BOARDS = sorted(p for p in (ROOT / "results").rglob("leaderboard.json")
                if "metric" in json.loads(p.read_text(encoding="utf-8")))
STORES = sorted(p.parent for p in BOARDS if (p.parent / "optuna.db").is_file())


def _ids(paths):
    return [str(p.relative_to(ROOT / "results")) for p in paths]


def test_there_are_committed_boards_to_check():
    assert any("digits_quick" in str(p) for p in BOARDS), "results/sweeps/digits_quick/leaderboard.json is missing"
    assert STORES, "no committed study storage to rebuild a leaderboard from"


def _values(trials_csv: Path, metric: str):
    groups = {}
    with open(trials_csv, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["state"] == "COMPLETE" and row.get(metric, "") != "":
                groups.setdefault(row["config_key"], {})[int(row["seed"])] = float(row[metric])
    return groups


@pytest.mark.parametrize("board_path", BOARDS, ids=_ids(BOARDS))
def test_committed_statistics_follow_from_trials_csv(board_path: Path):
    board = json.loads(board_path.read_text(encoding="utf-8"))
    values = _values(board_path.parent / "trials.csv", board["metric"])
    tested = []
    for g in board["groups"]:
        seeds = values[g["config_key"]]
        xs = list(seeds.values())
        assert g["n"] == len(xs)
        assert g["mean"] == pytest.approx(sum(xs) / len(xs), abs=1e-9)
        if len(xs) >= 2:
            half = stats.t.ppf(0.975, len(xs) - 1) * stats.sem(xs)
            assert g["ci95"] == pytest.approx([g["mean"] - half, g["mean"] + half], abs=1e-7)
        for key in ("n", "rank_band"):
            assert key in g
        if g["baseline"] or g.get("baseline_key") is None:
            continue
        for key in ("delta_ci95", "p_value", "p_holm", "test"):
            assert key in g, key
        base = values[g["baseline_key"]]
        common = sorted(set(seeds) & set(base))
        assert g["test"] == "paired t" and g["n_pairs"] == len(common)
        d = [seeds[s] - base[s] for s in common]
        mean_d = sum(d) / len(d)
        half = stats.t.ppf(0.975, len(d) - 1) * stats.sem(d)
        assert g["delta"] == pytest.approx(mean_d, abs=1e-9)
        assert g["delta_ci95"] == pytest.approx([mean_d - half, mean_d + half], abs=1e-7)
        p = stats.ttest_rel([seeds[s] for s in common], [base[s] for s in common]).pvalue
        assert g["p_value"] == pytest.approx(p, rel=1e-6, abs=1e-12)
        tested.append(g)
    for g, adjusted in zip(tested, holm([g["p_value"] for g in tested])):
        assert g["p_holm"] == pytest.approx(adjusted, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize("folder", STORES, ids=_ids(STORES))
def test_committed_storage_rebuilds_its_leaderboard_byte_identically(folder: Path, tmp_path: Path):
    from irpe_bench.report import write_report

    db = tmp_path / "optuna.db"
    shutil.copy(folder / "optuna.db", db)  # a copy: reading must not touch the committed file
    storage = f"sqlite:///{db}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    write_report(study, tmp_path / "out", None)
    for f in ("leaderboard.md", "leaderboard.csv", "leaderboard.json", "leaderboard.tex", "trials.csv"):
        assert (tmp_path / "out" / f).read_bytes() == (folder / f).read_bytes(), f
