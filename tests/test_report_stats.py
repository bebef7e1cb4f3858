"""The leaderboard's statistics, recomputed here independently with scipy/statsmodels on the trial values.

A real SQLite Optuna storage holds trials stored the way the objective stores them (``test/*`` beside the
validation keys, fractions; the trial value is the best validation accuracy). Percent values below are the
test accuracies; the report must rank by them, not by the (higher, optimistic) validation values.

Study "stats" (baseline seeds 0-4):
  product      baseline + a clear, consistent gain           → paired t, significant after Holm
  cross        baseline + noise around +0.3                  → paired t, not resolved
  euclidean    exactly cross's values                        → a tie: same band as cross, not significant
  quant        seeds 0-3 only (seed 4 FAILED)                → paired on the 4 common seeds
  product_q    seeds 10-12 (no common seed with the baseline) → Welch t
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from hypothesis import given, settings, strategies
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState
from scipy import stats

from irpe_bench.report import collect, recompute, to_latex, write_report
from irpe_bench.report.stats import compare, holm, holm_worst_alpha, min_detectable_difference, seeds_needed

from ._independent import holm as independent_holm
from ._independent_power import bounded_ci, power_at

DEVICE = "Intel(R) Xeon(R) Platinum 8488C (2 cores, 2 threads)"
BASE = [95.00, 95.83, 94.72, 96.11, 95.28]


def _shift(gains):
    return {s: b + d for s, (b, d) in enumerate(zip(BASE, gains))}


VALUES = {  # variant → {seed: test acc1 %}
    "deit_tiny_norpe": dict(enumerate(BASE)),
    "deit_tiny_ctx_product_50_shared_k": _shift([1.39, 1.67, 1.11, 1.94, 1.39]),
    "deit_tiny_ctx_cross_16_shared_k": _shift([0.56, -0.28, 0.83, 0.0, 0.28]),
    "deit_tiny_ctx_quant_8_shared_k": _shift([0.28, 1.11, -0.56, 0.83]),
    "deit_tiny_ctx_product_50_shared_q": {10: 96.50, 11: 97.22, 12: 96.94},
}
VALUES["deit_tiny_ctx_euclidean_8_shared_k"] = dict(VALUES["deit_tiny_ctx_cross_16_shared_k"])
SETUP = {  # variant → (method, on)
    "deit_tiny_norpe": (None, None), "deit_tiny_ctx_product_50_shared_k": ("product", "k"),
    "deit_tiny_ctx_cross_16_shared_k": ("cross", "k"), "deit_tiny_ctx_euclidean_8_shared_k": ("euclidean", "k"),
    "deit_tiny_ctx_quant_8_shared_k": ("quant", "k"), "deit_tiny_ctx_product_50_shared_q": ("product", "q"),
}
BASELINE = "deit_tiny_norpe"
DISTS = {"model.rpe.method": CategoricalDistribution(["none", "product", "cross", "euclidean", "quant"]),
         "seed": IntDistribution(0, 20)}


def _config(seed, method, on):
    cfg = {"model.name": "deit_tiny_patch16_224", "model.abs_pos": True, "data.name": "digits",
           "trainer.max_epochs": 5, "seed": seed}
    if method is None:
        cfg["model.rpe"] = None
    else:
        cfg.update({"model.rpe.method": method, "model.rpe.mode": "contextual", "model.rpe.on": on,
                    "model.rpe.index": "piecewise", "model.rpe.alpha": 1.9, "model.rpe.beta": 3.8,
                    "model.rpe.gamma": 15.2, "model.rpe.shared_head": True, "model.rpe.layers": "all"})
    return cfg


def _add(study, variant, seed, test_pct=None, state=TrialState.COMPLETE, with_test=True, train=700.0):
    """One trial with the objective's user attrs (fractions); the value is best val = test + 0.8 points."""
    method, on = SETUP[variant]
    cfg = _config(seed, method, on)
    key = hashlib.sha1(json.dumps({k: v for k, v in cfg.items() if k != "seed"}, sort_keys=True).encode())
    done = state == TrialState.COMPLETE
    val_best = None if test_pct is None else (test_pct + 0.8) / 100
    attrs = {
        "variant": variant, "config_key": key.hexdigest()[:12], "config": cfg, "baseline": method is None,
        "seed": seed, "status": "finished" if done else "failed", "error": None if done else "NaN loss",
        "val/acc1": None if val_best is None else val_best - 0.002, "val/acc1_best": val_best,
        "params": 142_026 if method is None else 148_426, "macs": 10_880_128,
        "throughput/train_img_s": train if done else None, "throughput/infer_img_s": 3 * train if done else None,
        "throughput/device": DEVICE, "throughput/precision": "32-true", "throughput/batch_size": 32,
        "epochs": 5, "wall_s": 60.0, "run_dir": f"runs/{variant}/seed{seed}", "wandb_id": f"{variant[-8:]}{seed}",
    }
    if with_test and done:
        attrs.update({"test/acc1": test_pct / 100, "test/acc5": 1.0, "test/loss": 0.12, "test/epoch": 4,
                      "selection": "best_val"})
    params = {"model.rpe.method": method or "none", "seed": seed}
    study.add_trial(optuna.trial.create_trial(
        state=state, value=val_best if done else None, params=params, distributions=dict(DISTS),
        user_attrs=attrs, intermediate_values={e: (val_best or 0.5) - 0.01 * (4 - e) for e in range(5)}))


