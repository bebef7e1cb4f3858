"""Seeds until decided on real storages: tiny DeiTs on digits, real Lightning trainers, Optuna on SQLite (and
PostgreSQL), the looks recorded in the study and recomputed here with numpy from its trials.

The tiny recipe trains one epoch of two batches, so the iRPE row and the no-RPE baseline reach exactly the
same accuracies seed by seed (the tables start at zero and barely move; CPU training is deterministic): every
paired difference is 0. With an equivalence margin that comparison is decided at the first look (repeated CI
[0, 0] inside ±1) and the row stops; without one nothing can be decided (0 is inside the CI) and the row gets
the next seeds up to max. The tests check that premise first, so a recipe that starts to separate the rows
fails with a message instead of passing for the wrong reason.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from irpe_bench import keys as K
from irpe_bench.cli import main
from irpe_bench.report import sequential as Q
from irpe_bench.sweep.decided import ATTR, row_key

from ._processes import start
from ._train_helpers import tiny_dict, write_yaml

ROOT = Path(__file__).resolve().parents[1]
PRODUCT, NONE = row_key({"model.rpe.method": "product"}), row_key({"model.rpe.method": "none"})


def _sweep(tmp_path: Path, seeds: dict, workers: int = 1, **study) -> Path:
    write_yaml(tmp_path / "base.yaml", tiny_dict(tmp_path, trainer={
        "benchmark_batches": 0, "max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 1,
        "limit_test_batches": 1}))
    data = {"study": {"name": "s", "sampler": "grid", "pruner": "none", "seeds": seeds, **study}, "base": "base.yaml",
            "space": {"model.rpe.method": {"choices": ["none", "product"]}}, "out_dir": str(tmp_path / "out"),
            "workers": workers}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _seeds_of(study: optuna.Study, method: str) -> list:
    return sorted(t.params["seed"] for t in study.trials if t.state == TrialState.COMPLETE
                  and t.params["model.rpe.method"] == method)


def _values(study: optuna.Study, method: str) -> dict:
    return {t.params["seed"]: 100 * t.value for t in study.trials if t.state == TrialState.COMPLETE
            and t.params["model.rpe.method"] == method}


def _check_look(study: optuna.Study, look: dict, alpha: float, n_max: int) -> None:
    """The recorded look recomputed from the trials: numpy paired differences, the repeated CI's half-width."""
    prod, base = _values(study, "product"), _values(study, "none")
    common = [s for s in sorted(prod) if s in base and s < look["n_seeds"]]
    d = np.array([prod[s] - base[s] for s in common])
    assert np.all(d == 0), f"premise: the tiny recipe's rows differ now ({d}); the tests need identical rows"
    assert look["n_pairs"] == len(d) and look["delta"] == pytest.approx(d.mean())
    assert look["alpha"] == pytest.approx(alpha) and look["family"] == 1
    half = look["t_bound"] * d.std(ddof=1) / math.sqrt(len(d))
    assert look["ci"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert math.isfinite(look["t_bound"]) and look["fraction"] == pytest.approx(
        1.0 if look["n_seeds"] >= n_max else len(d) / n_max)


def _run_decided_row(tmp_path: Path, storage: str | None) -> optuna.Study:
    name = f"s-{uuid.uuid4().hex[:8]}"
    extra = {"storage": storage} if storage else {}
    # two workers take the looks and train the seeds at once (on SQLite and on PostgreSQL)
    path = _sweep(tmp_path, {"min": 2, "max": 6, "step": 2, "until": "decided", "margin": 1.0}, workers=2, name=name,
                  **extra)
    assert main(["sweep", str(path), "--no-leaderboard"]) == 0
    url = storage.replace("postgresql://", "postgresql+psycopg://") if storage else \
        f"sqlite:///{tmp_path}/out/optuna.db"
    study = optuna.load_study(study_name=name, storage=url)
    rec = study.user_attrs[ATTR]
    prod = rec["rows"][PRODUCT]
    assert prod["status"] == Q.EQUIVALENT and prod["allotted"] == 2 and len(prod["looks"]) == 1
    _check_look(study, prod["looks"][0], 0.05, 6)
    assert prod["looks"][0]["test"]["decision"] == Q.EQUIVALENT  # the test metric, recorded beside
    assert rec["rows"][NONE] == {"status": "baseline", "allotted": 2, "looks": []}
    # the decided row stopped: seeds 0 and 1 only, for it and its baseline; nothing queued
    assert _seeds_of(study, "product") == _seeds_of(study, "none") == [0, 1]
    assert len(study.trials) == 4
    # another machine joining later (one worker, here in this process) takes no new look and starts nothing (the
    # record is a function of the trials)
    assert main(["sweep", str(path), "--no-leaderboard", "--set", "workers=1"]) == 0
    again = optuna.load_study(study_name=name, storage=url)
    assert again.user_attrs[ATTR] == rec and len(again.trials) == 4
    return study


@pytest.mark.slow
def test_a_decided_row_stops_at_the_first_look_sqlite(tmp_path):
    _run_decided_row(tmp_path, None)


@pytest.mark.slow
@pytest.mark.postgresql
def test_a_decided_row_stops_at_the_first_look_postgresql(tmp_path, postgresql_url):
    study = _run_decided_row(tmp_path, postgresql_url)
    optuna.delete_study(study_name=study.study_name, storage=study._storage)


@pytest.mark.slow
def test_rows_are_compared_with_the_study_reference_and_a_reference_that_is_no_row_is_refused(tmp_path, capsys):
    """``study.reference`` names the iRPE row: it becomes the baseline (it follows its rows' seeds, it is never
    looked at) and the no-RPE row is the compared one — the leaderboard's own pairing, so that the study stops a
    row on the comparison it reports. Before, the reference was treated as a compared row without a baseline and
    the no-RPE row as a baseline nobody followed. A reference that names no row is refused before any trial."""
    from irpe_bench.sweep.config import load_sweep
    from irpe_bench.sweep.objective import variant_of

    path = _sweep(tmp_path, {"min": 2, "max": 6, "step": 2, "until": "decided", "margin": 1.0})
    sweep = load_sweep(path)
    slug = variant_of(sweep.trial_config({"model.rpe.method": "product", "seed": 0}))
    bad = yaml.safe_load(path.read_text())
    bad["study"] = {**bad["study"], "reference": "no_such_row", "name": "bad"}
    bad_path = tmp_path / "bad.yaml"
    bad_path.write_text(yaml.safe_dump(bad))
    assert main(["sweep", str(bad_path), "--no-leaderboard"]) == 2
    err = capsys.readouterr().err
    assert "study.reference='no_such_row'" in err and slug in err, err
    bad_study = optuna.load_study(study_name="bad", storage=f"sqlite:///{tmp_path}/out/optuna.db")
    assert not [t for t in bad_study.trials if t.state != TrialState.WAITING]  # nothing ran

    data = yaml.safe_load(path.read_text())
    data["study"]["reference"] = slug
    path.write_text(yaml.safe_dump(data))
    assert main(["sweep", str(path), "--no-leaderboard"]) == 0
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/out/optuna.db")
    rec = study.user_attrs[ATTR]
    assert rec["family"] == 1 and rec["rows"][PRODUCT] == {"status": "baseline", "allotted": 2, "looks": []}
    none = rec["rows"][NONE]
    assert none["status"] == Q.EQUIVALENT and len(none["looks"]) == 1 and none["allotted"] == 2
    _check_look(study, none["looks"][0], 0.05, 6)
    assert _seeds_of(study, "product") == _seeds_of(study, "none") == [0, 1]

    # the leaderboard shows the looks beside its (descriptive) fixed-n ranking
    assert main(["leaderboard", str(path)]) == 0
    board = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
    seq = board["sequential"]
    assert seq["alpha_row"] == pytest.approx(0.05) and seq["spec"]["max"] == 6
    by_variant = {r["variant"]: r for r in seq["rows"]}
    row = by_variant["deit_tiny_norpe"]
    assert row["vs"] == slug and row["status"] == Q.EQUIVALENT and row["looks"] == [2]
    assert row["val"]["ci"] == none["looks"][0]["ci"] and row["test"]["ci"] == none["looks"][0]["test"]["ci"]
    assert by_variant[slug]["status"] == "baseline"
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "## Seeds until decided" in md and "descriptive, not decisions" in md
    assert "| deit_tiny_norpe | " + slug + " | equivalent | 2 | 2 |" in md

    # the looks were taken against the product row: another reference is refused, before anything runs
    data["study"]["reference"] = "deit_tiny_norpe"
    path.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert main(["sweep", str(path), "--no-leaderboard"]) == 2
    assert "keeps the reference it started with" in capsys.readouterr().err
    assert len(optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/out/optuna.db").trials) == 4


def test_concurrent_writers_keep_every_look():
    """Two workers took looks on different rows from the same old record: the second to write keeps the first's
    (a row only grows: the one with more looks is the newer; a baseline keeps the larger allotment)."""
    from irpe_bench.sweep.decided import _merge

    look = {"n_seeds": 10, "decision": "continue"}
    old = {"a": {"status": "continue", "allotted": 10, "looks": []},
           "b": {"status": "continue", "allotted": 10, "looks": []},
           "ref": {"status": "baseline", "allotted": 10, "looks": []}}
    theirs = {**old, "a": {"status": "continue", "allotted": 20, "looks": [look]},
              "ref": {"status": "baseline", "allotted": 20, "looks": []}}
    ours = {**old, "b": {"status": "higher", "allotted": 10, "looks": [{**look, "decision": "higher"}]}}
    merged = _merge(theirs, ours)
    assert merged["a"] == theirs["a"] and merged["b"] == ours["b"] and merged["ref"]["allotted"] == 20
    assert _merge(ours, theirs)["b"] == ours["b"]  # either order


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


@pytest.mark.slow
def test_an_undecided_row_gets_more_seeds_and_a_killed_sweep_resumes_between_looks(tmp_path):
    """No margin: identical rows cannot be decided, so the row (and its baseline) get seeds 2 and 3 after the
    first look, and at max = 4 the row is 'not resolved'. The sweep is killed (SIGKILL) after the first look while
    a seed of the second batch trains; the same command resumes it: the recorded look is kept, the killed trial
    is retried, every allotted seed finishes once."""
    path = _sweep(tmp_path, {"min": 2, "max": 4, "step": 2, "until": "decided"}, heartbeat_s=1, grace_s=2)
    url = f"sqlite:///{tmp_path}/out/optuna.db"
    proc = start(["sweep", str(path), "--no-leaderboard"], env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                 stderr=subprocess.PIPE)
    first = None
    try:
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
            try:
                study = optuna.load_study(study_name="s", storage=url)
                rec = study.user_attrs.get(ATTR) or {}
                looks = rec.get("rows", {}).get(PRODUCT, {}).get("looks") or []
                running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                           if t.params.get("seed", 0) >= 2]
            except Exception:  # noqa: BLE001 - not created yet, or the database busy: look again
                continue
            if looks and running:
                first = looks[0]
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None and first is None:
            proc.kill()
        proc.wait(timeout=60)
    assert first is not None, f"never saw the first look with a second-batch seed running: {proc.stderr.read()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert first["n_seeds"] == 2 and first["decision"] == Q.CONTINUE
    killed = optuna.load_study(study_name="s", storage=url)
    assert killed.user_attrs[ATTR]["rows"][PRODUCT]["allotted"] == 4  # the next batch was allotted before the kill

    assert main(["sweep", str(path), "--no-leaderboard"]) == 0  # waits out the grace period, retries, goes on
    study = optuna.load_study(study_name="s", storage=url)
    rec = study.user_attrs[ATTR]
    prod = rec["rows"][PRODUCT]
    assert prod["looks"][0] == first  # a recorded look is never revised
    assert [lk["n_seeds"] for lk in prod["looks"]] == [2, 4]
    assert prod["status"] == Q.NOT_RESOLVED and prod["allotted"] == 4
    assert rec["rows"][NONE]["allotted"] == 4  # the baseline followed its row
    for look in prod["looks"]:
        _check_look(study, look, 0.05, 4)
    assert _seeds_of(study, "product") == _seeds_of(study, "none") == [0, 1, 2, 3]
    fails = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(fails) == 1 and any(t.user_attrs.get("retry_of") == fails[0].number for t in study.trials)
    assert not [t for t in study.trials if t.state in (TrialState.WAITING, TrialState.RUNNING)]


def test_seeds_config_is_checked_before_any_work(tmp_path):
    good = {"min": 2, "max": 4, "step": 2, "until": "decided"}
    cases = [({**good, "min": 5}, {}, "min=5 > max=4"),
             ({**good, "until": "always"}, {}, "until"),
             (good, {"sampler": "random", "n_trials": 3}, "study.sampler='random' with study.seeds"),
             (good, {"pruner": "median"}, "study.pruner='median' with study.seeds"),
             ({**good, "margin": 0}, {}, "margin")]
    for seeds, study, match in cases:
        path = _sweep(tmp_path, seeds, **study)
        with pytest.raises(ValueError, match=match):
            from irpe_bench.sweep import load_sweep

            load_sweep(path)
    path = _sweep(tmp_path, good)
    data = yaml.safe_load(path.read_text())
    data["space"]["seed"] = {"choices": [0, 1]}
    path.write_text(yaml.safe_dump(data))
    from irpe_bench.sweep import load_sweep

    with pytest.raises(ValueError, match="space.seed: study.seeds generates the seed axis"):
        load_sweep(path)
    sweep = load_sweep(_sweep(tmp_path, good))
    assert sweep.config.space["seed"].choices == (0, 1, 2, 3)
    assert sweep.identity()["seeds"]["max"] == 4  # the declared looks are the study's identity


def test_a_changed_design_cannot_join_the_study(tmp_path):
    """The α-spending depends on the declared looks: a study refuses a sweep whose max or step changed."""
    from irpe_bench.sweep import load_sweep
    from irpe_bench.sweep.extend import Mismatch
    from irpe_bench.sweep.storage import open_study

    seeds = {"min": 2, "max": 4, "step": 2, "until": "decided"}
    study, created = open_study(load_sweep(_sweep(tmp_path, seeds)), {})
    assert created and sorted((t.params if t.params else t.system_attrs["fixed_params"])["seed"]
                              for t in study.trials) == [0, 0, 1, 1]  # only the first look's seeds are queued
    with pytest.raises(Mismatch, match="study.seeds changed"):
        open_study(load_sweep(_sweep(tmp_path, {**seeds, "max": 8})), {})


def test_plan_on_a_real_pilot(tmp_path, capsys):
    """The committed digits_quick study (4 paired seeds, real trials) as the pilot: the paired SD from its trials,
    the seeds from the noncentral t (scipy, here), the compute from its trial times."""
    import shutil
    from statistics import median

    from scipy import stats

    db = tmp_path / "pilot.db"
    shutil.copy(ROOT / "results/sweeps/digits_quick/optuna.db", db)
    url = f"sqlite:///{db}"
    assert main(["plan", str(ROOT / "sweeps/digits_quick.yaml"), "--storage", url, "--mdd", "2", "--power",
                 "0.8"]) == 0
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="digits_quick", storage=url)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    # the committed pilot predates percent accuracies: its trials hold fractions, read in percent as the planner does
    test = {(t.user_attrs["baseline"], t.user_attrs["seed"]): K.percent(t.user_attrs["test/acc1"], t.user_attrs)
            for t in done}
    d = np.array([test[(False, s)] - test[(True, s)] for s in range(4)])
    sd = d.std(ddof=1)

    def power(n: int) -> float:
        crit = stats.t.isf(0.025, n - 1)
        nc = 2.0 / sd * math.sqrt(n)
        return stats.nct.sf(crit, n - 1, nc) + stats.nct.cdf(-crit, n - 1, nc)

    need = next(n for n in range(2, 10_000) if power(n) >= 0.8)
    row = next(line for line in out.splitlines() if "deit_tiny_ctx_product_50_shared_k_noabs" in line)
    cells = row.split()
    assert cells[1] == "4" and float(cells[2]) == pytest.approx(sd, abs=0.005) and int(cells[3]) == need, out
    assert need <= int(cells[4]) <= math.ceil(1.1 * need) + 5  # the sequential design's few per cent more
    trial_s = median((t.datetime_complete - t.datetime_start).total_seconds() for t in done
                     if not t.user_attrs["baseline"])
    compute = (need - 4) * trial_s / 2  # two workers
    assert f"(+{need - 4} seeds)" in row
    shown = cells[-3]
    h, m, s = (0, *map(int, shown[:-1].split("m"))) if "h" not in shown else (*map(int, shown[:-1].replace(
        "h", "m").split("m")), 0)
    assert abs(h * 3600 + m * 60 + s - compute) <= 60, (shown, compute)
    assert "1 comparison(s)" in out and "α = 0.05/1" in out


@pytest.mark.parametrize("argv, message", [
    (["plan", "no/such/sweep.yaml"], "sweep file 'no/such/sweep.yaml' does not exist"),
    (["plan", "sweeps/digits_quick.yaml", "--mdd", "0"], "--mdd=0: the difference to detect must be > 0"),
    (["plan", "sweeps/digits_quick.yaml", "--power", "1.5"], "--power=1.5: allowed 0 < power < 1"),
])
def test_plan_bad_input_is_one_line(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {message}" or (err.startswith("error: ") and message in err
                                                  and len(err.strip().splitlines()) == 1), err


def test_plan_on_a_study_without_completed_trials(tmp_path, capsys):
    from irpe_bench.sweep import load_sweep
    from irpe_bench.sweep.storage import open_study

    path = _sweep(tmp_path, {"min": 2, "max": 4, "step": 2, "until": "decided"})
    open_study(load_sweep(path), {})  # created and queued, nothing trained
    capsys.readouterr()  # Optuna's experimental-feature warnings of that call: not the command's output
    assert main(["plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: study 's' has no completed trial yet: run the pilot first") and "\n" not in err
