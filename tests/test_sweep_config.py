"""Sweep files: every bad input fails before any work with the field, the value and what is allowed; the
conditional space never offers an illegal combination; grid points and overrides are what the file says."""
from __future__ import annotations

import uuid
from pathlib import Path

import optuna
import pytest
import yaml

from irpe_bench.sweep import build_sweep, load_sweep, redact
from irpe_bench.sweep import space as S
from irpe_bench.sweep.objective import config_key, variant_of
from irpe_bench.train.config import flatten

from ._train_helpers import tiny_dict, write_yaml


def _sweep(tmp_path, space, **top):  # noqa: D103
    base = write_yaml(tmp_path / "base.yaml", tiny_dict(tmp_path))
    data = {"study": {"name": "t", "sampler": "grid", "pruner": "none", **top.pop("study", {})},
            "base": base.name, "space": space, **top}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_sweeps_load():
    quick = load_sweep("sweeps/digits_quick.yaml")
    assert quick.config.study.sampler == "grid"
    assert [(p["model.rpe.method"], p["seed"]) for p in S.points(quick.config.space, quick.base_flat)] == \
        [(m, s) for m in ("none", "product") for s in (0, 1, 2, 3)]
    assert quick.base_config.trainer.max_epochs == 16  # overrides applied to configs/digits.yaml
    assert quick.base_config.model.abs_pos is False and quick.config.workers == 2
    methods = load_sweep("sweeps/digits_methods.yaml")
    assert sorted({p["model.rpe.method"] for p in S.points(methods.config.space, methods.base_flat)}) == \
        ["cross", "euclidean", "none", "product", "quant"]
    assert len({p["seed"] for p in S.points(methods.config.space, methods.base_flat)}) >= 5
    tpe = load_sweep("sweeps/digits_tpe.yaml")
    assert tpe.config.study.n_trials == 20 and tpe.config.study.repeats == 2 and "seed" not in tpe.config.space


NO_BASELINE = {"table2_shared_heads", "table3_index"}  # the paper's Tables 2 and 3 have no no-RPE row


@pytest.mark.parametrize("path", sorted(str(p) for p in Path("sweeps").rglob("*.yaml")))
def test_every_shipped_sweep_loads_and_its_paper_studies_pair_five_seeds(path):
    """Every sweep file passes all checks; the paper's ablations (sweeps/paper/) are grids with >= 5 seeds per
    cell, on the digits study recipe, and write under results/studies/; a no-RPE baseline wherever the paper's
    table has one (its Tables 2 and 3 compare iRPE cells only)."""
    sweep = load_sweep(path)
    if "/paper/" not in path or Path(path).stem.startswith("mnist_"):  # the mnist_* claims: the test below
        return
    pts = list(S.points(sweep.config.space, sweep.base_flat))
    cells = {}
    for p in pts:
        cells.setdefault(config_key(flatten(sweep.trial_config(p).model_dump(mode="json"))), set()).add(p["seed"])
    assert sweep.config.study.sampler == "grid" and min(len(s) for s in cells.values()) >= 5
    assert len({frozenset(s) for s in cells.values()}) == 1  # the same seeds in every cell: they pair
    has_baseline = any(sweep.trial_config(p).model.rpe is None for p in pts)  # method none: no RPE config
    assert has_baseline == (Path(path).stem not in NO_BASELINE)
    assert str(sweep.out_dir).startswith("results/studies/")
    assert sweep.base_config.trainer.max_epochs == 30


