"""The paper-claims table (``irpe_bench.report.findings``) on the committed digits_quick study (real trials of a
real tiny model), recomputed here with scipy on its trials.csv: the paired test, TOST, Holm inside the primary and
the exploratory family, power at Holm's first step, grouping by config key, duplicate seeds, devices; verdict rules
and bad claims files."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
from scipy import stats

from irpe_bench.report.findings import check_claims, main

from ._independent import holm
from ._independent_power import power_at, tost_p, tost_power_simulated

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


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _write(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


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
    p_tost = tost_p([a[s] for s in seeds], [b[s] for s in seeds], 1.0)
    assert found[2].p_tost == pytest.approx(p_tost, rel=1e-9)
    assert [f.p_holm for f in found] == pytest.approx(holm([r.pvalue, r.pvalue, p_tost]))  # one family of 3
    assert {f.family for f in found} == {"exploratory"} and {f.family_size for f in found} == {3}
    assert [f.verdict for f in found] == ["holds", "contradicted", "not equivalent"]  # CI +10.7..+22.9 outside ±1
    assert found[2].p_holm_diff == pytest.approx(holm([r.pvalue] * 3)[2])
    d = [a[s] - b[s] for s in seeds]
    assert found[0].alpha == pytest.approx(0.05 / 3)
    assert power_at(found[0].mdd, stats.tstd(d), 4, 0.05 / 3) == pytest.approx(0.8, abs=1e-6)  # Holm-aware


def test_tost_decides_equivalence_with_its_power_beside_it(root):
    """A wide margin that the data meet: equivalent; a narrow one: not resolved, with TOST power and seeds, both
    recomputed here (the power by a seeded simulation of 200,000 paired studies)."""
    a, b = _by_seed(IRPE), _by_seed(NONE)
    seeds = sorted(a)
    d = [a[s] - b[s] for s in seeds]
    spec = {"claims": [{"claim": "within 40", "study": "quick", "a": IRPE, "b": NONE, "direction": "equal",
                        "margin": 40.0, "primary": True},
                       {"claim": "within 15", "study": "quick", "a": IRPE, "b": NONE, "direction": "equal",
                        "margin": 15.0, "primary": True}]}
    wide, narrow = check_claims(spec, root)
    ps = [tost_p([a[s] for s in seeds], [b[s] for s in seeds], m) for m in (40.0, 15.0)]
    assert [wide.p_holm, narrow.p_holm] == pytest.approx(holm(ps))
    assert wide.verdict == "equivalent within ±40" and wide.family == "primary"
    assert narrow.verdict.startswith("not resolved (±15 margin; TOST power ")
    assert "α = 0.05/2 (Holm's first step over 2 primary claims)" in narrow.verdict
    sd = stats.tstd(d)
    assert narrow.tost_power == pytest.approx(tost_power_simulated(sd, 4, 15.0, 0.025), abs=0.004)
    n = narrow.tost_seeds
    assert f"{n} pairs for 80 %" in narrow.verdict
    assert tost_power_simulated(sd, n, 15.0, 0.025) >= 0.795 and tost_power_simulated(sd, n - 1, 15.0, 0.025) < 0.805


def test_primary_and_exploratory_claims_are_adjusted_in_their_own_families(root):
    a, b = _by_seed(IRPE), _by_seed(NONE)
    seeds = sorted(a)
    p = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue
    claim = {"study": "quick", "a": IRPE, "b": NONE, "direction": "greater"}
    spec = {"claims": [dict(claim, claim="headline", primary=True)] +
            [dict(claim, claim=f"secondary {i}") for i in range(3)]}
    head, *rest = check_claims(spec, root)
    assert head.family == "primary" and head.family_size == 1 and head.p_holm == pytest.approx(p)
    assert [f.p_holm for f in rest] == pytest.approx(holm([p] * 3)) and {f.family_size for f in rest} == {3}
    assert power_at(head.mdd, stats.tstd([a[s] - b[s] for s in seeds]), 4, 0.05) == pytest.approx(0.8, abs=1e-6)
    with pytest.raises(ValueError, match="primary='yes'; allowed: true or false"):
        check_claims({"claims": [dict(claim, claim="x", primary="yes")]}, root)


def test_rows_are_config_keys_a_seed_trained_twice_is_one_sample_and_devices_are_flagged(root):
    rows = _rows(root / "quick" / "trials.csv")
    again = dict(next(r for r in rows if r["variant"] == IRPE and r["seed"] == "0" and r["state"] == "COMPLETE"))
    again["number"], again["test_acc1"] = "99", str(float(again["test_acc1"]) - 10.0)
    rows.append(again)  # seed 0 of iRPE trained a second time, 10 points lower: one sample, the mean
    for r in rows:
        if r["variant"] == NONE and r["seed"] == "1":
            r["device"] = "cpu: Intel Xeon (2 cores, AVX512) / 32-true / 32"
    _write(root / "quick" / "trials.csv", rows)
    (f,) = check_claims({"claims": [{"claim": "x", "study": "quick", "a": IRPE, "b": NONE,
                                     "direction": "greater"}]}, root)
    a, b = _by_seed(IRPE), _by_seed(NONE)
    a[0] -= 5.0  # the mean of the two runs of seed 0
    seeds = sorted(a)
    r = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
    assert f.n_a == 4 and f.comparison.n_pairs == 4 and f.comparison.p_value == pytest.approx(r.pvalue)
    assert f.key_a == again["config_key"]
    assert f.devices.startswith("⚠ pairs span devices: seeds 1 (") and "Intel Xeon" in f.devices
    # a slug naming two configurations is refused, naming both config keys
    other = dict(again, number="100", config_key="0123456789ab", seed="7")
    _write(root / "quick" / "trials.csv", rows + [other])
    with pytest.raises(ValueError, match="a='deit_tiny_ctx_product_50_shared_k_noabs' names 2 configurations") as e:
        check_claims({"claims": [{"claim": "x", "study": "quick", "a": IRPE, "b": NONE,
                                  "direction": "greater"}]}, root)
    assert "0123456789ab" in str(e.value) and again["config_key"] in str(e.value)


def test_an_equal_claim_is_not_resolved_when_its_ci_straddles_the_margin(root):
    spec = {"claims": [{"claim": "same", "study": "quick", "a": IRPE, "b": NONE, "direction": "equal",
                        "margin": 15.0}]}
    (f,) = check_claims(spec, root)
    assert f.comparison.delta_ci95[0] < 15.0 < f.comparison.delta_ci95[1]
    assert f.verdict.startswith("not resolved (±15 margin; TOST power")


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
    assert "TOST" in table and "## Secondary claims (exploratory" in table
    data = json.loads((root / "findings.json").read_text())
    assert data["findings"][0]["verdict"] == "holds" and data["findings"][0]["family"] == "exploratory"


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


def _key(variant):
    return next(r["config_key"] for r in _rows(QUICK / "trials.csv") if r["variant"] == variant)


def _sequential_study(root, looks, alpha, status="higher", n_max=4):
    """digits_quick's real trials as a seeds-until-decided study: iRPE looked at against the no-RPE reference."""
    design = {"method": "group-sequential paired t", "family": 1, "alpha_row": alpha,
              "spec": {"min": (looks or [2])[0], "max": n_max, "step": 2, "until": "decided", "margin": 1.0,
                       "alpha": alpha, "spending": "obrien_fleming"},
              "rows": [{"variant": NONE, "config_key": _key(NONE), "vs": None, "vs_key": None, "status": "baseline",
                        "seeds": looks[-1] if looks else 2, "looks": [], "val": {}, "test": {}},
                       {"variant": IRPE, "config_key": _key(IRPE), "vs": NONE if looks else None,
                        "vs_key": _key(NONE) if looks else None,  # the record names the baseline at a first look
                        "status": status, "seeds": looks[-1] if looks else 2, "looks": looks,
                        "val": {"decision": status}, "test": {}}]}
    (root / "quick" / "leaderboard.json").write_text(json.dumps({"sequential": design}))


