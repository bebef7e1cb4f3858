"""Every statistic quoted in README.md and results/README.md matches the committed JSON it comes from.

The numbers are read from both sides — the README text and the committed ``leaderboard.json`` /
``results/studies/findings.json`` — so the test keeps working when a study is rerun and its README sentences
are updated with it, and fails when only one of them changes. Checked:

* the first command's excerpt in README.md: each statistics line is the start of a line of
  ``results/sweeps/digits_quick/leaderboard.md``, each table row's mean, CI, Δ, its CI and Holm p are the JSON's;
* the first command's prose (Δ and CI, one decimal);
* every quoted claim, “<claim text>”: Δ [low, high], (TOST) Holm p X, against findings.json;
* every "`<study>`'s leaderboard: minimum detectable difference X points … α = 0.05/m" against that study's JSON;
* the seeds-needed ranges of results/README.md's "What five seeds can resolve", recomputed from findings.json.
"""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from irpe_bench.report.stats import seeds_needed

from ._independent_power import power_at

ROOT = Path(__file__).resolve().parents[1]
README, RESULTS = ROOT / "README.md", ROOT / "results" / "README.md"
QUICK = ROOT / "results" / "sweeps" / "mnist_quick"
FINDINGS = ROOT / "results" / "studies" / "findings.json"
NUM = r"[+\-−]?\d+(?:\.\d+)?"


def _flat(path: Path) -> str:
    """The text with line breaks and list indentation folded to single spaces, unicode minus as '-'."""
    return " ".join(path.read_text(encoding="utf-8").split()).replace("−", "-")


def _findings():
    return {f["claim"]: f for f in json.loads(FINDINGS.read_text(encoding="utf-8"))["findings"]}


def _board(study: str):
    for folder in ("studies", "sweeps"):
        path = ROOT / "results" / folder / study / "leaderboard.json"
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    raise AssertionError(f"no committed leaderboard.json for {study!r}")


def _excerpt() -> str:
    blocks, current = [], None
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            blocks, current = (blocks + ["\n".join(current)], None) if current is not None else (blocks, [])
        elif current is not None:
            current.append(line)
    return next(b for b in blocks if "## Statistics" in b)


def test_the_first_commands_excerpt_is_its_leaderboard():
    excerpt = _excerpt()
    md = [ln.replace("**", "").replace("\\<", "<").replace("\\>", ">")
          for ln in (QUICK / "leaderboard.md").read_text(encoding="utf-8").splitlines()]
    stat_lines = [ln for ln in excerpt.splitlines() if ln.startswith("- ")]
    assert stat_lines, "the excerpt has no statistics lines"
    for ln in stat_lines:
        assert any(m.startswith(ln) for m in md), f"README excerpt line not in leaderboard.md: {ln}"
    board = json.loads((QUICK / "leaderboard.json").read_text(encoding="utf-8"))
    groups = {g["variant"]: g for g in board["groups"]}
    table = [ln for ln in excerpt.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in table[2:]]
    assert rows
    for row in rows:
        cell = dict(zip(head, row))
        g = groups[cell["variant"]]
        assert cell["n"] == str(g["n"])
        mean_col = next(h for h in head if h.endswith("mean [95 % CI]"))
        assert cell[mean_col].rstrip("‡") == f"{g['mean']:.2f} [{g['ci95'][0]:.2f}, {g['ci95'][1]:.2f}]"
        if g["delta"] is not None and "Δ vs baseline [95 % CI]" in cell:
            lo, hi = g["delta_ci95"]
            assert cell["Δ vs baseline [95 % CI]"] == f"{g['delta']:+.2f} [{lo:+.2f}, {hi:+.2f}]"
        if g["p_holm"] is not None and "p (Holm)" in cell:
            assert cell["p (Holm)"] == ("<0.001" if g["p_holm"] < 0.001 else f"{g['p_holm']:.3f}")


def test_the_first_commands_prose():
    board = json.loads((QUICK / "leaderboard.json").read_text(encoding="utf-8"))
    (g,) = [g for g in board["groups"] if g["delta"] is not None]
    text = _flat(README)
    found = re.findall(rf"is ({NUM}) points more accurate than no position information at all \(paired 95 % CI "
                       rf"({NUM}) to ({NUM}), four seeds, Holm p ({NUM})\)", text)
    assert found, "the first command's summary sentence was not found"
    for d, lo, hi, p in found:
        assert (float(d), float(lo), float(hi)) == (round(g["delta"], 1), round(g["delta_ci95"][0], 1),
                                                   round(g["delta_ci95"][1], 1))
        assert float(p) == round(g["p_holm"], 3)