@pytest.mark.parametrize("space, study, message", [
    ({"model.rpe.methd": {"choices": ["product"]}}, {}, "space.model.rpe.methd: unknown field 'methd'"),
    ({"model.rpe.method": {"choices": ["product", "polar"]}}, {},
     "space.model.rpe.method='polar' gives no valid training config"),
    ({"model.rpe.method": {"choices": ["polar"]}}, {}, "unknown mapping 'polar'; choices:"),
    ({"model.rpe.ratio": {"low": 2.0, "high": 1.0}}, {"sampler": "tpe", "n_trials": 3}, "low=2 must be < high=1"),
    ({"model.rpe.ratio": {"low": 1.0, "high": 2.0}}, {}, "study.sampler='grid' needs choices for every field"),
    ({"model.rpe.ratio": {"low": 1.0, "high": 2.0}}, {"sampler": "tpe"}, "study.n_trials is required"),
    ({"model.rpe.layers": {"choices": ["all", [0, 7]]}}, {}, "index 7 is out of range for a model with depth=2"),
    ({"model.rpe.method": {"choices": ["product"], "low": 1}}, {}, "give either choices"),
    ({}, {}, "space: must search at least one field"),
    ({"model.rpe.method": {"choices": ["product"]}}, {"name": "a b"}, "study.name='a b'"),
    ({"model.rpe.method": {"choices": ["product"]}}, {"storage": "redis://u:secret@h/0"}, "study.storage="),
    ({"optim.lr": {"choices": [0.001, -1.0]}}, {}, "space.optim.lr=-1.0 gives no valid training config"),
])
def test_bad_sweeps_fail_before_work(tmp_path, space, study, message):
    with pytest.raises(ValueError, match=None) as e:
        load_sweep(_sweep(tmp_path, space, study=study))
    assert message in str(e.value)
    assert "secret" not in str(e.value)
    assert not (tmp_path / "results").exists()


def test_bias_on_v_is_never_valid_when_mode_is_fixed_bias(tmp_path):
    base = tiny_dict(tmp_path, model={"rpe": {"mode": "bias"}})
    write_yaml(tmp_path / "base.yaml", base)
    data = {"study": {"name": "t", "sampler": "grid"}, "base": "base.yaml",
            "space": {"model.rpe.on": {"choices": ["k", "qkv"]}}}
    # bias is fixed by the base config: the rule filters the choice out, so nothing can run it
    sweep = build_sweep(data, tmp_path / "s.yaml")
    assert [p.get("model.rpe.on") for p in S.points(sweep.config.space, sweep.base_flat)] == ["k"]


def test_rules_bias_has_its_own_attachment_parameter_and_none_skips_rpe():
    space = {"model.rpe.on": S.ParamSpec(choices=("k", "qkv")), "model.rpe.mode": S.ParamSpec(
        choices=("bias", "contextual")), "model.rpe.method": S.ParamSpec(choices=("none", "product"))}
    base = {"model.rpe.method": "product", "model.rpe.mode": "contextual"}
    pts = list(S.points(space, base))
    assert {"model.rpe.method": "none"} in pts and sum(p["model.rpe.method"] == "none" for p in pts) == 1
    assert not any(p.get("model.rpe.mode") == "bias" and "v" in p.get("model.rpe.on", "") for p in pts)
    assert len(pts) == 1 + 1 + 2  # none; bias×k; contextual×{k, qkv}
    assert S.optuna_params(space, {"model.rpe.method": "product", "model.rpe.mode": "bias",
                                   "model.rpe.on": "k"}, base) == \
        {"model.rpe.method": "product", "model.rpe.mode": "bias", "model.rpe.on@bias": "k"}

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(60):  # define-by-run: bias never draws v, whatever the sampler proposes
        t = study.ask()
        p = S.suggest(t, space, base)
        assert not (p.get("model.rpe.mode") == "bias" and "v" in p.get("model.rpe.on", ""))
        assert p["model.rpe.method"] != "none" or list(p) == ["model.rpe.method"]
        study.tell(t, 0.0)