def _open(tmp_path, name):
    url = f"sqlite:///{tmp_path}/{name}.db"
    return optuna.create_study(storage=url, study_name=name, direction="maximize"), url


@pytest.fixture(scope="module")
def stats_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stats")
    study, url = _open(tmp, "stats")
    study.set_user_attr("sweep", {"name": "stats", "sampler": "grid"})
    for variant, by_seed in VALUES.items():
        for seed, v in by_seed.items():
            _add(study, variant, seed, v, train=700.0 + seed if variant == BASELINE else 560.0 - seed)
    _add(study, "deit_tiny_ctx_quant_8_shared_k", 4, state=TrialState.FAIL)
    return optuna.load_study(study_name="stats", storage=url)


@pytest.fixture(scope="module")
def board(stats_study):
    return collect(stats_study)


@pytest.fixture(scope="module")
def report(stats_study, tmp_path_factory):
    return write_report(stats_study, tmp_path_factory.mktemp("stats_report"))


def _g(board, variant):
    return next(g for g in board.groups if g.variant == variant)


def _my_test(a: dict, b: dict):
    """(test, delta, ci, p) of a - b with scipy directly: paired on common seeds (≥ 2), else Welch."""
    common = sorted(set(a) & set(b))
    if len(common) >= 2:
        x, y = np.array([a[s] for s in common]), np.array([b[s] for s in common])
        r = stats.ttest_rel(x, y)
        p = 1.0 if np.isnan(r.pvalue) and np.all(x == y) else float(r.pvalue)  # the tie: see stats' policy
        return "paired t", float(np.mean(x - y)), list(r.confidence_interval()), p
    r = stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False)
    return "Welch t", float(np.mean(list(a.values())) - np.mean(list(b.values()))), list(r.confidence_interval()), \
        float(r.pvalue)


def test_ranks_by_test_accuracy_with_student_t_cis(board):
    assert board.metric == "test_acc1" and not board.optimistic and board.metric_note is None
    means = {v: float(np.mean(list(s.values()))) for v, s in VALUES.items()}
    assert [g.variant for g in board.groups] == sorted(
        VALUES, key=lambda v: (-round(means[v], 6), _g(board, v).config_key))
    for variant, by_seed in VALUES.items():
        g = _g(board, variant)
        x = list(by_seed.values())
        assert g.n == len(x) and g.mean == pytest.approx(np.mean(x))
        ci = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
        assert g.ci95 == pytest.approx(list(ci)), variant
        assert g.acc1_best_mean == pytest.approx(np.mean(x) + 0.8)  # the optimistic column, not the ranking


