"""The committed leaderboards under ``results/`` follow from their own data.

* Every ``leaderboard.json`` that names its ranking ``metric`` agrees with a recomputation from the
  ``trials.csv`` beside it, done here with scipy directly (not through ``irpe_bench.report.stats``): n, mean and
  the CI per group (Student t, or scipy's BCa bootstrap where the t interval leaves [0, 100]: no interval of an
  accuracy outside it); against the baseline the paired difference, its CI (inside [−100, 100]) and the paired
  t-test's p-value; Holm's adjustment (written out here, independently of statsmodels); the minimum detectable
  difference at Holm's first step (power integrated here over the sample SD); the stalled runs by the rule.
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
from ._independent_power import bounded_ci, power_at, stalled

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "results" / "runs"  # a user's own runs (the README's first command writes there; .gitignore)
BOARDS = sorted(p for p in (ROOT / "results").rglob("leaderboard.json")
                if RUNS not in p.parents and "metric" in json.loads(p.read_text(encoding="utf-8")))
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


def _best_val(trials_csv: Path):
    return _values(trials_csv, "acc1_best")


@pytest.mark.parametrize("board_path", BOARDS, ids=_ids(BOARDS))
def test_committed_statistics_follow_from_trials_csv(board_path: Path):
    board = json.loads(board_path.read_text(encoding="utf-8"))
    values = _values(board_path.parent / "trials.csv", board["metric"])
    best = _best_val(board_path.parent / "trials.csv")
    tested = []
    for g in board["groups"]:
        seeds = values[g["config_key"]]
        xs = list(seeds.values())
        assert g["n"] == len(xs)
        assert g["mean"] == pytest.approx(sum(xs) / len(xs), abs=1e-9)
        if len(xs) >= 2:
            assert g["ci95"] == pytest.approx(bounded_ci(xs), abs=1e-7)
            assert 0.0 <= g["ci95"][0] <= g["ci95"][1] <= 100.0
            half = stats.t.ppf(0.975, len(xs) - 1) * stats.sem(xs)
            t_fits = g["mean"] - half >= 0.0 and g["mean"] + half <= 100.0
            assert g["ci_method"] == ("Student t" if t_fits else "BCa bootstrap")
        assert g["stalled_seeds"] == (stalled(best[g["config_key"]]) or [])
        assert g["stalled"] == (None if len(xs) < 3 else len(g["stalled_seeds"]))
        for key in ("n", "rank_band"):
            assert key in g
        if g.get("baseline_key") is None:  # a baseline, or the study.reference row (a no-RPE row is compared there)
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
        assert -100.0 <= g["delta_ci95"][0] <= g["delta_ci95"][1] <= 100.0
        p = stats.ttest_rel([seeds[s] for s in common], [base[s] for s in common]).pvalue
        assert g["p_value"] == pytest.approx(p, rel=1e-6, abs=1e-12)
        tested.append(g)
    for g, adjusted in zip(tested, holm([g["p_value"] for g in tested])):
        assert g["p_holm"] == pytest.approx(adjusted, rel=1e-6, abs=1e-12)
    if tested:  # Holm-aware: the level of Holm's first step over the rows tested vs baseline
        sd = (sum(g["sd_diff"] ** 2 for g in tested) / len(tested)) ** 0.5
        n = min(g["n_pairs"] for g in tested)
        assert (board["mdd_family"], board["mdd_alpha"]) == (len(tested), pytest.approx(0.05 / len(tested)))
        assert power_at(board["mdd"], sd, n, 0.05 / len(tested)) == pytest.approx(0.8, abs=1e-6)


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


def test_committed_findings_rebuild_from_the_claims_file(tmp_path: Path):
    """results/studies/findings.{md,json} are what the findings command writes from claims.yaml and the committed
    trials today (primary claims marked, TOST for the ±margin ones, MDDs at Holm's first step)."""
    from irpe_bench.report.findings import main

    studies = ROOT / "results" / "studies"
    assert main([str(studies / "claims.yaml"), str(tmp_path / "findings.md")]) == 0
    for name in ("findings.md", "findings.json"):
        assert (tmp_path / name).read_bytes() == (studies / name).read_bytes(), name
    data = json.loads((studies / "findings.json").read_text(encoding="utf-8"))["findings"]
    assert sum(f["family"] == "primary" for f in data) >= 5 and "TOST" in (studies / "findings.md").read_text()


def test_committed_findings_of_the_embedded_benchmark_rebuild(tmp_path: Path):
    """results/studies/findings_mnist.{md,json}: the pre-registered claims (claims_mnist.yaml, docs/paper_claims.md)
    read from the seeds-until-decided studies as committed so far (--partial: a study not run yet is pending)."""
    from irpe_bench.report.findings import main

    studies = ROOT / "results" / "studies"
    assert main([str(studies / "claims_mnist.yaml"), str(tmp_path / "findings_mnist.md"), "--partial"]) == 0
    for name in ("findings_mnist.md", "findings_mnist.json"):
        assert (tmp_path / name).read_bytes() == (studies / name).read_bytes(), name
    data = json.loads((studies / "findings_mnist.json").read_text(encoding="utf-8"))["findings"]
    assert sum(f["family"] == "primary" for f in data) == 9
    assert all(f["sequential"] is not None for f in data if not f["verdict"].startswith("pending (the study"))