def test_overrides_ratio_triple_layers_and_baseline(tmp_path):
    sweep = load_sweep(_sweep(tmp_path, {"model.rpe.alpha_beta_gamma": {"choices": ["2.5:5:20", "4:5:20"]},
                                         "model.rpe.layers": {"choices": ["all", [0]]}}))
    cfg = sweep.trial_config({"model.rpe.alpha_beta_gamma": "4:5:20", "model.rpe.layers": "0"})
    assert (cfg.model.rpe.alpha, cfg.model.rpe.beta, cfg.model.rpe.gamma, cfg.model.rpe.ratio) == (4, 5, 20, None)
    assert cfg.model.rpe.layers == (0,)
    assert sweep.trial_config({"model.rpe.ratio": 3.0}).model.rpe.gamma == 24.0
    assert sweep.trial_config({"model.rpe.method": "none"}).model.rpe is None
    assert variant_of(sweep.trial_config({"model.rpe.method": "none"})) == "deit_tiny_norpe"
    assert variant_of(cfg) == "deit_tiny_ctx_product_122_a4b5g20_shared_k_L0"
    with pytest.raises(ValueError, match="expected 'alpha:beta:gamma'"):
        S.parse_abg("1:2")


def test_config_key_ignores_seed_and_logging_only(tmp_path):
    sweep = load_sweep(_sweep(tmp_path, {"seed": {"choices": [0, 1]}}))
    a, b = (flatten(sweep.trial_config({"seed": s}, log={"group": f"g{s}"}).model_dump(mode="json")) for s in (0, 1))
    c = flatten(sweep.trial_config({"seed": 0, "model.rpe.mode": "bias"}).model_dump(mode="json"))
    assert config_key(a) == config_key(b) != config_key(c)


def test_storage_password_is_redacted(tmp_path, monkeypatch):
    assert redact("postgresql://bob:s3cret@db:5432/optuna") == "postgresql://bob:***@db:5432/optuna"
    assert redact("postgresql://bob@db/optuna") == "postgresql://bob@db/optuna"
    assert redact("postgresql://bob@db/optuna?password=abc&sslmode=require") == \
        "postgresql://bob@db/optuna?password=***&sslmode=require"
    monkeypatch.setenv("IRPE_BENCH_STORAGE", "postgresql://bob:s3cret@127.0.0.1:1/none")
    sweep = load_sweep(_sweep(tmp_path, {"seed": {"choices": [0]}}))
    assert sweep.storage_url.endswith(":1/none")
    from irpe_bench.sweep.storage import open_study

    with pytest.raises(ValueError) as e:  # nothing listens on port 1
        open_study(sweep, {})
    assert "bob:***@" in str(e.value) and "s3cret" not in str(e.value)


def test_a_changed_sweep_cannot_join_an_existing_study(tmp_path):
    """What must match (base config, overrides, sampler, pruner, searched fields) is refused with the
    difference named and a way out; a bigger budget or reordered choices are the same sweep."""
    from irpe_bench.sweep.storage import open_study

    path = _sweep(tmp_path, {"model.rpe.method": {"choices": ["none", "product"]}}, out_dir=str(tmp_path / "o"))
    sweep = load_sweep(path)
    study, created = open_study(sweep, {"fingerprint": sweep.fingerprint()})
    assert created and [t.system_attrs["fixed_params"] for t in study.trials] == [
        {"model.rpe.method": "none"}, {"model.rpe.method": "product"}]  # the grid, enqueued
    again = load_sweep(path, {"study": {"n_trials": 5}})  # a bigger budget is the same sweep
    assert again.fingerprint() == sweep.fingerprint()
    _, created = open_study(again, {"fingerprint": again.fingerprint()})
    assert not created and len(study.trials) == 2  # joined, nothing enqueued twice
    _, created = open_study(load_sweep(path, {"space": {"model.rpe.method": {"choices": ["product", "none"]}}}), {})
    assert not created and len(study.trials) == 2  # reordered choices: the same grid
    cases = [({"overrides": {"trainer": {"max_epochs": 3}}},
              ["overrides changed: {} -> {'trainer': {'max_epochs': 3}}", "trainer.max_epochs: 2 -> 3"]),
             ({"space": {"optim.lr": {"choices": [0.001, 0.002]}}},
              ["space.optim.lr is a new searched field: the study's trials never drew it"]),
             ({"study": {"pruner": "median"}}, ["study.pruner/pruner_warmup_epochs changed: ['none', 2] -> "
                                                "['median', 2]"]),
             ({"study": {"sampler": "random", "n_trials": 2}}, ["study.sampler/seed changed: ['grid', 0]"])]
    for change, messages in cases:
        with pytest.raises(ValueError) as e:
            open_study(load_sweep(path, change), {})
        text = str(e.value)
        assert "study 't' in sqlite:///" in text and "was created from a different sweep" in text, text
        assert all(m in text for m in messages), text
        assert "--set study.name=NEW" in text
    data = {**yaml.safe_load(path.read_text()), "space": {"seed": {"choices": [0]}}}
    with pytest.raises(ValueError, match="space.model.rpe.method is no longer searched"):
        open_study(build_sweep(data, path), {})
    # the base file itself changed (not the overrides): the resolved difference is named
    write_yaml(tmp_path / "base.yaml", tiny_dict(tmp_path, optim={"lr": 0.01}))
    with pytest.raises(ValueError, match=r"base 'base.yaml' \+ overrides\) differs: optim.lr: 0.002 -> 0.01"):
        open_study(load_sweep(path), {})
    assert len(study.trials) == 2  # no refusal touched the study


