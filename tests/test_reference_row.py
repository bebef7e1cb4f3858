"""``study.reference``: any row as the comparison (Δ, paired t, Holm, MDD), read from the study's storage; on a copy
of the committed mnist_noise storage (80 real trials), recomputed here with scipy."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import optuna
import pytest
from scipy import stats

from irpe_bench.keys import REFERENCE_ATTR
from irpe_bench.report import collect, to_json, to_markdown

ROOT = Path(__file__).resolve().parents[1]
NOISE = ROOT / "results" / "studies" / "mnist_noise"
CTX, NONE = "deit_tiny_ctx_product_50_shared_k", "deit_tiny_norpe"


def _study(tmp_path: Path) -> optuna.Study:
    shutil.copy(NOISE / "optuna.db", tmp_path / "s.db")
    return optuna.load_study(study_name="mnist_noise", storage=f"sqlite:///{tmp_path / 's.db'}")


def _values(variant: str):
    with open(NOISE / "trials.csv", newline="", encoding="utf-8") as fh:
        return {int(r["seed"]): float(r["test_acc1"]) for r in csv.DictReader(fh)
                if r["variant"] == variant and r["state"] == "COMPLETE"}


def test_every_row_is_compared_with_the_reference_row(tmp_path):
    study = _study(tmp_path)
    default = collect(study)
    assert default.reference is None and '"reference"' not in to_json(default)  # committed boards unchanged
    study.set_user_attr(REFERENCE_ATTR, CTX)  # the iRPE row as the reference: no RPE is now the row compared
    board = collect(study)
    groups = {g.variant: g for g in board.groups}
    assert groups[CTX].baseline_key is None and groups[NONE].baseline_key == groups[CTX].config_key
    a, b = _values(NONE), _values(CTX)
    seeds = sorted(a)
    r = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
    ci = r.confidence_interval(0.95)
    g = groups[NONE]
    assert g.n_pairs == 40 and g.test == "paired t"
    assert g.delta == pytest.approx(sum(a[s] - b[s] for s in seeds) / 40, abs=1e-9)
    assert g.delta_ci95 == pytest.approx([ci.low, ci.high], abs=1e-9)
    assert g.p_holm == pytest.approx(r.pvalue, abs=1e-12)  # one row tested: Holm changes nothing
    assert board.reference == CTX and f'"reference": "{CTX}"' in to_json(board)
    md = to_markdown(board)
    assert f"reference row `{CTX}` (study.reference)" in md and "| reference |" in md


def test_a_reference_that_is_no_row_is_refused_naming_the_rows(tmp_path):
    study = _study(tmp_path)
    study.set_user_attr(REFERENCE_ATTR, "deit_tiny_norpe_noabs")
    with pytest.raises(ValueError) as e:
        collect(study)
    assert "study.reference='deit_tiny_norpe_noabs': no complete row" in str(e.value)
    assert CTX in str(e.value) and NONE in str(e.value)


def test_the_sweep_file_sets_the_reference_in_the_storage(tmp_path):
    from irpe_bench.sweep.config import load_sweep
    from irpe_bench.sweep.storage import open_study

    url = f"sqlite:///{tmp_path / 'q.db'}"
    sweep = load_sweep(ROOT / "sweeps" / "mnist_quick.yaml", {"study": {"storage": url}})
    assert sweep.config.study.reference == "deit_tiny_norpe_noabs"
    study, created = open_study(sweep, {})
    assert created and study.user_attrs[REFERENCE_ATTR] == "deit_tiny_norpe_noabs"
    assert len(study.trials) == 8  # the grid: 2 rows × 4 seeds, waiting
    again = load_sweep(ROOT / "sweeps" / "mnist_quick.yaml", {"study": {"storage": url, "reference": None}})
    study, created = open_study(again, {})  # a reporting choice: the study is joined, the attribute follows
    assert not created and study.user_attrs[REFERENCE_ATTR] is None


def test_a_study_with_a_reference_and_no_complete_trial_yet_has_an_empty_board(tmp_path):
    """A study that has only started (its storage holds no complete trial) reports "No trial has completed yet";
    it used to fail with "no complete row of this study has that variant"."""
    study = optuna.create_study(study_name="fresh", storage=f"sqlite:///{tmp_path / 'f.db'}")
    study.set_user_attr(REFERENCE_ATTR, CTX)
    study.enqueue_trial({"x": 1.0})
    board = collect(study)
    assert board.groups == [] and board.counts["waiting"] == 1
    assert "No trial has completed yet." in to_markdown(board)
