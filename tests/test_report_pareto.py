"""The leaderboard of a multi-objective, constrained study and of one with repeated seeds, from real SQLite
Optuna studies filled the way the sweep's objective fills them (``/work`` contract: study attributes
``objectives`` / ``constraints`` / ``repeats``; trial attributes ``feasible``, ``constraints``, ``repeats``).

The multi-objective scenario, by hand (accuracy = the headline test acc1 group mean, params per configuration,
constraint ``params <= 5030000``):

=====  ===========  =========  =======  =============================================
group  test acc1    mean       params   on the front?
=====  ===========  =========  =======  =============================================
A      70 71 72     71         5.000M   yes (fewest params)
B      74 75 76     75         5.010M   yes
C      72 73 74     73         5.005M   yes (better than A, fewer params than B)
D      72 73 74     73         5.020M   no: B is better in both (validation alone would put D on top: 80 %)
E      77 78 79     78         5.050M   no: infeasible (without the constraint it would be on the front)
=====  ===========  =========  =======  =============================================
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState
from scipy import stats

from irpe_bench.report import collect, recompute, write_report
from irpe_bench.report.plots import make_plots
from irpe_bench.report.stats import pareto_front

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BOUND = 5_030_000
CONSTRAINT = f"params <= {BOUND}"
OBJECTIVES = [{"metric": "val_acc1", "attr": "val/acc1_best", "key": "acc1_best", "direction": "maximize"},
              {"metric": "params", "attr": "params", "key": "params", "direction": "minimize"}]
DISTS = {"model.rpe.method": CategoricalDistribution(["none", "product", "cross", "euclidean", "quant"]),
         "model.rpe.mode": CategoricalDistribution(["bias", "contextual"]), "seed": IntDistribution(0, 9)}
# variant → (method, mode, test acc1 per seed 0..2, val acc1 best, params)
GROUPS = {
    "A_norpe": (None, None, [70.0, 71.0, 72.0], 70.0, 5_000_000),
    "B_ctx_product": ("product", "contextual", [74.0, 75.0, 76.0], 74.0, 5_010_000),
    "C_bias_product": ("product", "bias", [72.0, 73.0, 74.0], 72.0, 5_005_000),
    "D_ctx_euclidean": ("euclidean", "contextual", [72.0, 73.0, 74.0], 80.0, 5_020_000),
    "E_ctx_cross": ("cross", "contextual", [77.0, 78.0, 79.0], 78.0, 5_050_000),
}
FRONT = {"A_norpe", "B_ctx_product", "C_bias_product"}


# ------------------------------------------------------------------------------------------------ the front
def test_pareto_front_by_hand():
    # (acc max, params min): (3, 5) is beaten by (4, 4) in both; (2, 1) and (4, 4) trade off; duplicates stay
    assert pareto_front([[4, 4], [3, 5], [2, 1], [4, 4]], ["maximize", "minimize"]) == [True, False, True, True]
    # at least as good everywhere and better in one dominates, also when equal in the other objective
    assert pareto_front([[1, 1], [1, 2]], ["minimize", "minimize"]) == [True, False]
    assert pareto_front([[1, 1], [1, 2]], ["maximize", "maximize"]) == [False, True]
    assert pareto_front([], ["maximize", "minimize"]) == []
    assert pareto_front([[5, 5, 5], [6, 5, 4], [5, 5, 6]], ["maximize"] * 3) == [False, True, True]
    with pytest.raises(ValueError, match="maximize' or 'minimize"):
        pareto_front([[1, 2]], ["max", "min"])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(0, 2)), min_size=1, max_size=9),
       st.lists(st.sampled_from(["maximize", "minimize"]), min_size=3, max_size=3))
def test_pareto_front_is_optunas(points, directions):
    """Optuna's own front (``best_trials`` of a multi-objective study) is the same set, duplicates included."""
    study = optuna.create_study(directions=directions)
    for p in points:
        study.add_trial(optuna.trial.create_trial(values=list(map(float, p))))
    ours = pareto_front(points, directions)
    assert {t.number for t in study.best_trials} == {i for i, on in enumerate(ours) if on}