def test_a_tpe_study_refuses_new_choices(tmp_path):
    from irpe_bench.sweep.storage import open_study

    path = _sweep(tmp_path, {"seed": {"choices": [0, 1]}}, study={"sampler": "tpe", "n_trials": 2},
                  out_dir=str(tmp_path / "o"))
    open_study(load_sweep(path), {})
    with pytest.raises(ValueError, match=r"space.seed choices changed: \[0, 1\] -> \[0, 1, 2\] \(only a grid"):
        open_study(load_sweep(path, {"space": {"seed": {"choices": [0, 1, 2]}}}), {})


def test_set_reaches_dotted_space_keys():
    from irpe_bench.overrides import parse_overrides

    sweep = load_sweep("sweeps/digits_quick.yaml",
                       parse_overrides(["space.model.rpe.method.choices=[none,cross]", "study.name=other"]))
    assert sweep.config.space["model.rpe.method"].choices == ("none", "cross")
    assert sweep.config.study.name == "other" and str(sweep.out_dir) == "results/sweeps/other"
    with pytest.raises(ValueError, match=r"--set space.model.rpe.method.chices: expected space.<field>.<choices"):
        load_sweep("sweeps/digits_quick.yaml", parse_overrides(["space.model.rpe.method.chices=[none]"]))


def test_worker_gpus_come_from_the_visible_list_and_groups_can_be_shared():
    """Worker i gets GPU group i // workers_per_device, taken from the parent's CUDA_VISIBLE_DEVICES (never
    from physical indices); on CPU, a share of the cores instead."""
    from irpe_bench.sweep.runner import gpus_needed, visible_gpus, worker_env

    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "4, 5,GPU-ab12,7"}) == ["4", "5", "GPU-ab12", "7"]
    gpus = ["4", "5", "6", "7"]
    one_each = [worker_env(i, 4, 1, 1, gpus, env={})["CUDA_VISIBLE_DEVICES"] for i in range(4)]
    assert one_each == ["4", "5", "6", "7"]
    pairs = [worker_env(i, 2, 2, 1, gpus, env={})["CUDA_VISIBLE_DEVICES"] for i in range(2)]
    assert pairs == ["4,5", "6,7"]
    shared = [worker_env(i, 4, 1, 2, gpus, env={})["CUDA_VISIBLE_DEVICES"] for i in range(4)]
    assert shared == ["4", "4", "5", "5"]
    cpu = worker_env(0, 2, 1, 1, None, env={"KEEP": "1"})
    assert "CUDA_VISIBLE_DEVICES" not in cpu and cpu["KEEP"] == "1" and int(cpu["OMP_NUM_THREADS"]) >= 1
    assert gpus_needed(4, 1, 2) == 2 and gpus_needed(3, 2, 2) == 4 and gpus_needed(1, 1, 4) == 1