@pytest.mark.parametrize("path", [README, RESULTS], ids=["README.md", "results/README.md"])
def test_every_quoted_claim_is_the_committed_finding(path: Path):
    findings = _findings()
    quoted = re.findall(rf"“([^”]+)”(?: \(exploratory\))?: ({NUM}) \[({NUM}), ({NUM})\], (TOST )?Holm p ({NUM})",
                        _flat(path))
    assert quoted, f"{path.name} quotes no claim"
    for claim, d, lo, hi, tost, p in quoted:
        f = findings[claim]
        c = f["comparison"]
        assert [d, lo, hi] == [f"{c['delta']:+.2f}", f"{c['delta_ci95'][0]:+.2f}", f"{c['delta_ci95'][1]:+.2f}"], claim
        assert bool(tost) == (f["direction"] == "equal"), claim
        assert p == f"{f['p_holm']:.3g}", claim
    resolved = re.search(r"Resolved: (\w+) primary claim", _flat(RESULTS))
    if path == RESULTS and resolved:
        n = sum(f["family"] == "primary" and f["verdict"] in ("holds", "contradicted") or
                f["verdict"].startswith("equivalent") or f["verdict"] == "not equivalent"
                for f in findings.values() if f["family"] == "primary")
        assert resolved.group(1) == {1: "one", 2: "two", 3: "three"}.get(n, str(n))


@pytest.mark.parametrize("path", [README, RESULTS], ids=["README.md", "results/README.md"])
def test_every_quoted_minimum_detectable_difference_is_the_leaderboards(path: Path):
    quoted = re.findall(r"`(\w+)`'s leaderboard: minimum detectable difference ([\d.]+) points[^α]*α = 0\.05/(\d+)",
                        _flat(path))
    assert quoted or path == README
    for study, mdd, m in quoted:
        board = _board(study)
        assert mdd == f"{board['mdd']:.2f}" and int(m) == board["mdd_family"], study
        assert power_at(board["mdd"], board["mdd_sd"], board["mdd_n"], 0.05 / int(m)) == pytest.approx(0.8, abs=1e-6)


def test_seeds_needed_for_one_point_are_recomputed_from_the_findings():
    findings = list(_findings().values())
    greater = [seeds_needed(f["comparison"]["sd_diff"], 1.0, f["alpha"]) for f in findings
               if f["direction"] == "greater"]
    for f, n in zip([f for f in findings if f["direction"] == "greater"], greater):  # the package's n, checked
        sd = f["comparison"]["sd_diff"]
        assert power_at(1.0, sd, n, f["alpha"]) >= 0.8 > power_at(1.0, sd, n - 1, f["alpha"]), f["claim"]
    equal = [f["tost_seeds"] for f in findings if f["direction"] == "equal"]
    sds = [f["comparison"]["sd_diff"] for f in findings]
    text = _flat(RESULTS)
    m = re.search(r"own paired SD \(([\d.]+)–([\d.]+) points\).*?a > b claims need ([\d,]+)–([\d,]+) pairs.*?"
                  r"median ([\d,]+) over the (\d+) such claims\), and ≈ claims need ([\d,]+)–([\d,]+) pairs", text)
    assert m, "results/README.md: the seeds-needed sentence was not found"
    got = [x.replace(",", "") for x in m.groups()]
    assert got == [f"{min(sds):.2f}", f"{max(sds):.2f}", str(min(greater)), str(max(greater)),
                   str(round(statistics.median(greater))), str(len(greater)), str(min(equal)), str(max(equal))]
    readme = re.search(r"a 1-point difference needs ([\d,]+)–([\d,]+) pairs", _flat(README))
    assert readme and [x.replace(",", "") for x in readme.groups()] == [str(min(greater)), str(max(greater))]
    tost = re.search(r"TOST's power at n = 5 is below ([\d.]+) for every ±1 claim", text)
    assert tost and all(f["tost_power"] < float(tost.group(1)) for f in findings if f["direction"] == "equal")


@pytest.mark.parametrize("study, anchor", [("mnist_pilot_noabs", "`mnist_pilot_noabs`, 40 seeds each"),
                                           ("mnist_noise", "`sweeps/recipe/mnist_noise.yaml`")])