def test_paired_welch_failed_seed_and_holm_against_scipy(board):
    base = VALUES[BASELINE]
    expected = {v: _my_test(s, base) for v, s in VALUES.items() if v != BASELINE}
    names = sorted(expected)
    adj = dict(zip(names, independent_holm([expected[v][3] for v in names])))
    for v, (test, delta, ci, p) in expected.items():
        g = _g(board, v)
        assert (g.test, g.delta, g.delta_ci95, g.p_value) == (test, pytest.approx(delta), pytest.approx(ci),
                                                             pytest.approx(p)), v
        assert g.p_holm == pytest.approx(adj[v]) and g.significant == (adj[v] < 0.05), v
        assert g.baseline_key == _g(board, BASELINE).config_key
    assert _g(board, "deit_tiny_ctx_product_50_shared_k").test == "paired t"
    assert _g(board, "deit_tiny_ctx_product_50_shared_q").test == "Welch t"  # seeds 10-12 do not pair
    quant = _g(board, "deit_tiny_ctx_quant_8_shared_k")
    assert (quant.n, quant.n_pairs, quant.seeds) == (4, 4, [0, 1, 2, 3])  # seed 4 failed: pairs on 0-3
    assert _g(board, "deit_tiny_ctx_product_50_shared_k").significant is True
    assert _g(board, "deit_tiny_ctx_product_50_shared_k").verdict == "higher"
    assert _g(board, "deit_tiny_ctx_cross_16_shared_k").verdict == "not resolved"
    assert holm([0.01, 0.04, 0.03]) == pytest.approx(independent_holm([0.01, 0.04, 0.03]))


@pytest.mark.parametrize("ps", [[0.01], [0.04, 0.01, 0.03, 0.2], [0.02, 0.02, 0.5, 0.02], [0.0, 1.0, 0.3, 0.0],
                                [0.9, 0.8, 0.7, 0.6, 0.01], [0.3, 0.1, 0.1, 0.05, 0.3, 0.2, 1.0, 0.004]])
def test_holm_equals_statsmodels_multipletests(ps):
    """The leaderboard's Holm is statsmodels' (ties, zeros, ones and caps), without the full garbage collection
    that statsmodels runs at the end of every Holm call (which is also why this oracle is asked a few lists)."""
    from statsmodels.stats.multitest import multipletests

    expected = [float(p) for p in multipletests(ps, alpha=0.05, method="holm")[1]]
    assert holm(ps) == pytest.approx(expected, rel=1e-12, abs=0)


@settings(max_examples=300, deadline=None)
@given(strategies.lists(strategies.one_of(strategies.floats(0.0, 1.0), strategies.sampled_from([0.0, 0.01, 1.0])),
                        max_size=12))
def test_holm_equals_holm_written_out(ps):
    assert holm(ps) == pytest.approx(independent_holm(ps), rel=1e-12, abs=0)


def test_tie_shares_a_band_and_is_not_significant(board):
    cross, eucl = _g(board, "deit_tiny_ctx_cross_16_shared_k"), _g(board, "deit_tiny_ctx_euclidean_8_shared_k")
    c = compare(list(VALUES[cross.variant].items()), list(VALUES[eucl.variant].items()))
    assert (c.test, c.delta, c.p_value) == ("paired t", 0.0, 1.0)  # zero spread and zero difference: p = 1
    assert cross.rank_band == eucl.rank_band and cross.band == eucl.band
    assert cross.p_value == eucl.p_value and cross.significant is False


def test_rank_bands_from_holm_adjusted_pairwise_tests(board):
    variants = list(VALUES)
    pairs = [(a, b) for i, a in enumerate(variants) for b in variants[i + 1:]]
    res = {ab: _my_test(VALUES[ab[0]], VALUES[ab[1]]) for ab in pairs}
    adj = dict(zip(pairs, independent_holm([res[ab][3] for ab in pairs])))
    better = {v: 0 for v in variants}
    worse = {v: 0 for v in variants}
    for (a, b), p in adj.items():
        if p < 0.05:
            hi, lo = (a, b) if res[(a, b)][1] > 0 else (b, a)
            better[lo] += 1
            worse[hi] += 1
    n = len(variants)
    for v in variants:
        low, high = 1 + better[v], n - worse[v]
        g = _g(board, v)
        assert g.band == [low, high] and g.rank_band == (str(low) if low == high else f"{low}–{high}"), v
    assert any(g.band[0] > 1 for g in board.groups)  # the data separate something