@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_launched_workers_draw_different_start_up_points(tmp_path, monkeypatch, sampler):
    """Each launched worker gets its index in IRPE_BENCH_WORKER and samples with study.seed + index: workers seeded
    alike would draw the same start-up points and train the same configuration twice; the same index draws
    the same points again (a study stays reproducible)."""
    from irpe_bench.sweep.runner import worker_env
    from irpe_bench.sweep.storage import WORKER_ENV, make_sampler

    sweep = load_sweep(_sweep(tmp_path, {"model.rpe.ratio": {"low": 0.5, "high": 4.0},
                                         "optim.lr": {"low": 1e-4, "high": 1e-2}},
                              study={"name": "w", "sampler": sampler, "pruner": "none", "n_trials": 4}))
    assert [worker_env(i, 2, 1, 1, None, env={})[WORKER_ENV] for i in range(2)] == ["0", "1"]

    def first_point(index):
        monkeypatch.setenv(WORKER_ENV, str(index))
        study = optuna.create_study(sampler=make_sampler(sweep))
        t = study.ask()
        return (t.suggest_float("ratio", 0.5, 4.0), t.suggest_float("lr", 1e-4, 1e-2))

    assert first_point(0) != first_point(1) and first_point(1) == first_point(1)

def _sample_all(sweep, study):
    """Run every queued trial with the sweep's real sampling (``space.suggest`` with the study's pinned choice
    lists, as the objective does) and no training: the trial's value is its number of parameters."""
    from irpe_bench.sweep.budget import budget
    from irpe_bench.sweep.extend import pinned_sweep

    s = pinned_sweep(sweep, study)
    while budget(study)["waiting"]:
        study.optimize(lambda t: float(len(S.suggest(t, s.config.space, s.base_flat))), n_trials=1)


def _frozen(trials):
    return [(t.number, t.state, t.value, t.params, t.user_attrs, t.datetime_complete) for t in trials]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def test_a_grid_study_grows_by_new_choices_and_keeps_removed_ones(tmp_path, backend, request):
    """New choices (here one inserted first, which also grows the bias-only ``model.rpe.on@bias``) join the
    study: only the new points are queued, the old trials keep their values, and Optuna accepts the extended
    choice lists; a removed choice queues nothing and deletes nothing, and the budget counts its trial."""
    from irpe_bench.sweep.budget import target_trials
    from irpe_bench.sweep.extend import CHOICES_ATTR
    from irpe_bench.sweep.storage import open_study

    name = f"pytest-{uuid.uuid4().hex[:8]}" if backend == "postgresql" else "t"
    storage = request.getfixturevalue("postgresql_url") if backend == "postgresql" else None
    space = {"model.rpe.mode": {"choices": ["bias", "contextual"]}, "model.rpe.on": {"choices": ["k", "qkv"]}}
    path = _sweep(tmp_path, space, study={"name": name, "storage": storage}, out_dir=str(tmp_path / "o"))
    sweep = load_sweep(path)
    study, _ = open_study(sweep, {"sweep_file": "old.yaml"})
    try:
        _sample_all(sweep, study)
        old = _frozen(study.get_trials())
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
        grown = load_sweep(path, {"space": {"model.rpe.on": {"choices": ["q", "k", "qkv"]}}})
        study, created = open_study(grown, {"sweep_file": "new.yaml"})
        assert not created and target_trials(grown, study) == 5
        assert [t.system_attrs["fixed_params"] for t in study.trials[3:]] == [
            {"model.rpe.mode": "bias", "model.rpe.on@bias": "q"}, {"model.rpe.mode": "contextual",
                                                                   "model.rpe.on": "q"}]
        _sample_all(grown, study)
        trials = study.get_trials()
        assert _frozen(trials[:3]) == old  # untouched: values, params, attributes
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 5
        assert trials[3].params == {"model.rpe.mode": "bias", "model.rpe.on@bias": "q"}
        assert trials[4].distributions["model.rpe.on"].choices == ("k", "qkv", "q")  # appended, old indices kept
        assert trials[0].distributions["model.rpe.on@bias"].choices == ("k", "q")  # rewritten to the same list
        attrs = study.user_attrs
        assert attrs[CHOICES_ATTR]["model.rpe.on"] == ["k", "qkv", "q"]
        assert attrs["sweep"]["sweep_file"] == "new.yaml" and attrs["sweep"]["space"]["model.rpe.on"] == [
            "q", "k", "qkv"]
        assert len(attrs["sweep"]["extended"]) == 1 and "+2 grid point(s), new choices {'model.rpe.on': ['q']}" \
            in attrs["sweep"]["extended"][0]
        again, _ = open_study(grown, {})  # nothing new: nothing queued, nothing logged
        assert len(again.trials) == 5 and len(again.user_attrs["sweep"]["extended"]) == 1

        smaller = load_sweep(path, {"space": {"model.rpe.on": {"choices": ["q", "k"]}}})
        study, _ = open_study(smaller, {})
        assert len(study.trials) == 5 and target_trials(smaller, study) == 5  # 4 points + the kept qkv trial
        assert "choices no longer in the file (trials kept) {'model.rpe.on': ['qkv']}" in \
            study.user_attrs["sweep"]["extended"][-1]
        assert study.user_attrs[CHOICES_ATTR]["model.rpe.on"] == ["k", "qkv", "q"]
    finally:
        if backend == "postgresql":
            optuna.delete_study(study_name=name, storage=storage.replace("postgresql://", "postgresql+psycopg://"))


