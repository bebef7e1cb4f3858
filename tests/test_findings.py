"""The paper-claims table (``irpe_bench.report.findings``) on the committed digits_quick study, recomputed here
with scipy on its trials.csv; verdict rules and bad claims files."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import yaml
from scipy import stats

from irpe_bench.report.findings import check_claims, main

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "results" / "sweeps" / "digits_quick"
IRPE, NONE = "deit_tiny_ctx_product_50_shared_k_noabs", "deit_tiny_norpe_noabs"


@pytest.fixture()
def root(tmp_path):
    shutil.copy(QUICK / "trials.csv", (tmp_path / "quick").mkdir() or tmp_path / "quick" / "trials.csv")
    return tmp_path


def _by_seed(variant):
    with open(QUICK / "trials.csv", newline="") as fh:
        return {int(r["seed"]): float(r["test_acc1"]) for r in csv.DictReader(fh)
                if r["variant"] == variant and r["state"] == "COMPLETE"}


def test_claims_recomputed_with_scipy_and_holm_over_the_file(root):
    spec = {"claims": [
        {"claim": "iRPE supplies position", "study": "quick", "a": IRPE, "b": NONE, "direction": "greater",
         "paper": "+3.3 (#4 vs #2)"},
        {"claim": "the reverse", "study": "quick", "a": NONE, "b": IRPE, "direction": "greater"},
        {"claim": "the same (wide margin)", "study": "quick", "a": IRPE, "b": NONE, "direction": "equal",
         "margin": 1.0},
    ]}
    found = check_claims(spec, root)
    a, b = _by_seed(IRPE), _by_seed(NONE)
    seeds = sorted(a)
    r = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
    ci = r.confidence_interval()
    first = found[0].comparison
    assert first.test == "paired t" and first.n_pairs == 4
    assert first.delta_ci95 == pytest.approx([ci.low, ci.high]) and first.p_value == pytest.approx(r.pvalue)
    assert [f.p_holm for f in found] == pytest.approx([min(1.0, 3 * r.pvalue)] * 3)  # equal p: Holm = 3p
    assert [f.verdict for f in found][:2] == ["holds", "contradicted"]
    assert found[2].verdict == "contradicted"  # a CI of +10.7..+22.9 lies outside ±1
    assert found[0].mdd == pytest.approx(8.15, abs=0.01)  # the leaderboard's figure for this study


def test_an_equal_claim_is_not_resolved_when_its_ci_straddles_the_margin(root):
    spec = {"claims": [{"claim": "same", "study": "quick", "a": IRPE, "b": NONE, "direction": "equal",
                        "margin": 15.0}]}
    (f,) = check_claims(spec, root)
    assert f.comparison.delta_ci95[0] < 15.0 < f.comparison.delta_ci95[1]
    assert f.verdict.startswith("not resolved (±15 margin; minimum detectable difference")


@pytest.mark.parametrize("claim, message", [
    ({"claim": "x", "study": "quick", "a": IRPE, "b": NONE, "direction": "bigger"},
     "direction='bigger'; allowed: ['greater', 'equal']"),
    ({"claim": "x", "study": "quick", "a": IRPE, "b": "deit_tiny_polar", "direction": "greater"},
     "b='deit_tiny_polar' is not a complete variant of 'quick'"),
    ({"claim": "x", "study": "nowhere", "a": IRPE, "b": NONE, "direction": "greater"}, "has no trials.csv"),
    ({"claim": "x", "study": "quick", "a": IRPE, "b": NONE, "direction": "equal"}, "needs margin"),
    ({"claim": "x", "study": "quick", "a": IRPE}, "missing ['b', 'direction']"),
])
def test_bad_claims_are_refused_with_the_claim_and_field(root, claim, message):
    with pytest.raises(ValueError, match="claims\\[0\\]") as e:
        check_claims({"claims": [claim]}, root)
    assert message in str(e.value)


def test_the_command_writes_the_table(root, capsys):
    path = root / "claims.yaml"
    path.write_text(yaml.safe_dump({"claims": [{"claim": "iRPE supplies position", "study": "quick",
                                                 "a": IRPE, "b": NONE, "direction": "greater"}]}))
    assert main([str(path), str(root / "findings.md")]) == 0
    table = (root / "findings.md").read_text()
    assert table == capsys.readouterr().out
    assert "| iRPE supplies position | quick |" in table and "**holds**" in table and "+16.78 [+10.68, +22.87]" in table


def test_a_partial_run_lists_unfinished_cells_as_pending_and_leaves_them_out_of_holm(root):
    spec = {"min_seeds": 5, "claims": [
        {"claim": "four seeds only", "study": "quick", "a": IRPE, "b": NONE, "direction": "greater"},
        {"claim": "a cell not run yet", "study": "quick", "a": IRPE, "b": "deit_tiny_ctx_product_50_shared_v",
         "direction": "greater"}]}
    with pytest.raises(ValueError, match="is not a complete variant"):
        check_claims(spec, root)
    found = check_claims(spec, root, partial=True)
    assert [f.verdict for f in found] == ["pending (the study has not finished this cell)"] * 2
    assert all(f.p_holm is None for f in found)
    spec["min_seeds"] = 4  # digits_quick has four seeds per cell: now the first claim is tested, alone in Holm
    first, second = check_claims(spec, root, partial=True)
    assert first.verdict == "holds" and first.p_holm == pytest.approx(first.comparison.p_value)
    assert second.verdict.startswith("pending")