def test_minimum_detectable_difference(board):
    """At the level of the verdicts: Holm's first step over the 5 rows tested vs baseline (α = 0.05/5)."""
    base = VALUES[BASELINE]
    sds, ns = [], []
    for v, s in VALUES.items():
        common = sorted(set(s) & set(base))
        if v != BASELINE and len(common) >= 2:
            sds.append(np.std([s[k] - base[k] for k in common], ddof=1))
            ns.append(len(common))
    sd, n = math.sqrt(np.mean(np.square(sds))), min(ns)
    assert (board.mdd_n, board.mdd_rows, board.mdd_family) == (n, 4, 5) and board.mdd_sd == pytest.approx(sd)
    assert board.mdd_alpha == pytest.approx(0.05 / 5)
    # power integrated over the sample SD (not the package's noncentral t): 0.8 at the MDD, at α = 0.05/5
    assert power_at(board.mdd, sd, n, 0.05 / 5) == pytest.approx(0.8, abs=1e-6)
    assert board.mdd > min_detectable_difference(sd, n)  # the α = 0.05 figure overstated what Holm can detect
    assert min_detectable_difference(sd, 1) is None


def test_holm_worst_alpha_and_seeds_needed_against_an_independent_power():
    assert holm_worst_alpha(30) == pytest.approx(0.05 / 30) and holm_worst_alpha(1) == 0.05
    with pytest.raises(ValueError, match="m=0"):
        holm_worst_alpha(0)
    # the figures: at n = 5, 1.68·SD at α = 0.05 and 4.19·SD at Holm's first step over 30
    assert min_detectable_difference(1.0, 5) == pytest.approx(1.68, abs=0.005)
    assert min_detectable_difference(1.0, 5, alpha=0.05 / 30) == pytest.approx(4.19, abs=0.005)
    for sd, target, alpha in ((3.2, 1.0, 0.05), (3.2, 1.0, 0.05 / 30), (2.0, 1.5, 0.05 / 9)):
        n = seeds_needed(sd, target, alpha)
        assert power_at(target, sd, n, alpha) >= 0.8 > power_at(target, sd, n - 1, alpha)
    assert seeds_needed(1.0, 100.0, 0.05) == 2 and seeds_needed(None, 1.0, 0.05) is None
    assert seeds_needed(1.0, 1e-4, 0.05) is None  # beyond MAX_SEEDS


def test_json_keys_recompute_and_header(report, board):
    data = json.loads(Path(report["json"]).read_text(encoding="utf-8"))
    assert data["metric"] == "test_acc1" and data["optimistic"] is False
    for g in data["groups"]:
        if not g["baseline"]:
            assert {"n", "mean", "ci95", "delta", "delta_ci95", "p_value", "p_holm", "test", "rank_band",
                    "significant", "n_pairs"} <= set(g), g["variant"]
    again = recompute(report["trials_csv"], report["json"])
    for g in data["groups"]:
        r = again[g["config_key"]]
        for k in ("n", "mean", "ci95", "delta", "delta_ci95", "p_value", "p_holm", "test", "rank_band", "band"):
            assert r[k] == g[k], (g["variant"], k)  # exactly: trials.csv keeps full precision
    with open(report["trials_csv"], encoding="utf-8") as fh:
        header = fh.readline().strip().split(",")
    assert "test_acc1" in header and "selection" in header
    md = report["markdown"]
    assert "**metric**: test acc1 (`test_acc1` in trials.csv)" in md
    assert "**n**: 5 for 4 groups, 4 for 1 group, 3 for 1 group" in md
    assert f"**minimum detectable difference**: {board.mdd:.2f} points at 80 % power" in md
    assert "root-mean-square" in md and "**not resolved**: " in md
    assert "val acc1 best (optimistic)" in md and "| Welch t |" in md and "| paired t |" in md
    assert "optimization_history" not in report and "param_importances" not in report  # a grid study
    assert "forest" in report