def test_a_journal_study_refuses_new_choices_with_a_way_out(tmp_path):
    """A journal file cannot rewrite the stored choice lists: extending is refused before anything is queued."""
    from irpe_bench.sweep.storage import open_study

    path = _sweep(tmp_path, {"seed": {"choices": [0, 1]}}, study={"storage": f"journal://{tmp_path}/j.log"},
                  out_dir=str(tmp_path / "o"))
    sweep = load_sweep(path)
    study, _ = open_study(sweep, {})
    _sample_all(sweep, study)
    with pytest.raises(ValueError, match=r"new choices for \['seed'\] need the stored choice lists rewritten, "
                                         r"which a JournalStorage cannot do; run the extended grid under a new"):
        open_study(load_sweep(path, {"space": {"seed": {"choices": [0, 1, 2]}}}), {})
    assert len(study.trials) == 2


def test_a_study_made_before_identities_were_stored_is_joined_and_extended(tmp_path):
    """Older studies carry only ``sweep.fingerprint`` (base + space + sampler + pruner) and ``sweep.space``:
    the same file joins and grows; a changed base is still refused."""
    from irpe_bench.sweep.extend import CHOICES_ATTR, IDENTITY_ATTR
    from irpe_bench.sweep.storage import open_study

    path = _sweep(tmp_path, {"seed": {"choices": [0, 1]}}, out_dir=str(tmp_path / "o"))
    sweep = load_sweep(path)
    (tmp_path / "o").mkdir()
    old = optuna.create_study(study_name="t", storage=sweep.storage_url, direction="maximize")
    space = S.describe(sweep.config.space)
    old.set_user_attr("sweep", {"name": "t", "space": space, "fingerprint": sweep.legacy_fingerprint(space)})
    for seed in (0, 1):
        old.enqueue_trial({"seed": seed})
    old.set_user_attr("grid_enqueued", True)
    _sample_all(sweep, old)
    with pytest.raises(ValueError, match="the base config, overrides, space, sampler or pruner differ"):
        open_study(load_sweep(path, {"overrides": {"trainer": {"max_epochs": 3}}}), {})
    grown = load_sweep(path, {"space": {"seed": {"choices": [0, 1, 2]}}})
    study, created = open_study(grown, {})
    assert not created and study.user_attrs[IDENTITY_ATTR]["sampler"] == ["grid", 0]
    assert study.user_attrs[CHOICES_ATTR] == {"seed": [0, 1, 2]}
    _sample_all(grown, study)
    assert [t.params["seed"] for t in study.trials] == [0, 1, 2]


