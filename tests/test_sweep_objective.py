"""The trial record the leaderboard reads (user attributes: test metrics at the epoch chosen on validation, the
device, the selection rule) and the search space's null choices, on a real SQLite study with real tiny trials."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from irpe_bench.sweep import load_sweep
from irpe_bench.sweep import space as S

from ._train_helpers import tiny_dict, write_yaml


def _write_sweep(tmp_path: Path, space, base_sections=None) -> Path:
    write_yaml(tmp_path / "base.yaml", tiny_dict(tmp_path, **(base_sections or {})))
    data = {"study": {"name": "s", "sampler": "grid", "pruner": "none"}, "base": "base.yaml", "space": space,
            "out_dir": str(tmp_path / "out")}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_null_choice_is_a_real_none_and_only_method_none_is_the_baseline(tmp_path):
    spec = S.ParamSpec(choices=(None, 1.0))
    assert spec.encoded_choices() == (None, 1.0)
    sweep = load_sweep(_write_sweep(tmp_path, {"optim.clip_grad": {"choices": [None, 1.0]},
                                               "model.rpe.method": {"choices": ["none", "product"]}}))
    points = list(S.points(sweep.config.space, sweep.base_flat))
    assert {"model.rpe.method": "product", "optim.clip_grad": None} in points and len(points) == 4
    clip = {p["optim.clip_grad"] for p in points}
    assert clip == {None, 1.0}
    configs = [sweep.trial_config(p) for p in points]
    assert sorted((c.model.rpe is None, c.optim.clip_grad is None) for c in configs) == \
        [(False, False), (False, True), (True, False), (True, True)]
    # a real storage round trip: the sampled value is None, not the string 'none'
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = set()
    for _ in range(12):
        trial = study.ask()
        drawn.add(S.suggest(trial, sweep.config.space, sweep.base_flat)["optim.clip_grad"])
        study.tell(trial, 0.0)
    assert drawn == {None, 1.0}
    assert {t.params["optim.clip_grad"] for t in study.trials} == {None, 1.0}
    with pytest.raises(ValueError, match="model.rpe.method=None: not a mapping method; the no-RPE baseline is the "
                                         "choice 'none'"):
        S.to_overrides({"model.rpe.method": None}, {"method": "product"})


@pytest.mark.slow
def test_trials_record_test_metrics_at_the_epoch_chosen_on_validation(tmp_path):
    from irpe_bench.cli import main

    path = _write_sweep(tmp_path, {"model.rpe.method": {"choices": ["none", "product"]},
                                   "optim.clip_grad": {"choices": [None]}})
    assert main(["sweep", str(path), "--no-leaderboard"]) == 0
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/out/optuna.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for t in study.trials:
        a = t.user_attrs
        summary = json.loads((Path(a["run_dir"]) / "summary.json").read_text())
        assert t.value == a["val/acc1_best"] == summary["val/acc1_best"]  # the objective reads validation
        for k in ("test/acc1", "test/acc5", "test/loss", "test/epoch", "selection", "val/acc1",
                  "throughput/device", "throughput/train_img_s_epochs"):
            assert a[k] == summary[k], k
        assert 0 <= a["test/acc1"] <= a["test/acc5"] <= 100 and a["selection"] == "best_val"
        assert a["test/epoch"] in (1, 2) and a["epochs"] == 2
        assert a["throughput/device"].startswith("cpu: ") and "cores" in a["throughput/device"]
        assert len(a["throughput/train_img_s_epochs"]) == 2
        assert a["config"]["optim.clip_grad"] is None and t.params["optim.clip_grad"] is None
        # the pruner saw validation only: one val/acc1 per epoch, none of them a test value
        reported = list(t.intermediate_values.values())
        assert len(reported) == 2 and max(reported) == pytest.approx(a["val/acc1_best"])


def test_a_sweep_without_a_validation_split_is_refused_before_any_work(tmp_path, capsys):
    from irpe_bench.cli import main

    path = _write_sweep(tmp_path, {"model.rpe.method": {"choices": ["product"]}},
                        base_sections={"data": {"val_fraction": 0}})
    assert main(["sweep", str(path), "--no-leaderboard"]) == 2
    err = capsys.readouterr().err
    assert "data.val_fraction=0: a sweep chooses on validation and never on test" in err
    assert not (tmp_path / "out").exists()  # no storage, no run directory: nothing started