# ------------------------------------------------------------------------------------------------ studies
def _config(seed, method, mode):
    cfg = {"model.name": "deit_tiny_patch16_224", "model.abs_pos": True, "data.name": "digits",
           "trainer.max_epochs": 5, "seed": seed}
    if method is None:
        cfg["model.rpe"] = None
    else:
        cfg.update({"model.rpe.method": method, "model.rpe.mode": mode, "model.rpe.on": "k",
                    "model.rpe.index": "piecewise", "model.rpe.alpha": 1.9, "model.rpe.beta": 3.8,
                    "model.rpe.gamma": 15.2, "model.rpe.shared_head": True, "model.rpe.layers": "all"})
    return cfg


def _metrics(test, val, params, train=1000.0):
    return {"val/acc1": (val - 1) / 100, "val/acc1_best": val / 100, "test/acc1": test / 100,
            "test/acc5": 0.99, "test/epoch": 5, "selection": "best_val", "params": params, "macs": 10 ** 9,
            "throughput/train_img_s": train, "throughput/device": "cpu", "throughput/precision": "32-true",
            "throughput/batch_size": 64, "epochs": 5, "wall_s": 10.0}


def _attrs(variant, config, **extra):
    key = hashlib.sha1(json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True).encode())
    return {"variant": variant, "config_key": key.hexdigest()[:12], "seed": config["seed"], "config": config,
            "baseline": config.get("model.rpe", 1) is None, "status": "finished", "error": None,
            "run_dir": f"runs/{variant}/{config['seed']}", **extra}


def _params(config):
    p = {"model.rpe.method": config.get("model.rpe.method") or "none", "seed": config["seed"]}
    if config.get("model.rpe.mode"):
        p["model.rpe.mode"] = config["model.rpe.mode"]
    return p, {k: DISTS[k] for k in p}


@pytest.fixture(scope="module")
def mo_study(tmp_path_factory):
    """Two objectives (val acc1 max, params min), one constraint; a pruned and a failed trial beside them."""
    url = f"sqlite:///{tmp_path_factory.mktemp('mo')}/s.db"
    study = optuna.create_study(storage=url, study_name="mo", directions=["maximize", "minimize"])
    study.set_user_attr("sweep", {"name": "mo", "sampler": "nsga2"})
    study.set_user_attr("objectives", OBJECTIVES)
    study.set_user_attr("constraints", [{"text": CONSTRAINT, "metric": "params", "attr": "params",
                                         "key": "params", "op": "<=", "bound": float(BOUND)}])
    study.set_user_attr("repeats", 1)
    for variant, (method, mode, tests, val, params) in GROUPS.items():
        for seed, test in enumerate(tests):
            cfg = _config(seed, method, mode)
            v = (params - BOUND) / BOUND
            p, d = _params(cfg)
            study.add_trial(optuna.trial.create_trial(
                values=[val / 100, params], params=p, distributions=d, constraints={CONSTRAINT: v},
                user_attrs=_attrs(variant, cfg, **_metrics(test, val, params),
                                  constraints={CONSTRAINT: v}, feasible=v <= 0)))
    cfg = _config(3, "quant", "contextual")
    p, d = _params(cfg)
    study.add_trial(optuna.trial.create_trial(state=TrialState.FAIL, params=p, distributions=d,
                                              user_attrs=_attrs("F_quant", cfg, status="failed", error="boom")))
    return optuna.load_study(study_name="mo", storage=url)


@pytest.fixture(scope="module")
def mo_report(mo_study, tmp_path_factory):
    return write_report(mo_study, tmp_path_factory.mktemp("mo_report"))


def _by_variant(groups):
    return {g["variant"] if isinstance(g, dict) else g.variant: g for g in groups}


def test_multi_objective_board(mo_study):
    board = collect(mo_study)
    assert board.direction == "maximize, minimize" and board.metric == "test_acc1"
    assert [o["key"] for o in board.objectives] == ["mean", "params"]
    groups = _by_variant(board.groups)
    assert {v for v, g in groups.items() if g.pareto} == FRONT
    assert groups["D_ctx_euclidean"].pareto is False  # dominated on test although best on validation
    assert groups["E_ctx_cross"].pareto is False and groups["E_ctx_cross"].feasible is False
    assert all(g.feasible for v, g in groups.items() if v != "E_ctx_cross")
    assert groups["B_ctx_product"].mean == pytest.approx(75.0) and groups["B_ctx_product"].n == 3
    # the trial value is the accuracy objective's (values[0]) in percent, not the params objective
    assert groups["D_ctx_euclidean"].acc1_best_mean == pytest.approx(80.0)
    assert {t.number for t in board.trials if t.feasible is False} == {12, 13, 14}
    assert board.trials[12].violated == f"{CONSTRAINT} (+0.4 %)"
    assert board.counts["failed"] == 1 and board.trials[-1].feasible is None