def test_a_given_field_follows_its_driver_and_is_never_sampled(tmp_path):
    """``model.rpe.ratio: {given: model.rpe.method, values: {...}}`` sets a per-mapping ratio (the paper's
    Table 1 bucket choices) without multiplying the grid or becoming an Optuna parameter."""
    ratios = {"euclidean": 10.8, "cross": 3.5, "product": 1.02}
    space = {"model.rpe.method": {"choices": ["none", "euclidean", "cross", "product"]},
             "model.rpe.ratio": {"given": "model.rpe.method", "values": ratios},
             "seed": {"choices": [0, 1]}}
    sweep = load_sweep(_sweep(tmp_path, space))
    pts = list(S.points(sweep.config.space, sweep.base_flat))
    assert len(pts) == 4 * 2
    for p in pts:
        assert p.get("model.rpe.ratio") == ratios.get(p["model.rpe.method"])
        params = S.optuna_params(sweep.config.space, p, sweep.base_flat)
        assert "model.rpe.ratio" not in params
        config = sweep.trial_config(p)
        assert (config.model.rpe is None) if p["model.rpe.method"] == "none" else \
            (config.model.rpe.ratio == ratios[p["model.rpe.method"]])
    # real sampling from a real storage: the enqueued grid point, the ratio derived, no parameter stored for it
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'o.db'}", study_name="given")
    study.enqueue_trial(S.optuna_params(sweep.config.space, pts[3], sweep.base_flat))
    trial = study.ask()
    drawn = S.suggest(trial, sweep.config.space, sweep.base_flat)
    assert drawn == pts[3] and set(study.trials[0].params) == {"model.rpe.method", "seed"}
    assert sweep.identity()["fields"]["model.rpe.ratio"] == {"given": "model.rpe.method", "values": ratios}


@pytest.mark.parametrize("spec, message", [
    ({"given": "model.rpe.mode", "values": {"bias": 1.0}}, "must name a searched field with choices"),
    ({"given": "model.rpe.method", "values": {"cross": 3.5}}, "missing: ['product']"),
    ({"given": "model.rpe.method", "values": {"cross": 3.5, "product": 1.9, "polar": 2}}, "unknown: ['polar']"),
    ({"given": "model.rpe.method"}, "needs given: <searched field> and values"),
    ({"given": "model.rpe.method", "values": {"cross": 3.5, "product": 1.9}, "choices": [1.9]},
     "neither choices nor low/high"),
])
def test_a_bad_given_field_is_refused_before_any_work(tmp_path, spec, message):
    space = {"model.rpe.method": {"choices": ["none", "cross", "product"]}, "model.rpe.ratio": spec}
    with pytest.raises(ValueError) as e:
        load_sweep(_sweep(tmp_path, space))
    assert message in str(e.value) and "model.rpe.ratio" in str(e.value)
    assert not (tmp_path / "results").exists()


def test_the_pre_registered_claims_studies_share_one_bonferroni_family():
    """sweeps/paper/mnist_*.yaml (docs/paper_claims.md): seeds until decided from 10 to 40 by 10 with a ±1 margin,
    every row compared with a named reference that is one of its rows, on the embedded MNIST benchmark; the
    studies' alphas split 0.05 so that every compared row runs at 0.05/11 (Bonferroni over all of them)."""
    from irpe_bench.sweep.decided import _rows

    total, rows = 0.0, 0
    for path in sorted(Path("sweeps/paper").glob("mnist_*.yaml")):
        sweep = load_sweep(path)
        st = sweep.config.study
        assert st.seeds is not None and (st.seeds.min, st.seeds.step, st.seeds.max, st.seeds.margin) == (
            10, 10, 40, 1.0), path
        assert sweep.base_config.data.name == "mnist" and str(sweep.out_dir) == f"results/studies/paper_{path.stem}"
        is_base = _rows(sweep)  # refuses a reference that is no row
        compared = sum(1 for b in is_base.values() if not b)
        assert st.seeds.alpha / compared == pytest.approx(0.05 / 11, rel=1e-9), path
        total, rows = total + st.seeds.alpha, rows + compared
    assert rows == 11 and total == pytest.approx(0.05, rel=1e-9)


@pytest.mark.parametrize("path", sorted(str(p) for p in Path("sweeps/paper").glob("*.yaml")
                                        if not p.stem.startswith("mnist_")))  # those: the test above
