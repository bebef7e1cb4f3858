"""The leaderboard from a real SQLite Optuna study, filled the way the sweep's objective fills it (old-style
trials, without ``test/*``: the board falls back to the optimistic best validation accuracy and says so).

Numbers are chosen so that means and sample standard deviations are exact by hand:
baseline 70/71/72 → 71 ± 1; ctx product 74/75 → 74.5 ± √0.5; bias product 72/77 → 74.5 ± √12.5 (ties with
ctx product, faster at inference: the tie is NOT broken by speed); ctx cross 76/77/81 → 78 ± √7; an
abs_pos=False group (73) has no matching baseline. The statistics themselves are tested in test_report_stats.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState
from scipy import stats

from irpe_bench.report import collect, to_html, to_markdown, write_report
from irpe_bench.report.leaderboard import comparable
from irpe_bench.report.plots import importance_params, make_plots, optimization_history, param_importances

# with 11 trials the study has too few for importances
DRAWN = ("forest", "accuracy_by_variant", "accuracy_vs_throughput", "optimization_history")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SWEEP = {"name": "pytest-sweep", "sweep_file": "sweeps/pytest.yaml", "git_commit": "abc1234",
         "command": "irpe-bench sweep sweeps/pytest.yaml"}
SECRET_META = {"storage": "postgresql://bench:hunter2@db.example/optuna", "note": "made by pytest"}
NOABS = "deit_tiny_ctx_product_50_shared_k<noabs>"
DISTS = {"model.rpe.method": CategoricalDistribution(["none", "product", "cross", "euclidean"]),
         "model.rpe.mode": CategoricalDistribution(["bias", "contextual"]), "seed": IntDistribution(0, 2)}


def _config(seed: int, method=None, mode="contextual", on="k", layers="all", abs_pos=True) -> dict:
    cfg = {"model.name": "deit_tiny_patch16_224", "model.abs_pos": abs_pos, "data.name": "digits",
           "trainer.max_epochs": 5, "optim.lr": 5e-4, "seed": seed}
    if method is None:
        cfg["model.rpe"] = None
    else:
        cfg.update({"model.rpe.method": method, "model.rpe.mode": mode, "model.rpe.on": on,
                    "model.rpe.index": "piecewise", "model.rpe.ratio": 1.9, "model.rpe.alpha": 1.9,
                    "model.rpe.beta": 3.8, "model.rpe.gamma": 15.2, "model.rpe.shared_head": True,
                    "model.rpe.layers": layers})
    return cfg


def _add(study, variant, config, state=TrialState.COMPLETE, value=None, *, train=None, infer=None,
         params=5_000_000, device="cpu", status=None, error=None, retry_of=None, steps=None, system_attrs=None):
    """One trial as the objective stores it (user attrs, params, per-epoch intermediate values). ``value`` and
    ``steps`` are given in percent here and stored as the objective stores them: fractions (torchmetrics)."""
    key = hashlib.sha1(json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True).encode())
    seed = config["seed"]
    p = {"model.rpe.method": config.get("model.rpe.method") or "none", "seed": seed}
    if config.get("model.rpe.mode"):
        p["model.rpe.mode"] = config["model.rpe.mode"]
    done = state == TrialState.COMPLETE
    attrs = {
        "variant": variant, "config_key": key.hexdigest()[:12], "seed": seed, "config": config,
        "baseline": config.get("model.rpe", 1) is None,
        "status": status or {TrialState.COMPLETE: "finished", TrialState.PRUNED: "pruned",
                             TrialState.FAIL: "failed", TrialState.RUNNING: "running"}[state],
        "error": error, "val/acc1": (value - 0.5) / 100 if done else None,
        "val/acc1_best": None if value is None else value / 100, "params": params,
        "macs": 1_000_000_000, "throughput/train_img_s": train, "throughput/infer_img_s": infer,
        "throughput/device": device, "throughput/precision": "32-true", "throughput/batch_size": 64,
        "epochs": 5 if done else None, "wall_s": 12.5 if done else None,
        "run_dir": f"results/runs/{variant}/seed{seed}", "wandb_id": f"w{seed}", "retry_of": retry_of,
    }
    if steps is None:
        steps = {e: (value or 50.0) - 5 + e for e in range(5)} if done else {}
    trial = optuna.trial.create_trial(
        state=state, value=value / 100 if done else None, params=p, distributions={k: DISTS[k] for k in p},
        user_attrs=attrs, intermediate_values={e: v / 100 for e, v in steps.items()}, system_attrs=system_attrs or {})
    study.add_trial(trial)
    return study.trials[-1].number


def _fill(study) -> dict:
    """The whole scenario; returns trial numbers the tests refer to."""
    study.set_user_attr("sweep", SWEEP)
    n = {}
    for seed, v, tr in ((0, 70.0, 1000.0), (1, 71.0, 1010.0), (2, 72.0, 990.0)):
        _add(study, "deit_tiny_norpe", _config(seed), value=v, train=tr, infer=3000.0)
    n["oom"] = _add(study, "deit_tiny_ctx_euclidean_50_shared_k", _config(0, "euclidean"), TrialState.FAIL,
                    error="CUDA out of memory", system_attrs={"fail_reason": "Traceback: RuntimeError"})
    n["killed"] = _add(study, "deit_tiny_ctx_product_50_shared_k", _config(1, "product"), TrialState.FAIL,
                       system_attrs={"fail_reason": "worker killed (stale heartbeat)"})
    _add(study, "deit_tiny_ctx_product_50_shared_k", _config(0, "product"), value=74.0, train=800.0,
         infer=2400.0, params=5_010_000)
    _add(study, "deit_tiny_ctx_product_50_shared_k", _config(1, "product"), value=75.0, train=820.0,
         infer=2400.0, params=5_010_000, retry_of=n["killed"])
    for seed, v in ((0, 72.0), (1, 77.0)):
        _add(study, "deit_tiny_bias_product_50_shared_k", _config(seed, "product", "bias"), value=v, train=950.0,
             infer=2900.0, params=5_000_100)
    for seed, v, dev in ((0, 76.0, "cpu"), (1, 77.0, "cpu"), (2, 81.0, "NVIDIA H100")):
        _add(study, "deit_tiny_ctx_cross_50_shared_qkv", _config(seed, "cross", on="qkv", layers=[0, 1, 2]),
             value=v, train=600.0, infer=1500.0, params=5_050_000, device=dev)
    _add(study, NOABS, _config(0, "product", abs_pos=False), value=73.0, train=810.0, infer=2450.0)
    n["pruned"] = _add(study, "deit_tiny_ctx_product_50_shared_q", _config(0, "product", on="q"),
                       TrialState.PRUNED, steps={0: 30.0, 1: 41.5, 2: 45.25}, error="pruned at epoch 2")
    n["running"] = _add(study, "deit_tiny_ctx_product_50_shared_v", _config(0, "product", on="v"),
                        TrialState.RUNNING, steps={0: 50.0})
    return n


@pytest.fixture(scope="module")
def study_numbers(tmp_path_factory):
    path = tmp_path_factory.mktemp("study")
    study = optuna.create_study(storage=f"sqlite:///{path}/s.db", study_name="pytest-study", direction="maximize")
    numbers = _fill(study)
    # Re-open from the storage: the report must need nothing but what is stored.
    return optuna.load_study(study_name="pytest-study", storage=f"sqlite:///{path}/s.db"), numbers


@pytest.fixture(scope="module")
def study(study_numbers):
    return study_numbers[0]


@pytest.fixture(scope="module")
def board(study):
    return collect(study)


@pytest.fixture(scope="module")
def report(study, tmp_path_factory):
    return write_report(study, tmp_path_factory.mktemp("report"), meta=SECRET_META)


def _group(board, variant):
    return next(g for g in board.groups if g.variant == variant)


def _ci(values):
    ci = stats.ttest_1samp(values, 0.0).confidence_interval()
    return [ci.low, ci.high]


def test_groups_mean_ci_and_ranking_never_by_speed(board):
    order = [g.variant for g in board.groups]
    # 78 > 74.5 (bias, infer 2900) = 74.5 (ctx, infer 2400) > 73 > 71; the tie goes by config key, not speed
    cross, bias, ctx, noabs, base = board.groups
    assert order[0] == "deit_tiny_ctx_cross_50_shared_qkv" and order[3:] == [NOABS, "deit_tiny_norpe"]
    assert [bias.config_key, ctx.config_key] == sorted([bias.config_key, ctx.config_key])
    assert [g.rank for g in board.groups] == [1, 2, 3, 4, 5]
    assert board.metric == "value" and board.optimistic and "no trial has a test accuracy" in board.metric_note
    assert (base.n, base.seeds, base.mean, base.acc1_best_std) == (3, [0, 1, 2], 71.0, 1.0)
    assert base.ci95 == pytest.approx(_ci([70.0, 71.0, 72.0]))
    assert ctx.mean == 74.5 and ctx.sd == pytest.approx(math.sqrt(0.5)) and ctx.ci95 == pytest.approx(_ci([74, 75]))
    assert bias.mean == 74.5 and bias.acc1_best_std == pytest.approx(math.sqrt(12.5))
    assert cross.mean == 78.0 and cross.sd == pytest.approx(math.sqrt(7.0))
    assert noabs.n == 1 and noabs.sd is None and noabs.ci95 is None
    assert ctx.acc1_final_mean == 74.0 and base.train_img_s == 1000.0 and base.infer_img_s == 3000.0
    assert base.train_img_s_range == [990.0, 1010.0] and ctx.train_img_s == 810.0  # median of 800, 820
    assert ctx.trials == sorted(ctx.trials) and len(ctx.run_dirs) == 2
    assert (cross.method, cross.mode, cross.on, cross.index, cross.coefficients, cross.shared, cross.layers,
            cross.abs_pos) == ("cross", "contextual", "qkv", "piecewise", "1.9:3.8:15.2", True, "0,1,2", True)
    assert (base.method, base.coefficients, base.layers, base.abs_pos, base.baseline) == (None, None, None, True,
                                                                                         True)


def test_delta_only_against_the_matching_baseline(board):
    cross, bias, ctx, noabs, base = board.groups
    assert ctx.baseline_key == base.config_key
    # paired over seeds 0, 1: (74 - 70, 75 - 71); the retried seed 1 pairs like any other
    assert ctx.delta == pytest.approx(4.0) and ctx.test == "paired t" and ctx.n_pairs == 2
    assert ctx.delta_params == 10_000
    assert ctx.train_speed == pytest.approx(810 / 1000) and ctx.infer_speed == pytest.approx(2400 / 3000)
    r = stats.ttest_rel([72.0, 77.0], [70.0, 71.0])
    assert bias.delta == pytest.approx(4.0) and bias.p_value == pytest.approx(r.pvalue)
    assert bias.delta_ci95 == pytest.approx(list(r.confidence_interval())) and bias.verdict == "not resolved"
    assert bias.infer_speed == pytest.approx(2900 / 3000)
    assert base.delta is None and base.test is None and base.infer_speed == 1.0  # the reference row
    # abs_pos=False differs from the only baseline outside model.rpe*: no Δ at all, not a wrong one.
    assert (noabs.baseline_key, noabs.delta, noabs.train_speed, noabs.delta_params, noabs.test) == (None,) * 5
    # One seed timed on another device: accuracy still compares, speeds do not.
    assert cross.delta == pytest.approx(7.0) and cross.device is None
    assert cross.train_speed is None and cross.infer_speed is None


def test_comparable_ignores_only_rpe_keys_and_seed():
    cfg = {"model.rpe": None, "model.rpe.on": "k", "model.rpe_x": 1, "seed": 3, "seed_data": 4, "model.abs_pos": 0}
    assert comparable(cfg) == {"model.rpe_x": 1, "seed_data": 4, "model.abs_pos": 0}


def test_failed_retried_pruned_running(board, study_numbers):
    _, n = study_numbers
    assert board.counts == {"total": 15, "complete": 11, "pruned": 1, "failed": 1, "retried": 1, "running": 1,
                            "discarded": 0, "waiting": 0, "groups": 5}
    assert [(t.number, t.reason) for t in board.failed] == [(n["oom"], "CUDA out of memory")]  # user error first
    assert [(t.number, t.reason) for t in board.retried] == [(n["killed"], "worker killed (stale heartbeat)")]
    (pruned,) = board.pruned
    assert (pruned.number, pruned.epochs_reported, pruned.last_acc1) == (n["pruned"], 3, 45.25)
    (running,) = board.running
    assert (running.number, running.epochs_reported, running.duration_s) == (n["running"], 1, None)
    assert [t.number for t in board.trials] == list(range(15))
    assert {t.state for t in board.trials} == {"COMPLETE", "FAIL", "PRUNED", "RUNNING"}


def test_write_report_is_deterministic(study, report, tmp_path):
    again = write_report(study, tmp_path / "again", meta=SECRET_META)
    for name in ("md", "csv", "trials_csv", "json", "tex", "html", *DRAWN):
        assert Path(report[name]).read_bytes() == Path(again[name]).read_bytes(), name
    assert report["markdown"] == Path(report["md"]).read_text(encoding="utf-8")
    assert report["tex"] == Path(report["md"]).parent / "leaderboard.tex"
    assert {p.name for p in Path(report["md"]).parent.iterdir()} == {
        "leaderboard.md", "leaderboard.csv", "trials.csv", "leaderboard.html", "leaderboard.json",
        "leaderboard.tex", *(f"{p}.png" for p in DRAWN)}


def test_csv_and_json_hold_raw_values(report):
    with open(report["csv"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["variant"] for r in rows][0] == "deit_tiny_ctx_cross_50_shared_qkv" and len(rows) == 5
    assert float(rows[2]["acc1_best_std"]) == pytest.approx(math.sqrt(0.5)) and rows[2]["seeds"] == "0 1"
    assert rows[3]["acc1_best_std"] == "" and rows[3]["delta"] == "" and rows[3]["ci95"] == ""
    with open(report["trials_csv"], newline="", encoding="utf-8") as fh:
        trials = list(csv.DictReader(fh))
    assert len(trials) == 15 and trials[3]["state"] == "FAIL" and trials[3]["reason"] == "CUDA out of memory"
    data = json.loads(Path(report["json"]).read_text(encoding="utf-8"))
    assert data["counts"]["retried"] == 1 and data["sweep"] == SWEEP
    assert data["meta"]["storage"] == "postgresql://bench:***@db.example/optuna"
    assert data["groups"][0]["acc1_best_std"] == pytest.approx(math.sqrt(7.0))
    assert data["metric"] == "value" and data["optimistic"] is True and "value" in trials[0]
    assert data["groups"][0]["ci95"] == pytest.approx(_ci([76.0, 77.0, 81.0]))


def test_markdown_header_tables_and_no_secrets(report, board):
    collect_board = board
    md = report["markdown"]
    assert md.startswith("# Leaderboard: pytest-study\n")
    assert "11 complete · 1 pruned · 1 failed (+1 retried) · 1 running" in md
    assert "`abc1234`" in md and "hunter2" not in md and "postgresql://bench:***@db.example/optuna" in md
    cross, bias, ctx = (_group(collect_board, v) for v in ("deit_tiny_ctx_cross_50_shared_qkv",
                                                            "deit_tiny_bias_product_50_shared_k",
                                                            "deit_tiny_ctx_product_50_shared_k"))
    rows = {ln.split(" | ")[1]: ln for ln in md.splitlines() if ln.startswith("| ") and " | deit_" in ln}
    lo, hi = _ci([76.0, 77.0, 81.0])
    assert f"| 78.00 [{lo:.2f}, {hi:.2f}] | 0 of 3 stalled | +7.00 [" in rows[cross.variant]
    assert f"| 74.50 [{ctx.ci95[0]:.2f}, {ctx.ci95[1]:.2f}] | — | +4.00 [" in rows[ctx.variant]  # n < 3: no rule
    assert "| 0.81× |" in rows[ctx.variant] and "| 810 (800–820) |" in rows[ctx.variant]
    assert f"| {bias.rank_band} | {bias.variant} | 2 |" in rows[bias.variant]
    assert "| not resolved |" in rows[bias.variant] and "| paired t |" in rows[bias.variant]
    assert "val acc1 best (optimistic) mean [95 % CI]" in md and "optimistic, the same images chose the epoch" in md
    assert "**not resolved**: deit_tiny_bias_product_50_shared_k" in md
    assert "no such baseline" in md
    assert "| 13 | deit_tiny_ctx_product_50_shared_q | 0 | 3 | 45.25 | pruned at epoch 2 |" in md
    assert "CUDA out of memory" in md and "worker killed" not in md and "trial(s) 4" in md
    assert "| 1–5 | deit_tiny_ctx_product_50_shared_k\\<noabs\\> | 1 | 73.00 | — | — |" in md  # no bare <noabs>
    assert "![forest](forest.png)" in md and "![accuracy_by_variant](accuracy_by_variant.png)" in md


def test_html_escapes_and_embeds_plots(report):
    page = Path(report["html"]).read_text(encoding="utf-8")
    assert "deit_tiny_ctx_product_50_shared_k&lt;noabs&gt;" in page and "<noabs>" not in page
    assert page.count('src="data:image/png;base64,') == len(DRAWN) and "hunter2" not in page
    lo, hi = _ci([74.0, 75.0])
    assert f"<td>74.50 [{lo:.2f}, {hi:.2f}]</td>" in page and "<td>not resolved</td>" in page
    assert "param_importances: not drawn (needs at least 20 complete trials, has 11)" in page
    assert "<h2>Statistics</h2>" in page and "optimistic" in page


def test_plots_are_real_pngs(report):
    for name in DRAWN:
        data = Path(report[name]).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 10_000, name


def test_plots_skip_with_a_reason(tmp_path):
    study = optuna.create_study(direction="maximize", study_name="tiny")
    _add(study, "deit_tiny_norpe", _config(0), value=70.0, train=1.0, infer=2.0)
    board = collect(study)
    assert optimization_history(study, board, tmp_path / "h.png") == (None, "needs at least 2 complete trials, has 1")
    _add(study, "deit_tiny_norpe", _config(1), value=71.0, train=1.0, infer=2.0)  # only the seed varies
    path, reason = param_importances(study, collect(study), tmp_path / "i.png")
    assert path is None and "varied non-seed parameters, has none" in reason and not (tmp_path / "i.png").exists()
    _add(study, "deit_tiny_ctx_product_50_shared_k", _config(0, "product"), value=72.0, train=1.0, infer=2.0)
    path, reason = param_importances(study, collect(study), tmp_path / "i.png")  # one varied param: share 1.0
    assert path is None and "has ['model.rpe.method']" in reason
    board = collect(study)
    plots = make_plots(study, board, tmp_path)
    assert plots["accuracy_by_variant"].path is not None and plots["optimization_history"].path is not None
    assert plots["forest"].path is not None  # product vs norpe, seed 0 pairs: a point, no CI
    page = to_html(board, None, plots)
    assert "param_importances: not drawn (needs two or more varied non-seed parameters" in page
    grid = optuna.create_study(direction="maximize", study_name="grid")
    grid.set_user_attr("sweep", {"sampler": "grid"})
    for t in study.trials:
        grid.add_trial(t)
    gboard = collect(grid)
    assert optimization_history(grid, gboard, tmp_path / "g.png").reason.startswith("a grid study")
    assert param_importances(grid, gboard, tmp_path / "g.png").reason.startswith("a grid study")


def test_importances_never_show_the_seed_and_backend_untouched(tmp_path):
    """A non-grid study with enough trials: importances over the non-seed params only; no pyplot state is
    changed (a notebook's backend and open figures survive the report)."""
    import matplotlib
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    fig = plt.figure()
    try:
        study = optuna.create_study(direction="maximize", study_name="random")
        for i in range(24):
            method = ["product", "cross", "euclidean"][i % 3]
            mode = ["bias", "contextual"][(i // 3) % 2]
            _add(study, f"v-{method}-{mode}", _config(i // 6 % 3, method, mode), value=60.0 + i % 3 * 5 + i // 6 * 0.1,
                 train=1.0, infer=2.0)
        board = collect(study)
        res = param_importances(study, board, tmp_path / "imp.png")
        assert res.path is not None and (tmp_path / "imp.png").read_bytes()[:8] == PNG_SIGNATURE
        assert len({t.params["seed"] for t in study.trials}) == 3  # the seed varies, yet is never a candidate
        assert importance_params(study) == ["model.rpe.method", "model.rpe.mode"]
        assert matplotlib.get_backend() == backend and plt.get_fignums() == [fig.number]
    finally:
        plt.close(fig)


def test_empty_study():
    board = collect(optuna.create_study(direction="maximize", study_name="empty"))
    md = to_markdown(board)
    assert board.groups == [] and board.best is None and "_No trial has completed yet._" in md


def test_wandb_offline_leaderboard_run(board, report, tmp_path):
    import wandb

    from irpe_bench.report.wandb_table import log_leaderboard
    from irpe_bench.train.wandb_setup import read_offline_summary

    run_id = log_leaderboard(board, report, project="irpe_bench", group=None, save_dir=tmp_path)
    assert wandb.run is None
    run = read_offline_summary(tmp_path)
    assert run["run_id"] == run_id and run["state"] == "finished"
    assert run["name"] == "leaderboard-pytest-study" and run["project"] == "irpe_bench"
    summary = run["summary"]
    assert summary["leaderboard/best_variant"] == "deit_tiny_ctx_cross_50_shared_qkv"
    assert summary["leaderboard/best_acc1"] == pytest.approx(78.0) and summary["leaderboard/n_complete"] == 11
    assert "leaderboard" in summary and any(k.startswith("plots/") for k in summary)


def test_a_plot_that_no_longer_applies_is_removed(tmp_path):
    """The report is a function of the storage: a stale PNG from an earlier write must not survive."""
    from irpe_bench.report import write_report

    study = optuna.create_study(direction="maximize", study_name="stale")
    _add(study, "deit_tiny_norpe", _config(0), value=70.0, train=1.0, infer=2.0)
    (tmp_path / "param_importances.png").write_bytes(PNG_SIGNATURE)
    out = write_report(study, tmp_path)
    assert "param_importances" not in out and not (tmp_path / "param_importances.png").exists()
    assert "accuracy_by_variant" in out and (tmp_path / "accuracy_by_variant.png").is_file()
    assert "forest" not in out  # no variant with a baseline
