"""End to end: a real tiny sweep with two objectives, a constraint and two seeds per point (NSGA-II, real SQLite,
real Lightning trainers), then its leaderboard. What the sampler drew is not fixed here, so every expectation is
recomputed from the stored trials: feasibility from the trials' own attributes, the front from the group means
with an independent dominance loop, one sample per seed."""
from __future__ import annotations

import csv
import json

import optuna
import pytest
import yaml

from ._train_helpers import tiny_dict, write_yaml

pytest.importorskip("irpe_bench.sweep.repeats", reason="the sweep side of issue 16 (study.objectives/repeats)")

FAST = {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "benchmark_batches": 1}
BOUND = 20000  # between the tiny model without RPE tables and with them


def _dominated(p, others):
    """(accuracy max, params min): another point at least as good in both and better in one."""
    return any(q[0] >= p[0] and q[1] <= p[1] and (q[0] > p[0] or q[1] < p[1]) for q in others)


@pytest.mark.slow
def test_a_multi_objective_constrained_repeated_sweep_reports_its_front(tmp_path):
    from irpe_bench.cli import main

    write_yaml(tmp_path / "base.yaml", tiny_dict(tmp_path, trainer=FAST))
    sweep = {"study": {"name": "s", "sampler": "nsga2", "pruner": "none", "n_trials": 3, "repeats": 2,
                       "objectives": ["val_acc1", "params"], "constraints": [f"params <= {BOUND}"]},
             "base": "base.yaml", "out_dir": str(tmp_path / "out"),
             "space": {"model.rpe.method": {"choices": ["none", "product"]},
                       "optim.lr": {"low": 1e-3, "high": 1e-2, "log": True}}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    assert main(["sweep", str(tmp_path / "sweep.yaml")]) == 0  # trains, then writes the leaderboard
    out = tmp_path / "out"
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{out}/optuna.db")
    trials = {t.number: t for t in study.trials}
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials.values())

    board = json.loads((out / "leaderboard.json").read_text(encoding="utf-8"))
    assert [(o["key"], o["direction"]) for o in board["objectives"]] == [("mean", "maximize"), ("params", "minimize")]
    assert board["constraints"] == [f"params <= {BOUND}"] and board["repeats"] == 2
    with open(out / "trials.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6  # one per seed
    for r in rows:
        t = trials[int(r["number"])]
        entry = next(e for e in t.user_attrs["repeats"] if e["seed"] == int(r["seed"]))
        assert float(r["test_acc1"]) == pytest.approx(entry["test/acc1"])  # the seed's own, not the mean
        assert r["feasible"] == str(t.user_attrs["feasible"])

    for g in board["groups"]:
        # each trial trained seeds 0 and 1; a configuration the sampler proposed twice is still n = 2 (one sample
        # per seed, the mean of its runs: stats.one_per_seed)
        assert g["n"] == 2 and g["seeds"] == [0, 1] and len(g["trials"]) >= 1
        assert g["feasible"] is all(trials[n].user_attrs["feasible"] for n in g["trials"])
        assert g["feasible"] is (g["params"] <= BOUND)
    ok = [(g["mean"], g["params"]) for g in board["groups"] if g["feasible"]]
    for g in board["groups"]:
        p = (g["mean"], g["params"])
        assert g["pareto"] is (g["feasible"] and not _dominated(p, ok)), g["variant"]
    assert any(g["pareto"] for g in board["groups"])

    md = (out / "leaderboard.md").read_text(encoding="utf-8")
    assert "| band | variant | n | Pareto | feasible |" in md and "**repeats**: 2 seeds per trial" in md
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