def test_a_seeds_until_decided_study_is_read_by_its_repeated_ci_at_the_last_look(root):
    """One look at max (4 seeds): the repeated CI is the t interval at level 1 − α (scipy, here); a claim with the
    reference as a is the row's comparison negated; the verdict is the pre-registered reading of the CI; a claim
    between two rows neither of which is the other's reference is refused."""
    alpha = 0.01
    _sequential_study(root, [4], alpha)
    spec = {"claims": [
        {"claim": "iRPE supplies position", "study": "quick", "a": IRPE, "b": NONE, "direction": "greater",
         "primary": True},
        {"claim": "reversed", "study": "quick", "a": NONE, "b": IRPE, "direction": "greater", "primary": True},
        {"claim": "same", "study": "quick", "a": IRPE, "b": NONE, "direction": "equal", "margin": 30.0},
    ]}
    found = check_claims(spec, root)
    a, b = _by_seed(IRPE), _by_seed(NONE)
    d = [a[s] - b[s] for s in sorted(a)]
    mean, sd = sum(d) / len(d), stats.tstd(d)
    half = stats.t.ppf(1 - alpha / 2, len(d) - 1) * sd / len(d) ** 0.5
    fwd, rev, same = found
    assert fwd.comparison.delta == pytest.approx(mean) and fwd.comparison.delta_ci95 == pytest.approx(
        [mean - half, mean + half]) and fwd.comparison.n_pairs == 4
    assert rev.comparison.delta == pytest.approx(-mean) and rev.comparison.delta_ci95 == pytest.approx(
        [-mean - half, -mean + half])
    low = mean - half
    expect = "holds" if low > 0 else "not resolved"
    assert fwd.verdict.startswith(expect) and fwd.alpha == alpha and fwd.p_holm is None, fwd
    assert rev.verdict.startswith("contradicted" if low > 0 else "not resolved")
    inside = -30 < mean - half and mean + half < 30
    assert same.verdict == ("equivalent within ±30" if inside else same.verdict) and inside
    assert fwd.sequential["looks"] == [4] and fwd.sequential["validation_decision"] == "higher"
    text = main_text(root, spec)
    assert "seeds until decided, each comparison at α = 0.01, Bonferroni" in text and "repeated CI" in text
    assert "looks at 4 seeds, validation: higher" in text

    spec["claims"].append({"claim": "no reference", "study": "quick", "a": IRPE, "b": IRPE, "direction": "greater"})
    with pytest.raises(ValueError, match="reference"):
        check_claims(spec, root)