def test_the_recipe_studies_in_the_results_section(study, anchor):
    """The README's results bullets on the embedded benchmark: Δ [CI] (paired t, n, p) and the stall count are the
    committed leaderboard's (one compared row, so its Holm p is its p)."""
    text = _flat(README)
    assert anchor in text, anchor
    after = text[text.index(anchor):]
    m = re.search(rf"= ({NUM}) \[({NUM}), ({NUM})\] \(paired t, (?:n = (\d+), )?p ({NUM})\)", after)
    assert m, after[:400]
    g = next(g for g in _board(study)["groups"] if g["delta"] is not None)
    assert float(m.group(1)) == pytest.approx(g["delta"], abs=0.005)
    assert [float(m.group(2)), float(m.group(3))] == pytest.approx(g["delta_ci95"], abs=0.005)
    assert m.group(4) is None or int(m.group(4)) == g["n_pairs"]
    assert float(m.group(5)) == pytest.approx(g["p_value"], abs=0.0005 if g["p_value"] < 0.1 else 0.005)
    if study == "mnist_pilot_noabs":
        rows = [x for s in ("mnist_noise", "mnist_pilot_noabs") for x in _board(s)["groups"]]
        quoted = re.search(r"(\d+) of (\d+) runs in the four rows of `mnist_noise` and `mnist_pilot_noabs`", text)
        assert quoted and len(rows) == 4
        assert (int(quoted.group(1)), int(quoted.group(2))) == (sum(x["stalled"] for x in rows),
                                                               sum(x["n"] for x in rows))


def test_the_pre_registered_claims_in_the_results_section():
    """The README's bullet on the paper's claims on the embedded benchmark quotes findings_mnist.json: each
    "Δ [low, high] (n pairs)" is a finding's test repeated CI at its last look, with its verdict beside."""
    text = _flat(README)
    start = text.index("**The paper's claims, pre-registered**")
    bullet = text[start:text.index("On the embedded digits", start)]
    findings = json.loads((ROOT / "results/studies/findings_mnist.json").read_text(encoding="utf-8"))["findings"]
    quoted = re.findall(rf"({NUM}) \[({NUM}), ({NUM})\] \((\d+) pairs\): \**([a-z ±1]+?)\**[;.]", bullet)
    assert len(quoted) >= 3, bullet
    for delta, low, high, n, verdict in quoted:
        match = [f for f in findings if f["comparison"]["delta_ci95"] is not None
                 and abs(f["comparison"]["delta"] - float(delta)) < 0.005
                 and f["comparison"]["delta_ci95"] == pytest.approx([float(low), float(high)], abs=0.005)
                 and f["comparison"]["n_pairs"] == int(n)]
        assert len(match) == 1 and match[0]["verdict"].startswith(verdict.strip()), (delta, verdict)


def test_the_families_study_in_the_results_section():
    """The README's bullet on ``pos_families`` quotes its leaderboard's ``by_img_size``: each named row's Δ [CI] at
    the training size, its verdict (Holm p < 0.05 or not), the size's minimum detectable difference, and the range
    by which the rows without the absolute embedding fall below it at the larger sizes (all resolved), while the
    iRPE rows beside it are not."""
    text = _flat(README)
    start = text.index("**Other position encodings**")
    bullet = text[start:text.index("On the embedded digits", start)]
    board = _board("pos_families")
    rows = {g["variant"]: g["by_img_size"] for g in board["groups"]}
    named = {"PEG - absolute": "deit_tiny_cpe_noabs", "the bias table alone": "deit_tiny_rpb_noabs",
             "no positions": "deit_tiny_norpe_noabs"}
    for label, variant in named.items():
        m = re.search(rf"{re.escape(label)} ({NUM}) \[({NUM}), ({NUM})\]", bullet)
        assert m, label
        cell = rows[variant]["28"]
        assert float(m.group(1)) == pytest.approx(cell["delta"], abs=0.005)
        assert [float(m.group(2)), float(m.group(3))] == pytest.approx(cell["delta_ci95"], abs=0.005)
        assert cell["p_holm"] < 0.05
    unresolved = ["deit_tiny_ctx_product_50_shared_k", "deit_tiny_ctx_product_50_shared_qkv",
                  "deit_tiny_rope_axial_noabs", "deit_tiny_rope_mixed_noabs"]
    assert all(rows[v]["28"]["p_holm"] >= 0.05 for v in unresolved)
    mdd = re.search(rf"not resolved \(MDD ({NUM})\)", bullet)
    assert mdd and float(mdd.group(1)) == pytest.approx(board["img_size_mdd"]["28"], abs=0.005)
    larger = [rows[v][s] for v in rows if v.endswith("_noabs") for s in ("42", "56")]
    assert all(c["p_holm"] < 0.05 and c["delta"] < 0 for c in larger)
    drops = [-c["delta"] for c in larger]
    span = re.search(rf"is ({NUM})–({NUM}) points below it \(resolved\)", bullet)
    assert span and [span.group(1), span.group(2)] == [f"{min(drops):.1f}", f"{max(drops):.1f}"]
    assert all(rows[v][s]["p_holm"] >= 0.05 for v in unresolved[:2] for s in ("42", "56"))