def test_latex_bold_only_where_significant(report, board):
    tex = Path(report["tex"]).read_text(encoding="utf-8")
    assert tex == to_latex(board) and "\\toprule" in tex and "\\bottomrule" in tex
    for g in board.groups:
        line = next(ln for ln in tex.splitlines() if g.variant.replace("_", "\\_") + "}" in ln)
        assert ("\\mathbf" in line) == bool(g.significant), g.variant
        if g.ci95:
            assert f"${g.mean:.2f} \\pm {(g.ci95[1] - g.ci95[0]) / 2:.2f}$" in line


def test_rewrite_is_byte_identical(stats_study, report, tmp_path):
    again = write_report(stats_study, tmp_path)
    for name in ("md", "csv", "trials_csv", "json", "html", "tex", "forest", "accuracy_by_variant",
                 "accuracy_vs_throughput"):
        assert Path(report[name]).read_bytes() == Path(again[name]).read_bytes(), name


def test_one_seed_study_has_no_uncertainty(tmp_path):
    study, _ = _open(tmp_path, "one_seed")
    for variant, v in ((BASELINE, 95.0), ("deit_tiny_ctx_product_50_shared_k", 96.4),
                       ("deit_tiny_ctx_cross_16_shared_k", 93.9)):
        _add(study, variant, 0, v)
    out = write_report(study, tmp_path / "r")
    board = out["board"]
    assert not board.has_uncertainty and board.mdd is None
    assert [g.rank_band for g in board.groups] == ["1–3"] * 3
    assert all(g.ci95 is None and g.p_value is None and g.test is None for g in board.groups)
    assert [g.delta for g in board.groups if not g.baseline] == pytest.approx([1.4, -1.1])
    assert "this study has no uncertainty estimate (n = 1 per group)" in out["markdown"]
    assert "No uncertainty estimate" in Path(out["tex"]).read_text(encoding="utf-8")


def test_mixed_old_and_new_trials_fall_back_to_optimistic(tmp_path):
    study, _ = _open(tmp_path, "mixed")
    for seed in (0, 1):
        _add(study, BASELINE, seed, BASE[seed], with_test=seed == 0)
        _add(study, "deit_tiny_ctx_product_50_shared_k", seed, BASE[seed] + 1.0)
    board = collect(study)
    assert board.metric == "value" and board.optimistic
    assert board.metric_note == "1 of 4 complete trials have no test accuracy"
    g = _g(board, "deit_tiny_ctx_product_50_shared_k")
    assert g.mean == pytest.approx(np.mean(BASE[:2]) + 1.8)  # the validation value, test + 0.8


def test_a_seed_trained_twice_is_one_sample():
    """A sampler that proposes the same point again trains the same seeds again: those runs are one sample
    each (their mean), so n counts distinct seeds, the CI does not shrink, and the seeds still pair."""
    from irpe_bench.report.stats import one_per_seed, study_stats

    base = [(0, 50.0), (1, 60.0), (2, 55.0)]
    twice = base + [(0, 50.0), (1, 62.0), (2, 55.0)]
    assert one_per_seed(twice) == [(0, 50.0), (1, 61.0), (2, 55.0)]
    assert one_per_seed([(None, 1.0), (None, 2.0)]) == [(None, 1.0), (None, 2.0)]
    rpe = [(0, 60.0), (1, 65.0), (2, 61.0)]
    st = study_stats({"b": twice, "r": rpe}, {"b": None, "r": "b"})
    assert st.groups["b"].n == 3 and st.groups["r"].test == "paired t" and st.groups["r"].n_pairs == 3
    assert st.groups["r"].delta == pytest.approx((10 + 4 + 6) / 3)