def test_a_row_still_receiving_seeds_is_pending_with_its_valid_ci(root):
    _sequential_study(root, [2], 0.05, status="continue")
    spec = {"claims": [{"claim": "iRPE", "study": "quick", "a": IRPE, "b": NONE, "direction": "greater"}]}
    (f,) = check_claims(spec, root)
    assert f.verdict.startswith("pending (still adding seeds; at 2:") and f.comparison.n_pairs == 2


def main_text(root, spec):
    path = root / "claims.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = root / "findings.md"
    assert main([str(path), str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    assert all("sequential" in f for f in data["findings"])
    return out.read_text()


def test_a_partial_run_lists_claims_on_a_study_not_run_yet_as_pending(root):
    claims = [{"claim": "iRPE", "study": "quick", "a": IRPE, "b": NONE, "direction": "greater"},
              {"claim": "later", "study": "not_yet", "a": IRPE, "b": NONE, "direction": "greater"}]
    spec = {"min_seeds": 2, "claims": claims}
    with pytest.raises(ValueError, match="not_yet"):
        check_claims(spec, root)
    done, later = check_claims(spec, root, partial=True)
    assert later.verdict.startswith("pending") and done.p_holm is not None and done.family_size == 1


def test_a_row_before_its_first_look_is_pending_or_not_resolved(root):
    _sequential_study(root, [], 0.05, status="continue")
    spec = {"min_seeds": 2, "claims": [{"claim": "iRPE", "study": "quick", "a": NONE, "b": IRPE,
                                        "direction": "greater"}]}
    (f,) = check_claims(spec, root, partial=True)
    assert f.verdict == "pending (the study has not finished this cell)"
    (f,) = check_claims(spec, root)
    assert f.verdict == "not resolved (no look yet)"


def test_a_sequential_family_with_pending_claims_is_headed_as_sequential(root):
    from irpe_bench.report.findings import to_markdown

    _sequential_study(root, [4], 0.01)
    spec = {"min_seeds": 2, "claims": [
        {"claim": "iRPE", "study": "quick", "a": IRPE, "b": NONE, "direction": "greater", "primary": True},
        {"claim": "later", "study": "not_yet", "a": IRPE, "b": NONE, "direction": "greater", "primary": True}]}
    text = to_markdown(check_claims(spec, root, partial=True))
    assert "## Primary claims (confirmatory; seeds until decided, each comparison at α = 0.01, Bonferroni)" in text
    assert "[repeated CI, 1 − α]" in text and "Holm over 0" not in text