def test_multi_objective_files(mo_report):
    out = mo_report
    data = json.loads(Path(out["json"]).read_text(encoding="utf-8"))
    assert [(o["key"], o["direction"]) for o in data["objectives"]] == [("mean", "maximize"), ("params", "minimize")]
    assert data["constraints"] == [CONSTRAINT] and "repeats" not in data
    groups = _by_variant(data["groups"])
    assert {v for v, g in groups.items() if g["pareto"]} == FRONT
    assert groups["E_ctx_cross"]["feasible"] is False and groups["A_norpe"]["feasible"] is True

    with open(out["csv"], newline="", encoding="utf-8") as fh:
        rows = {r["variant"]: r for r in csv.DictReader(fh)}
    assert rows["C_bias_product"]["pareto"] == "True" and rows["D_ctx_euclidean"]["pareto"] == "False"
    assert rows["E_ctx_cross"]["feasible"] == "False"
    with open(out["trials_csv"], newline="", encoding="utf-8") as fh:
        trials = list(csv.DictReader(fh))
    assert [r["feasible"] for r in trials] == ["True"] * 12 + ["False"] * 3 + [""]
    assert trials[12]["violated"] == f"{CONSTRAINT} (+0.4 %)"

    md = out["markdown"]
    head = next(line for line in md.splitlines() if line.startswith("| band"))
    assert head.startswith("| band | variant | n | Pareto | feasible | test acc1 mean")
    row = next(line for line in md.splitlines() if line.startswith("| ") and "D_ctx_euclidean" in line)
    assert row.split(" | ")[3:5] == ["no", "yes"]
    assert "**objectives**: val_acc1 (maximize), params (minimize)" in md
    assert "headline test acc1, not the validation accuracy" in md
    assert "On the front: B_ctx_product, C_bias_product, A_norpe." in md
    assert "3 of 15 complete trials infeasible" in md
    assert "![pareto](pareto.png)" in md

    page = Path(out["html"]).read_text(encoding="utf-8")
    assert "<th>Pareto</th>" in page and "<h2>Infeasible</h2>" in page
    tex = Path(out["tex"]).read_text(encoding="utf-8")
    assert "& Pareto \\\\" in tex and "\\texttt{E\\_ctx\\_cross}$^\\dagger$" in tex
    assert "{llrllll}" in tex
    assert Path(out["pareto"]).read_bytes()[:8] == PNG_SIGNATURE


def test_infeasible_section_lists_each_trial_once(mo_report):
    md = mo_report["markdown"]
    section = md.split("## Infeasible")[1].split("## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| 1")]
    cell = CONSTRAINT.replace("<", "\\<")  # Markdown escapes what GitHub would read as a tag
    assert rows == [f"| {n} | E_ctx_cross | {n - 12} | {cell} (+0.4 %) |" for n in (12, 13, 14)]


def test_multi_objective_plots_say_why(mo_study, tmp_path):
    board = collect(mo_study)
    plots = make_plots(mo_study, board, tmp_path)
    assert plots["pareto"].path is not None
    assert "multi-objective" in plots["optimization_history"].reason
    assert "multi-objective" in plots["param_importances"].reason


# ------------------------------------------------------------------------------------------------ repeats
REP = {"base": (None, [70.0, 72.0, 71.0]), "ctx": ("product", [73.0, 76.0, 72.5])}


@pytest.fixture(scope="module")
def rep_study(tmp_path_factory):
    """``study.repeats: 3``: one trial per configuration, three seeds each, the trial attributes the means."""
    url = f"sqlite:///{tmp_path_factory.mktemp('rep')}/s.db"
    study = optuna.create_study(storage=url, study_name="rep", direction="maximize")
    study.set_user_attr("objectives", OBJECTIVES[:1])
    study.set_user_attr("constraints", [])
    study.set_user_attr("repeats", 3)
    for variant, (method, tests) in REP.items():
        cfg = _config(0, method, "contextual")
        entries = [{"seed": s, "status": "finished", "run_dir": f"runs/{variant}/seed-{s}", "wandb_id": f"w{s}",
                    **_metrics(t, t + 1, 5_000_000, train=900.0 + 10 * s)} for s, t in enumerate(tests)]
        mean = _metrics(sum(tests) / 3, sum(tests) / 3 + 1, 5_000_000)
        p, d = _params(cfg)
        study.add_trial(optuna.trial.create_trial(value=mean["val/acc1_best"], params=p, distributions=d,
                                                  user_attrs=_attrs(variant, cfg, **mean, repeats=entries)))
    return optuna.load_study(study_name="rep", storage=url)