def test_bounded_intervals_and_stalls_on_a_real_storage(tmp_path):
    """One seed far below the others: the t interval of the baseline would pass 100 %; the row gets scipy's BCa
    bootstrap interval instead, named in the header, and the run counts as stalled (its best validation top-1 is
    more than 10 points below the row's median) — kept, not dropped."""
    study, url = _open(tmp_path, "bounded")
    base = {0: 98.0, 1: 98.5, 2: 97.5, 3: 60.0, 4: 98.2}
    prod = {0: 98.4, 1: 98.9, 2: 97.9, 3: 75.0, 4: 98.6}
    for seed, v in base.items():
        _add(study, BASELINE, seed, v)
    for seed, v in prod.items():
        _add(study, "deit_tiny_ctx_product_50_shared_k", seed, v)
    for seed, v in {0: 90.0, 1: 91.0}.items():  # two runs: the stall rule needs three
        _add(study, "deit_tiny_ctx_cross_16_shared_k", seed, v)
    out = write_report(optuna.load_study(study_name="bounded", storage=url), tmp_path / "report")
    board = out["board"]
    g, p = _g(board, BASELINE), _g(board, "deit_tiny_ctx_product_50_shared_k")
    c = _g(board, "deit_tiny_ctx_cross_16_shared_k")
    t_ci = stats.ttest_1samp(list(base.values()), 0.0).confidence_interval()
    assert t_ci.high > 100.0  # what the Student t interval would say
    assert g.ci95 == pytest.approx(bounded_ci(list(base.values())), abs=1e-9) and g.ci_method == "BCa bootstrap"
    assert 0.0 <= g.ci95[0] <= g.mean <= g.ci95[1] <= 100.0 and g.n == 5  # the stalled seed is still in
    assert c.ci_method == "Student t" and c.ci95 == pytest.approx(bounded_ci([90.0, 91.0]))
    assert (g.stalled, g.stalled_seeds) == (1, [3]) and (p.stalled, p.stalled_seeds) == (1, [3])  # 75.8 < 98.6 - 10
    assert (c.stalled, c.stalled_seeds) == (None, [])
    assert p.delta_ci95 == pytest.approx(list(stats.ttest_rel(list(prod.values()), list(base.values()))
                                              .confidence_interval()))  # differences stay paired t
    md = out["markdown"]
    rows = {ln.split(" | ")[1]: ln for ln in md.splitlines() if ln.startswith("| ") and " | deit_" in ln}
    assert f"| {g.mean:.2f} [{g.ci95[0]:.2f}, {g.ci95[1]:.2f}]‡ | 1 of 5 stalled (seed 3) |" in rows[BASELINE]
    assert "BCa bootstrap 95 % CI of the mean (scipy.stats.bootstrap, 9,999 resamples, seed 0)" in md
    assert "**stalls**: a run is stalled when its best validation top-1" in md and "2 of 10 runs in 2 row(s)" in md
    data = json.loads(Path(out["json"]).read_text(encoding="utf-8"))
    jg = next(x for x in data["groups"] if x["variant"] == BASELINE)
    assert (jg["stalled"], jg["stalled_seeds"], jg["ci_method"]) == (1, [3], "BCa bootstrap")
    assert data["stall_margin"] == 10.0
    with open(out["csv"], encoding="utf-8") as fh:
        header = fh.readline().strip().split(",")
    assert {"stalled", "stalled_seeds", "ci_method"} <= set(header)
    again = recompute(out["trials_csv"], out["json"])
    assert again[g.config_key]["ci95"] == jg["ci95"]
    tex = Path(out["tex"]).read_text(encoding="utf-8")
    assert f"${g.mean:.2f}\\ [{g.ci95[0]:.2f}, {g.ci95[1]:.2f}]^\\ddagger$" in tex and "BCa bootstrap CI" in tex
    assert board.mdd_family == 2 and "$\\alpha = 0.05/2$, Holm's first step over 2 rows" in tex
