"""The leaderboard from a real SQLite Optuna study, filled the way the sweep's objective fills it.

Numbers are chosen so that means and sample standard deviations are exact by hand:
baseline 70/71/72 → 71 ± 1; ctx product 74/75 → 74.5 ± √0.5; bias product 72/77 → 74.5 ± √12.5 (ties with
ctx product, wins on inference speed); ctx cross 76/77/81 → 78 ± √7; an abs_pos=False group (73) has no
matching baseline.
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

from irpe_bench.report import collect, to_html, to_markdown, write_report
from irpe_bench.report.leaderboard import comparable
from irpe_bench.report.plots import PLOTS, make_plots, optimization_history, param_importances

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


def test_groups_mean_sample_std_and_ranking_with_tie_break(board):
    order = [g.variant for g in board.groups]
    # 78 > 74.5 (bias, infer 2900) = 74.5 (ctx, infer 2400) > 73 > 71
    assert order == ["deit_tiny_ctx_cross_50_shared_qkv", "deit_tiny_bias_product_50_shared_k",
                     "deit_tiny_ctx_product_50_shared_k", NOABS, "deit_tiny_norpe"]
    assert [g.rank for g in board.groups] == [1, 2, 3, 4, 5]
    cross, bias, ctx, noabs, base = board.groups
    assert (base.n, base.seeds, base.acc1_best_mean, base.acc1_best_std) == (3, [0, 1, 2], 71.0, 1.0)
    assert ctx.acc1_best_mean == 74.5 and ctx.acc1_best_std == pytest.approx(math.sqrt(0.5))
    assert bias.acc1_best_mean == 74.5 and bias.acc1_best_std == pytest.approx(math.sqrt(12.5))
    assert cross.acc1_best_mean == 78.0 and cross.acc1_best_std == pytest.approx(math.sqrt(7.0))
    assert noabs.n == 1 and noabs.acc1_best_std is None
    assert ctx.acc1_final_mean == 74.0 and base.train_img_s == 1000.0 and base.infer_img_s == 3000.0
    assert ctx.trials == sorted(ctx.trials) and len(ctx.run_dirs) == 2
    assert (cross.method, cross.mode, cross.on, cross.index, cross.coefficients, cross.shared, cross.layers,
            cross.abs_pos) == ("cross", "contextual", "qkv", "piecewise", "1.9:3.8:15.2", True, "0,1,2", True)
    assert (base.method, base.coefficients, base.layers, base.abs_pos, base.baseline) == (None, None, None, True,
                                                                                         True)


def test_delta_only_against_the_matching_baseline(board):
    cross, bias, ctx, noabs, base = board.groups
    assert ctx.baseline_key == base.config_key
    assert ctx.delta_acc1 == pytest.approx(3.5) and ctx.delta_params == 10_000
    assert ctx.train_speed == pytest.approx(810 / 1000) and ctx.infer_speed == pytest.approx(2400 / 3000)
    assert bias.delta_acc1 == pytest.approx(3.5) and bias.infer_speed == pytest.approx(2900 / 3000)
    assert base.delta_acc1 == 0.0 and base.infer_speed == 1.0  # the reference row compares with itself
    # abs_pos=False differs from the only baseline outside model.rpe*: no Δ at all, not a wrong one.
    assert (noabs.baseline_key, noabs.delta_acc1, noabs.train_speed, noabs.delta_params) == (None,) * 4
    # One seed timed on another device: accuracy still compares, speeds do not.
    assert cross.delta_acc1 == pytest.approx(7.0) and cross.device is None
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
    for name in ("md", "csv", "trials_csv", "json"):
        assert Path(report[name]).read_bytes() == Path(again[name]).read_bytes(), name
    assert report["markdown"] == Path(report["md"]).read_text(encoding="utf-8")
    assert {p.name for p in Path(report["md"]).parent.iterdir()} >= {
        "leaderboard.md", "leaderboard.csv", "trials.csv", "leaderboard.html", "leaderboard.json",
        *(f"{p}.png" for p in PLOTS)}


def test_csv_and_json_hold_raw_values(report):
    with open(report["csv"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["variant"] for r in rows][0] == "deit_tiny_ctx_cross_50_shared_qkv" and len(rows) == 5
    assert float(rows[2]["acc1_best_std"]) == pytest.approx(math.sqrt(0.5)) and rows[2]["seeds"] == "0 1"
    assert rows[3]["acc1_best_std"] == "" and rows[3]["delta_acc1"] == ""
    with open(report["trials_csv"], newline="", encoding="utf-8") as fh:
        trials = list(csv.DictReader(fh))
    assert len(trials) == 15 and trials[3]["state"] == "FAIL" and trials[3]["reason"] == "CUDA out of memory"
    data = json.loads(Path(report["json"]).read_text(encoding="utf-8"))
    assert data["counts"]["retried"] == 1 and data["sweep"] == SWEEP
    assert data["meta"]["storage"] == "postgresql://bench:***@db.example/optuna"
    assert data["groups"][0]["acc1_best_std"] == pytest.approx(math.sqrt(7.0))


def test_markdown_header_tables_and_no_secrets(report):
    md = report["markdown"]
    assert md.startswith("# Leaderboard: pytest-study\n")
    assert "11 complete · 1 pruned · 1 failed (+1 retried) · 1 running" in md
    assert "`abc1234`" in md and "hunter2" not in md and "postgresql://bench:***@db.example/optuna" in md
    ranking = [ln for ln in md.splitlines() if ln.startswith("| 1 |") or ln.startswith("| 3 |")]
    assert "78.00 ± 2.65" in ranking[0] and "+7.00" in ranking[0]
    assert "74.50 ± 0.71" in ranking[1] and "+3.50" in ranking[1] and "0.81×" in ranking[1]
    assert "+10.00K" in ranking[1] and "0.80×" in ranking[1]
    assert "no such baseline" in md
    assert "| 13 | deit_tiny_ctx_product_50_shared_q | 0 | 3 | 45.25 | pruned at epoch 2 |" in md
    assert "CUDA out of memory" in md and "worker killed" not in md and "trial(s) 4" in md
    assert "| 4 | deit_tiny_ctx_product_50_shared_k\\<noabs\\> |" in md  # GitHub would drop a bare <noabs>
    assert "![accuracy_by_variant](accuracy_by_variant.png)" in md


def test_html_escapes_and_embeds_plots(report):
    page = Path(report["html"]).read_text(encoding="utf-8")
    assert "deit_tiny_ctx_product_50_shared_k&lt;noabs&gt;" in page and "<noabs>" not in page
    assert page.count('src="data:image/png;base64,') == len(PLOTS) and "hunter2" not in page
    assert "<td>74.50 ± 0.71</td>" in page


def test_plots_are_real_pngs(report):
    for name in PLOTS:
        data = Path(report[name]).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 10_000, name


def test_plots_skip_with_a_reason(tmp_path):
    study = optuna.create_study(direction="maximize", study_name="tiny")
    _add(study, "deit_tiny_norpe", _config(0), value=70.0, train=1.0, infer=2.0)
    assert optimization_history(study, tmp_path / "h.png") == (None, "needs at least 2 complete trials, has 1")
    _add(study, "deit_tiny_norpe", _config(0), value=71.0, train=1.0, infer=2.0)  # same params again
    path, reason = param_importances(study, tmp_path / "i.png")
    assert path is None and "two or more varied parameters, has none" in reason and not (tmp_path / "i.png").exists()
    _add(study, "deit_tiny_ctx_product_50_shared_k", _config(0, "product"), value=72.0, train=1.0, infer=2.0)
    path, reason = param_importances(study, tmp_path / "i.png")  # one varied parameter: importance is 1.0
    assert path is None and "has ['model.rpe.method']" in reason
    board = collect(study)
    plots = make_plots(study, board, tmp_path)
    assert plots["accuracy_by_variant"].path is not None and plots["optimization_history"].path is not None
    page = to_html(board, None, plots)
    assert "param_importances: not drawn (needs two or more varied parameters" in page


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