def test_paper_sweeps_document_the_papers_own_imagenet_setting(path):
    """The ImageNet line in each paper sweep's header, applied as written, gives the paper's DeiT-S setting: its
    ImageNet recipe, absolute positions on (searched in Table 4) and no gradient clipping; Table 1's line also sets
    the paper's 14×14 bucket ratios."""
    import shlex

    from irpe_bench.overrides import parse_overrides

    text = Path(path).read_text(encoding="utf-8")
    sets = [a for line in text.splitlines() if line.startswith("#") and "imagenet_deit_small.yaml" in line
            for a in shlex.split(line.lstrip("#").replace("…", "").replace("\\", "")) if "=" in a]
    sets += [a for line in text.splitlines() if line.startswith("#") and "ratio.values=" in line
             for a in shlex.split(line[line.index("space."):])]
    sweep = load_sweep(path, parse_overrides(sets))
    configs = [sweep.trial_config(p) for p in S.points(sweep.config.space, sweep.base_flat)]
    assert {c.data.name for c in configs} == {"imagefolder"} and {c.model.name for c in configs} == {
        "deit_small_patch16_224"}
    assert all(c.optim.clip_grad is None and c.trainer.max_epochs == 300 for c in configs)
    assert {c.model.abs_pos for c in configs} == ({True, False} if "abs_pos" in str(sweep.config.space) else {True})
    if "table1" in path:
        assert {c.model.rpe.method: c.model.rpe.ratio for c in configs if c.model.rpe} == {
            "euclidean": 20, "quant": 33, "cross": 6.5, "product": 1.9}


ARMS = {"none": {"model": {"abs_pos": False, "rpe": None}}, "absolute": {"model": {"rpe": None}},
        "irpe_qkv": {"model": {"rpe": {"on": "qkv"}}},
        "rope": {"model": {"abs_pos": False, "rpe": None, "pos": {"family": "rope_axial"}}}}


def test_arms_are_named_rows_of_the_grid(tmp_path):
    sweep = load_sweep(_sweep(tmp_path, {"arm": {"choices": list(ARMS)}, "seed": {"choices": [0, 1]}}, arms=ARMS))
    points = list(S.points(sweep.config.space, sweep.base_flat))
    assert len(points) == 8
    slugs = {p["arm"]: variant_of(sweep.trial_config(p)) for p in points}
    assert slugs == {"none": "deit_tiny_norpe_noabs", "absolute": "deit_tiny_norpe",
                     "irpe_qkv": "deit_tiny_ctx_product_50_shared_qkv", "rope": "deit_tiny_rope_axial_noabs"}
    other = load_sweep(_sweep(tmp_path, {"arm": {"choices": list(ARMS)}, "seed": {"choices": [0, 1]}},
                              arms={**ARMS, "rope": {"model": {"rpe": None, "pos": {"family": "rope_mixed"}}}}))
    assert other.fingerprint() != sweep.fingerprint()  # what an arm trains is part of the study's identity


@pytest.mark.parametrize("space, arms, message", [
    ({"arm": {"choices": ["none", "ghost"]}}, ARMS, "space.arm.choices: 'ghost' is no arm of this sweep"),
    ({"seed": {"choices": [0]}}, ARMS, "are defined but not searched; add space.arm"),
    ({"arm": {"choices": ["none"]}, "model.abs_pos": {"choices": [True, False]}}, ARMS,
     "arms.none sets model.abs_pos, which space.model.abs_pos also searches"),
    ({"arm": {"choices": ["irpe_qkv"]}, "model.rpe.on": {"choices": ["k", "q"]}}, {"irpe_qkv": ARMS["irpe_qkv"]},
     "arms.irpe_qkv sets model.rpe.on, which space.model.rpe.on also searches"),
])
def test_bad_arms_are_refused_with_the_field(tmp_path, space, arms, message):
    with pytest.raises(ValueError) as e:
        load_sweep(_sweep(tmp_path, space, arms=arms))
    assert message in str(e.value)