def test_repeats_make_each_seed_a_sample(rep_study, tmp_path):
    out = write_report(rep_study, tmp_path)
    board = out["board"]
    assert board.repeats == 3 and board.objectives is None and board.constraints is None
    base, ctx = (_by_variant(board.groups)[v] for v in ("base", "ctx"))
    assert (ctx.n, ctx.seeds, ctx.trials) == (3, [0, 1, 2], [1])
    assert ctx.mean == pytest.approx(sum(REP["ctx"][1]) / 3)
    half = stats.t.ppf(0.975, 2) * stats.sem(REP["ctx"][1])
    assert ctx.ci95 == pytest.approx([ctx.mean - half, ctx.mean + half])
    assert ctx.test == "paired t" and ctx.n_pairs == 3
    assert ctx.p_value == pytest.approx(stats.ttest_rel(REP["ctx"][1], REP["base"][1]).pvalue)
    assert ctx.train_img_s == 910.0 and ctx.train_img_s_range == [900.0, 920.0]  # over the seeds' own runs
    assert ctx.run_dirs == [f"runs/ctx/seed-{s}" for s in range(3)]
    assert board.counts["total"] == 2 and board.counts["complete"] == 2  # trials, not seeds

    with open(out["trials_csv"], newline="", encoding="utf-8") as fh:
        trials = list(csv.DictReader(fh))
    assert [(r["number"], r["seed"], r["test_acc1"]) for r in trials] == [
        (str(n), str(s), repr(t)) for n, v in enumerate(REP) for s, t in enumerate(REP[v][1])]
    assert "feasible" not in trials[0] and "pareto" not in json.loads(Path(out["json"]).read_text())["groups"][0]
    # the written files alone give the same statistics (one trials.csv row per seed)
    again = recompute(out["trials_csv"], out["json"])
    assert again[ctx.config_key]["p_value"] == pytest.approx(ctx.p_value)
    assert again[ctx.config_key]["n"] == 3
    assert "**repeats**: 3 seeds per trial" in out["markdown"]


def test_an_old_study_has_none_of_it(tmp_path):
    """No objectives / constraints / repeats attributes: no new key, column or section (byte-identity of the
    committed leaderboards is tests/test_committed_results.py)."""
    study = optuna.create_study(direction="maximize", study_name="old")
    cfg = _config(0, None, None)
    p, d = _params(cfg)
    study.add_trial(optuna.trial.create_trial(value=0.7, params=p, distributions=d,
                                              user_attrs=_attrs("base", cfg, **_metrics(70.0, 70.0, 5_000_000))))
    out = write_report(study, tmp_path)
    data = json.loads(Path(out["json"]).read_text(encoding="utf-8"))
    assert not {"objectives", "constraints", "repeats"} & set(data)
    assert not {"pareto", "feasible"} & set(data["groups"][0]) and "feasible" not in data["trials"][0]
    assert "Pareto" not in out["markdown"] and "Infeasible" not in out["markdown"] and "pareto" not in out


def test_wandb_table_has_the_pareto_and_feasible_columns(mo_study, mo_report, tmp_path):
    from irpe_bench.report.wandb_table import COLUMNS, log_leaderboard

    log_leaderboard(mo_report["board"], {}, project="irpe_bench", save_dir=tmp_path)
    (table,) = tmp_path.rglob("leaderboard_*.table.json")  # the offline run's copy of the wandb.Table
    data = json.loads(table.read_text(encoding="utf-8"))
    assert data["columns"] == COLUMNS + ["pareto", "feasible"]
    rows = {r[COLUMNS.index("variant")]: r[-2:] for r in data["data"]}
    assert rows["D_ctx_euclidean"] == [False, True] and rows["E_ctx_cross"] == [False, False]
    assert rows["A_norpe"] == [True, True]
