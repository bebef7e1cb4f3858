"""Accuracy against cost: several objectives, constraints, the samplers of the registry and seeds under a sampler
(``study.repeats``). Bad values fail at load, before any storage or run, naming the field and the value; real
tiny studies (real SQLite, real Lightning trainers) record tuple values, feasibility and per-seed results."""
from __future__ import annotations

import json
import typing
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from irpe_bench.sweep import load_sweep
from irpe_bench.sweep.config import StudyConfig, digest, without_logging
from irpe_bench.sweep.objectives import METRICS, parse_constraint
from irpe_bench.sweep.samplers import SAMPLERS

from ._train_helpers import tiny_dict, write_yaml

FAST = {"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1, "benchmark_batches": 1}
LR = {"optim.lr": {"low": 1e-3, "high": 1e-2, "log": True}}
METHOD = {"model.rpe.method": {"choices": ["none", "product"]}}


def _sweep(tmp_path: Path, space, study=None, trainer=None, **top) -> Path:
    write_yaml(tmp_path / "base.yaml", tiny_dict(tmp_path, trainer={**FAST, **(trainer or {})}))
    data = {"study": {"name": "s", "sampler": "tpe", "pruner": "none", "n_trials": 2, **(study or {})},
            "base": "base.yaml", "space": space, "out_dir": str(tmp_path / "out"), **top}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(path: Path) -> optuna.Study:
    from irpe_bench.cli import main

    assert main(["sweep", str(path), "--no-leaderboard"]) == 0
    return optuna.load_study(study_name="s", storage=f"sqlite:///{path.parent}/out/optuna.db")


# ------------------------------------------------------------------------------------------------ at load
@pytest.mark.parametrize("space, study, top, message", [
    (LR, {"objectives": [{"metric": "val_acc"}]}, {}, "unknown metric 'val_acc'; choices: ['val_acc1'"),
    (LR, {"objectives": [{"metric": "test_acc1"}]}, {}, "the sampler must never see the test split"),
    (LR, {"objectives": [{"metric": "params", "direction": "smaller"}]}, {}, "study.objectives.0.direction"),
    (LR, {"objectives": ["val_acc1", "val_acc1"]}, {}, "['val_acc1'] listed more than once"),
    (LR, {"objectives": ["val_acc1", "params"], "pruner": "median"}, {},
     "study.pruner='median' with 2 objectives (['val_acc1', 'params']): Optuna prunes single-objective studies"),
    (LR, {"objectives": ["val_acc1", "params"], "sampler": "cmaes"}, {},
     "study.sampler='cmaes' optimises a single objective"),
    (LR, {"constraints": ["params < 150000"]}, {}, "study.constraints[0]='params < 150000': expected '<metric> <= "),
    (LR, {"constraints": ["params <= lots"]}, {}, "study.constraints[0]='params <= lots'"),
    (LR, {"constraints": ["flops <= 5"]}, {}, "study.constraints[0]='flops <= 5': unknown metric 'flops'"),
    (LR, {"constraints": ["val_acc1 >= 0.9"]}, {}, "val_acc1 is in percent, in (1, 100]"),
    (LR, {"constraints": ["params <= 1"], "sampler": "random"}, {},
     "study.constraints=['params <= 1'] with study.sampler='random', which does not use constraints; samplers "
     "that do: ['tpe', 'gp', 'nsga2']"),
    (METHOD, {"sampler": "cmaes"}, {}, "study.sampler='cmaes' needs at least one numeric range (low/high) drawn in "
                                       "every trial: the space has only choices"),
    ({**METHOD, "model.rpe.ratio": {"low": 1.0, "high": 2.0}}, {"sampler": "cmaes"}, {},
     "space.model.rpe.ratio is not drawn in every trial"),
    ({**LR, "seed": {"choices": [0, 1]}}, {"repeats": 2}, {}, "study.repeats=2 with seed in the space"),
    (METHOD, {"repeats": 2, "sampler": "grid", "n_trials": None}, {}, "study.repeats=2 with study.sampler='grid'"),
    (LR, {"repeats": 2}, {"devices_per_worker": 2}, "study.repeats=2 with devices_per_worker=2"),
    (LR, {"repeats": 0}, {}, "study.repeats: Input should be greater than or equal to 1"),
    (LR, {"sampler": "brute"}, {}, "study.sampler='brute' needs a finite space; space.optim.lr is a float range"),
    (METHOD, {"sampler": "brute", "n_trials": 3}, {}, "study.n_trials=3: sampler 'brute' has only 2 points"),
    (LR, {"sampler": "annealing"}, {}, "study.sampler: Input should be 'tpe', 'random', 'grid', 'gp', 'cmaes'"),
])
def test_bad_objectives_constraints_and_samplers_fail_at_load(tmp_path, space, study, top, message):
    with pytest.raises(ValueError) as e:
        load_sweep(_sweep(tmp_path, space, study, **top))
    assert message in str(e.value)
    assert not (tmp_path / "out").exists()  # before any storage or run


def test_inference_speed_needs_the_timing_after_training(tmp_path):
    with pytest.raises(ValueError, match=r"'infer_img_s' \(throughput/infer_img_s\) needs the inference timing"):
        load_sweep(_sweep(tmp_path, LR, {"constraints": ["infer_img_s >= 100"]}, trainer={"benchmark_batches": 0}))


def test_the_vocabulary_and_the_registry():
    assert set(typing.get_args(StudyConfig.model_fields["sampler"].annotation)) == set(SAMPLERS)
    assert {m: v.attr for m, v in METRICS.items()} == {
        "val_acc1": "val/acc1_best", "train_img_s": "throughput/train_img_s", "infer_img_s": "throughput/infer_img_s",
        "params": "params", "macs": "macs"}
    c = parse_constraint("  train_img_s>=500 ")
    assert (c.text, c.op, c.bound) == ("train_img_s >= 500", ">=", 500.0)
    assert c.violation(400) == pytest.approx(0.2) and c.violation(600) == pytest.approx(-0.2)
    p = parse_constraint("params <= 1.5e5")
    assert p.violation(150000) == 0 and p.violation(300000) == pytest.approx(1.0)


def test_objectives_default_keeps_a_studys_identity_and_changes_are_refused(tmp_path):
    """The default (best val acc1, maximised) is the identity older studies stored: same keys, same digest; a
    sweep with other objectives, constraints or repeats cannot join such a study."""
    from irpe_bench.sweep.extend import differences

    sweep = load_sweep(_sweep(tmp_path, LR))
    ident = sweep.identity()
    assert set(ident) == {"base", "base_file", "overrides", "sampler", "pruner", "fields"}
    assert sweep.fingerprint() == digest({"base": without_logging(sweep.base_flat), "sampler": ["tpe", 0],
                                          "pruner": ["none", 2], "fields": ident["fields"]}, 16)
    explicit = load_sweep(_sweep(tmp_path, LR, {"objectives": [{"metric": "val_acc1", "direction": "maximize"}]}))
    assert explicit.identity() == ident
    for change, word in (({"objectives": ["val_acc1", "params"]}, "study.objectives changed"),
                         ({"constraints": ["params <= 1"]}, "study.constraints changed"),
                         ({"repeats": 2}, "study.repeats changed: 1 -> 2")):
        other = load_sweep(_sweep(tmp_path, LR, change))
        diffs = differences(ident, other.identity(), sweep.choices(), other.choices())
        assert any(word in d for d in diffs), (change, diffs)
        assert other.fingerprint() != sweep.fingerprint()


# ------------------------------------------------------------------------------------------------ real studies
@pytest.mark.slow
def test_nsga2_two_objectives_with_a_constraint_that_splits_the_trials(tmp_path):
    """Tuple values in the listed order, the study's objectives and constraints attributes, and feasibility
    exactly where the constraint holds: the baseline (no RPE tables) has fewer parameters than product."""
    study = _run(_sweep(tmp_path, {**METHOD, **LR}, {"sampler": "nsga2", "n_trials": 3,
                                                      "objectives": ["val_acc1", "params"],
                                                      "constraints": ["params <= 20000"]}))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.user_attrs["objectives"] == [
        {"metric": "val_acc1", "attr": "val/acc1_best", "key": "acc1_best", "direction": "maximize"},
        {"metric": "params", "attr": "params", "key": "params", "direction": "minimize"}]
    assert study.user_attrs["constraints"] == [{"text": "params <= 20000", "metric": "params", "attr": "params",
                                                "key": "params", "op": "<=", "bound": 20000.0}]
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    feasible = set()
    for t in trials:
        a = t.user_attrs
        assert t.values == [pytest.approx(a["val/acc1_best"]), a["params"]]
        assert t.constraints == a["constraints"] == {"params <= 20000": pytest.approx((a["params"] - 20000) / 20000)}
        assert a["feasible"] is (a["params"] <= 20000) is (t.params["model.rpe.method"] == "none")
        assert t.intermediate_values == {}  # several objectives: nothing reported to a pruner
        feasible.add(a["feasible"])
    assert feasible == {True, False}  # the seeded sampler drew both methods: the threshold splits them


@pytest.mark.slow
def test_gp_with_a_constraint_no_trial_meets_marks_every_trial_infeasible(tmp_path):
    study = _run(_sweep(tmp_path, LR, {"sampler": "gp", "n_trials": 3, "constraints": ["params <= 1"]}))
    assert len(study.directions) == 1 and study.user_attrs["repeats"] == 1
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3  # 2 random, then the GP's
    for t in study.trials:
        assert t.value == t.user_attrs["val/acc1_best"]
        assert t.user_attrs["feasible"] is False and t.constraints["params <= 1"] == t.user_attrs["params"] - 1
    assert len({t.params["optim.lr"] for t in study.trials}) == 3


@pytest.mark.slow
def test_cmaes_with_two_seeds_per_point_reports_their_mean(tmp_path):
    """repeats: 2 trains seeds 0 and 1 of every point, each in its own run directory (its own W&B id), records
    both, and reports their mean to the sampler."""
    study = _run(_sweep(tmp_path, LR, {"sampler": "cmaes", "repeats": 2}))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for t in study.trials:
        a = t.user_attrs
        reps = a["repeats"]
        assert [r["seed"] for r in reps] == [0, 1] and [r["status"] for r in reps] == ["finished"] * 2
        assert [Path(r["run_dir"]) for r in reps] == [Path(a["run_dir"]) / "seed-0", Path(a["run_dir"]) / "seed-1"]
        for r in reps:
            summary = json.loads((Path(r["run_dir"]) / "summary.json").read_text())
            assert summary["val/acc1_best"] == r["val/acc1_best"] and summary["wandb_id"] == r["wandb_id"]
            assert yaml.safe_load((Path(r["run_dir"]) / "config.yaml").read_text())["seed"] == r["seed"]
        assert reps[0]["wandb_id"] != reps[1]["wandb_id"]
        mean = (reps[0]["val/acc1_best"] + reps[1]["val/acc1_best"]) / 2
        assert t.value == pytest.approx(mean) and a["val/acc1_best"] == pytest.approx(mean)
        assert a["params"] == reps[0]["params"] == reps[1]["params"] and isinstance(a["params"], int)
        assert a["seed"] == 0 and len(t.intermediate_values) == 1  # the pruner watched the first seed only


@pytest.mark.slow
def test_brute_force_runs_every_point_once(tmp_path):
    study = _run(_sweep(tmp_path, METHOD, {"sampler": "brute"}))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert sorted(t.params["model.rpe.method"] for t in study.trials) == ["none", "product"]


@pytest.mark.slow
def test_a_retried_trial_keeps_the_seeds_it_had_finished(tmp_path):
    """A trial killed during its second seed is retried (here: recovered as on a journal storage, by hand):
    the first seed's finished run is kept as it is, the second is trained again."""
    from irpe_bench.sweep.objective import Objective
    from irpe_bench.sweep.storage import fail_running, open_study

    sweep = load_sweep(_sweep(tmp_path, LR, {"repeats": 2, "n_trials": 1}))
    study, _ = open_study(sweep, {})
    study.optimize(Objective(sweep), n_trials=1)
    first = study.trials[0]
    seed0, seed1 = (Path(r["run_dir"]) for r in first.user_attrs["repeats"])
    kept = (seed0 / "summary.json").read_text()
    (seed1 / "summary.json").unlink()  # as if killed before seed 1 finished
    study.enqueue_trial(first.params)  # the killed trial: the same point, its run directory
    killed = study.ask()
    for k, v in first.user_attrs.items():
        study._storage.set_trial_user_attr(killed._trial_id, k, v)
    assert fail_running(study) == 1
    study.optimize(Objective(sweep), n_trials=1, catch=())
    retry = study.trials[-1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == killed.number
    assert (seed0 / "summary.json").read_text() == kept  # not trained again
    assert json.loads((seed1 / "summary.json").read_text())["status"] == "finished"
    assert [r["seed"] for r in retry.user_attrs["repeats"]] == [0, 1]
