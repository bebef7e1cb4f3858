"""Real sweeps on real storages: tiny DeiTs on digits, real Lightning trainers, Optuna on SQLite and PostgreSQL.

What a user relies on: every trial is recorded (value, metrics, config, reason when it failed), a failing trial
does not stop the sweep, pruning stops a bad trial, a killed sweep resumes and finishes the killed trial from
its checkpoint, and several workers share one study without running a trial twice."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from irpe_bench.cli import main

from ._processes import descendants, start
from ._processes import run as run_command
from ._train_helpers import tiny_dict, write_yaml

ROOT = Path(__file__).resolve().parents[1]


def _write_sweep(tmp_path: Path, space, study=None, base_sections=None, **top) -> Path:
    write_yaml(tmp_path / "base.yaml", tiny_dict(tmp_path, **(base_sections or {})))
    data = {"study": {"name": "s", "sampler": "grid", "pruner": "none", **(study or {})}, "base": "base.yaml",
            "space": space, "out_dir": str(tmp_path / "out"), **top}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _study(tmp_path: Path, name: str = "s", storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage or f"sqlite:///{tmp_path}/out/optuna.db")


def _env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **extra}


@pytest.mark.slow
def test_grid_sweep_records_every_trial_and_survives_a_failing_one(tmp_path):
    path = _write_sweep(tmp_path, {"model.rpe.method": {"choices": ["none", "product"]},
                                   "optim.lr": {"choices": [0.002, 1.0e9]}},
                        base_sections={"log": {"wandb": True}})
    assert main(["sweep", str(path)]) == 0
    trials = _study(tmp_path).trials
    assert len(trials) == 4
    by_state = {s: [t for t in trials if t.state == s] for s in (TrialState.COMPLETE, TrialState.FAIL)}
    assert len(by_state[TrialState.COMPLETE]) == 2 and len(by_state[TrialState.FAIL]) == 2
    for t in by_state[TrialState.FAIL]:  # lr 1e9 diverges: recorded with its reason, the sweep went on
        assert t.params["optim.lr"] == 1.0e9
        assert t.user_attrs["status"] == "diverged" and "train/loss became nan" in t.user_attrs["error"]
    for t in by_state[TrialState.COMPLETE]:
        summary = json.loads((Path(t.user_attrs["run_dir"]) / "summary.json").read_text())
        assert t.value == summary["val/acc1_best"] == t.user_attrs["val/acc1_best"]
        assert t.user_attrs["variant"] == summary["variant"]
        assert t.user_attrs["config"]["optim.lr"] == 0.002 and t.user_attrs["seed"] == 0
        assert t.user_attrs["params"] == summary["params"] > 0
        assert t.user_attrs["throughput/infer_img_s"] > 0
        assert t.user_attrs["baseline"] == (t.params["model.rpe.method"] == "none")
        assert len(t.intermediate_values) == 2  # val/acc1 of each epoch went to the pruner
    variants = {t.user_attrs["variant"] for t in by_state[TrialState.COMPLETE]}
    assert variants == {"deit_tiny_norpe", "deit_tiny_ctx_product_50_shared_k"}
    # W&B: one offline run per trial, grouped by the study, tagged with the trial
    from irpe_bench.train.wandb_setup import read_offline_summary

    t0 = by_state[TrialState.COMPLETE][0]
    wb = read_offline_summary(Path(t0.user_attrs["run_dir"]))
    assert wb["config"]["log.group"] == "s" and f"trial:{t0.number}" in wb["tags"] and "sweep:s" in wb["tags"]
    # the leaderboard ends the command: both finished variants ranked, the failures listed with reasons
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "deit_tiny_ctx_product_50_shared_k" in md and "deit_tiny_norpe" in md and "diverged" in md.lower()
    # running it again starts nothing new: the budget is counted in the storage
    assert main(["sweep", str(path)]) == 0
    assert len(_study(tmp_path).trials) == 4


@pytest.mark.slow
def test_median_pruner_stops_a_bad_trial(tmp_path):
    path = _write_sweep(tmp_path, {"optim.lr": {"choices": [0.005, 0.004, 0.003, 1.0e-9]}},
                        study={"pruner": "median", "pruner_warmup_epochs": 0},
                        base_sections={"trainer": {"max_epochs": 3, "limit_train_batches": None,
                                                   "limit_val_batches": None, "benchmark_batches": 0},
                                       "optim": {"warmup_epochs": 0}})
    assert main(["sweep", str(path), "--no-leaderboard"]) == 0
    trials = _study(tmp_path).trials
    assert [t.state for t in trials[:3]] == [TrialState.COMPLETE] * 3
    bad = trials[3]
    assert bad.params["optim.lr"] == 1.0e-9 and bad.state == TrialState.PRUNED
    assert bad.user_attrs["status"] == "pruned" and len(bad.intermediate_values) < 3
    assert json.loads((Path(bad.user_attrs["run_dir"]) / "summary.json").read_text())["status"] == "stopped"


@pytest.mark.slow
def test_killed_sweep_resumes_the_killed_trial_from_its_checkpoint(tmp_path):
    path = _write_sweep(tmp_path, {"model.rpe.method": {"choices": ["product", "cross"]}},
                        study={"heartbeat_s": 1, "grace_s": 3},
                        base_sections={"trainer": {"max_epochs": 3, "limit_train_batches": 12}})
    proc = start(["sweep", str(path), "--no-leaderboard"], env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                 stderr=subprocess.PIPE)
    runs = tmp_path / "out" / "runs"
    try:
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline and not list(runs.glob("trial-0000-*/checkpoints/"
                                                                                      "last.ckpt")):
            time.sleep(0.05)
        time.sleep(0.3)  # let the checkpoint write finish
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-3000:]
    assert [t.state for t in _study(tmp_path).trials] == [TrialState.RUNNING, TrialState.WAITING]

    t0 = time.time()
    assert main(["sweep", str(path), "--no-leaderboard"]) == 0  # waits out the grace period, then retries
    trials = _study(tmp_path).trials
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 2 and states == [TrialState.FAIL, TrialState.COMPLETE,
                                                                   TrialState.COMPLETE]
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 0)
    assert retry.params == trials[0].params and retry.user_attrs["run_dir"] == trials[0].user_attrs["run_dir"]
    summary = json.loads((Path(retry.user_attrs["run_dir"]) / "summary.json").read_text())
    assert summary["resumed_from"].endswith("last.ckpt") and summary["epochs"] == 3
    assert summary["global_step"] == 3 * 12
    assert time.time() - t0 < 200


def _psycopg(url: str) -> str:
    """The SQLAlchemy URL of a ``postgresql://`` storage, with the driver the package uses."""
    return url.replace("postgresql://", "postgresql+psycopg://")


@pytest.mark.slow
@pytest.mark.postgresql
def test_two_workers_share_one_postgresql_study(tmp_path, postgresql_url):
    name = f"pytest-{uuid.uuid4().hex[:8]}"
    path = _write_sweep(tmp_path, {"model.rpe.method": {"choices": ["none", "euclidean", "quant", "product"]}},
                        study={"name": name, "storage": postgresql_url}, workers=2)
    storage = _psycopg(postgresql_url)
    try:
        assert main(["sweep", str(path)]) == 0  # the launcher in this process; its two workers are processes
        every = _study(tmp_path, name, storage).trials
        # NOTE: when both workers pass the budget check for the last slot, the later trial is discarded untrained
        trials = [t for t in every if t.user_attrs.get("status") != "discarded"]
        assert all(t.state == TrialState.FAIL and not t.params for t in every if t not in trials)
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
        assert sorted(t.params["model.rpe.method"] for t in trials) == ["euclidean", "none", "product", "quant"]
        assert len({t.user_attrs["worker"] for t in trials}) == 2  # both processes pulled trials
        assert (tmp_path / "out" / "leaderboard.md").is_file()
    finally:
        optuna.delete_study(study_name=name, storage=storage)


@pytest.mark.slow
def test_a_two_process_ddp_trial_runs_once_with_both_ranks(tmp_path):
    """Lightning's DDP launcher re-runs the sweep command for rank 1: it must join rank 0's trial, not start a
    sweep of its own (gloo on 2 CPU processes stands in for 2 GPUs)."""
    path = _write_sweep(tmp_path, {"model.rpe.method": {"choices": ["product"]}},
                        base_sections={"trainer": {"devices": 2, "strategy": "ddp", "max_epochs": 2,
                                                   "limit_train_batches": 3, "limit_val_batches": 2}})
    proc = run_command(["sweep", str(path), "--no-leaderboard"], env=_env(), cwd=ROOT, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE]  # one trial, not one per rank
    summary = json.loads((Path(trials[0].user_attrs["run_dir"]) / "summary.json").read_text())
    assert summary["world_size"] == 2 and trials[0].value == summary["val/acc1_best"]
    assert sorted(trials[0].intermediate_values) == [0, 1]  # reported once per epoch, from rank 0
    assert len(list((tmp_path / "out" / "runs").iterdir())) == 1


@pytest.mark.slow
def test_journal_storage_and_fail_running_recover_a_crashed_worker(tmp_path):
    """A journal file has no heartbeat: a trial left RUNNING by a dead worker is recovered with --fail-running,
    retried with the same parameters, and the budget still ends at one finished trial per grid point."""
    journal = tmp_path / "journal.log"
    path = _write_sweep(tmp_path, {"model.rpe.method": {"choices": ["none", "product"]}},
                        study={"storage": f"journal://{journal}"})
    from irpe_bench.sweep import load_sweep
    from irpe_bench.sweep.space import suggest
    from irpe_bench.sweep.storage import open_study

    sweep = load_sweep(path)
    study, created = open_study(sweep, {})
    assert created
    dead = study.ask()  # a worker took the first grid point and died: RUNNING forever, no heartbeat to notice
    assert suggest(dead, sweep.config.space, sweep.base_flat) == {"model.rpe.method": "none"}
    assert main(["sweep", str(path), "--fail-running", "--no-leaderboard"]) == 0
    trials = optuna.load_study(study_name="s", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal)))).trials
    assert trials[0].state == TrialState.FAIL and trials[0].system_attrs["fail_reason"].startswith("recovered")
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.params["model.rpe.method"] for t in done) == ["none", "product"]
    assert next(t for t in done if t.params["model.rpe.method"] == "none").user_attrs["retry_of"] == 0


#: the test's one fault, loaded into every process of the sweep (``sitecustomize`` on ``PYTHONPATH``): the no-RPE
#: trial fails in its second epoch with the storage URL (password and all) in its exception's message
_FAULT = """
from irpe_bench.train.module import ClassificationModule

_step = ClassificationModule.training_step


def training_step(self, batch, batch_idx):
    if self.current_epoch == 1 and self.net.variant == "deit_tiny_norpe":
        raise RuntimeError("lost the connection to {url} while writing")
    return _step(self, batch, batch_idx)


ClassificationModule.training_step = training_step
"""


def _watch_command_lines(proc, seen: dict) -> None:
    """Collect the command line of every process the sweep starts while it runs (the server its workers fork
    from, the workers, their children), by pid. NOTE: not the sweep's own: that is the command the user typed,
    ``--storage URL`` and all (docs/sweeps.md)."""
    while proc.poll() is None:
        for pid in descendants(proc.pid):
            try:
                seen.setdefault(pid, set()).add(Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                pass
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.postgresql
@pytest.mark.parametrize("route", ["--storage", "--set", "environment", "sweep file"])
def test_storage_password_never_reaches_logs_wandb_or_the_leaderboard(tmp_path, tmp_path_factory, postgresql_url,
                                                                      route, capsys, monkeypatch):
    """PostgreSQL with trust auth accepts any password, so a real sweep can run with one in its URL, given by each
    route a user has; one trial fails with that URL in its exception's message. Afterwards nothing holds the
    password: no file the sweep wrote (reports in every format, run directories with their summaries and
    train.log, W&B offline runs), nothing it printed, no command line of a process it started (read while it
    ran), nothing stored in the study (its and every trial's user and system attributes), nor what ``status``
    prints. Two workers on every route: a launcher hands its workers the command and the environment, the routes
    by which the password could reach theirs. The sweep is a process of its own started as :mod:`._processes`
    starts one (its own command line holds nothing of the test's: every command line read is one the sweep's code
    chose); the fault comes in by ``sitecustomize``, which the workers' server loads when it starts."""
    import threading

    name, secret = f"pytest-{uuid.uuid4().hex[:8]}", f"pw{uuid.uuid4().hex[:10]}"
    url = postgresql_url.replace("postgres@", f"postgres:{secret}@", 1)
    assert secret in url
    fault = tmp_path_factory.mktemp("fault")  # outside tmp_path: the test's own file, like the sweep file
    (fault / "sitecustomize.py").write_text(_FAULT.format(url=url))
    study = {"name": name, **({"storage": url} if route == "sweep file" else {})}
    path = _write_sweep(tmp_path, {"model.rpe.method": {"choices": ["none", "product"]}}, study=study,
                        base_sections={"log": {"wandb": True}}, workers=2)
    extra = {"--storage": ["--storage", url], "--set": ["--set", f"study.storage={url}"]}.get(route, [])
    env = {**_env(**({"IRPE_BENCH_STORAGE": url} if route == "environment" else {})),
           "PYTHONPATH": f"{fault}{os.pathsep}{ROOT}"}
    command_lines: dict = {}
    try:
        proc = start(["sweep", str(path), *extra], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE, text=True)
        watcher = threading.Thread(target=_watch_command_lines, args=(proc, command_lines), daemon=True)
        watcher.start()
        stdout, stderr = proc.communicate(timeout=400)
        watcher.join(timeout=10)
        assert proc.returncode == 0, stderr[-3000:]
        assert "postgres:***@127.0.0.1" in stderr  # the storage is named, redacted
        assert not [c for lines in command_lines.values() for c in lines if secret.encode() in c]
        # ``status`` by the same route, in this process (it has imported everything: no second start-up to pay)
        if route == "environment":
            monkeypatch.setenv("IRPE_BENCH_STORAGE", url)
        capsys.readouterr()
        assert main(["status", str(path), *extra]) == 0
        status = capsys.readouterr()
        assert "1 failed" in status.out, status.err[-3000:]
        printed = stdout + stderr + status.out + status.err
        assert secret not in printed
        assert "lost the connection to postgresql://postgres:***@127.0.0.1" in stderr  # the reason, redacted
        written = [p for p in tmp_path.rglob("*") if p.is_file() and p != path]  # the user's own file aside
        leaks = [p for p in written if secret.encode() in p.read_bytes()]
        assert not leaks
        stored = optuna.load_study(study_name=name, storage=_psycopg(postgresql_url))
        failed, done = sorted(stored.trials, key=lambda t: t.state != TrialState.FAIL)
        pids = {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in stored.trials}
        assert pids and pids <= command_lines.keys(), (pids, command_lines.keys())  # the watcher saw the workers
        assert failed.state == TrialState.FAIL and done.state == TrialState.COMPLETE
        assert failed.user_attrs["error"] == ("RuntimeError: lost the connection to "
                                              f"{postgresql_url.replace('postgres@', 'postgres:***@')} while writing")
        kept = json.dumps([stored.user_attrs, stored._storage.get_study_system_attrs(stored._study_id),
                           *[[t.user_attrs, t.system_attrs, t.params] for t in stored.trials]], default=str)
        assert secret not in kept and "python run.py sweep" in kept
        out = tmp_path / "out"
        for report in ("leaderboard.md", "leaderboard.html", "leaderboard.json", "trials.csv"):
            assert "lost the connection to postgresql://postgres:***@" in (out / report).read_text(), report
        log = (Path(failed.user_attrs["run_dir"]) / "train.log").read_text()
        assert "Traceback" in log and "lost the connection to postgresql://postgres:***@" in log
        assert list((Path(failed.user_attrs["run_dir"]) / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(list((out / "runs").iterdir())) == 2
    finally:
        optuna.delete_study(study_name=name, storage=_psycopg(postgresql_url))


@pytest.mark.slow
def test_a_worker_with_nothing_to_start_leaves_soon_after_the_last_running_trial_ends(tmp_path):
    """A worker that finds every trial started waits while they run (one may be a killed worker's, going
    stale), and looks again soon, then less and less often: a sweep ends when its last trial does, not up to half
    a heartbeat interval (15 s by default) later, as when every look waited that long. Here the one grid point
    runs in this test (asked, told complete a second later); the worker starts nothing and returns soon after."""
    import threading

    from irpe_bench.sweep.config import load_sweep
    from irpe_bench.sweep.runner import work
    from irpe_bench.sweep.storage import open_study

    sweep = load_sweep(_write_sweep(tmp_path, {"seed": {"choices": [0]}}))
    assert sweep.config.study.heartbeat_s == 30  # the default: its looks level off at 15 s
    study, _ = open_study(sweep, {})
    trial = study.ask()  # the enqueued point, running (as another worker's)
    done = threading.Timer(1.0, study.tell, args=(trial, 50.0))
    started = time.monotonic()
    done.start()
    assert work(sweep, {}, study=study) == 0
    waited = time.monotonic() - started
    done.join()
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
    assert 1.0 <= waited < 5.0, waited


@pytest.mark.slow
def test_timeout_starts_no_new_trial_and_a_rerun_finishes_the_budget(tmp_path):
    """The first trial starts within milliseconds of the worker's start (one read of the storage) and trains ten
    epochs (~60 batches): it outlasts the 0.3 s, and no second trial starts."""
    path = _write_sweep(tmp_path, {"model.rpe.method": {"choices": ["none", "euclidean", "product"]}},
                        study={"timeout_s": 0.3}, base_sections={"trainer": {"max_epochs": 10}})
    assert main(["sweep", str(path), "--no-leaderboard"]) == 0
    states = [t.state for t in _study(tmp_path).trials]
    assert states == [TrialState.COMPLETE, TrialState.WAITING, TrialState.WAITING]  # one trial outlasts 0.3 s
    assert main(["sweep", str(path), "--no-leaderboard", "--set", "study.timeout_s=null"]) == 0
    assert [t.state for t in _study(tmp_path).trials] == [TrialState.COMPLETE] * 3


@pytest.mark.slow
def test_a_trial_created_past_the_budget_is_discarded_untrained(tmp_path):
    """The worker race of ``irpe_bench/sweep/budget.py``, made deterministic: after the grid's two queued
    points have run, a third ``optimize`` step gets a fresh trial, as a worker that passed the budget check at
    the same moment as another would; it is discarded before any sampling or training, is not counted, and the
    leaderboard leaves it out."""
    from irpe_bench.report.leaderboard import collect
    from irpe_bench.sweep import load_sweep
    from irpe_bench.sweep.budget import budget, over_budget, target_trials
    from irpe_bench.sweep.objective import Objective
    from irpe_bench.sweep.storage import open_study

    sweep = load_sweep(_write_sweep(tmp_path, {"model.rpe.method": {"choices": ["none", "product"]}}))
    study, _ = open_study(sweep, {})
    assert target_trials(sweep) == 2 and budget(study)["waiting"] == 2
    for _ in range(3):
        study.optimize(Objective(sweep, target=2), n_trials=1, catch=(Exception,))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert not over_budget(study, 1, 2) and over_budget(study, 2, 2)
    late = trials[-1]
    assert late.user_attrs["status"] == "discarded" and "over the budget of 2" in late.user_attrs["error"]
    assert "run_dir" not in late.user_attrs and not late.params  # nothing sampled, nothing trained
    assert len(list((tmp_path / "out" / "runs").iterdir())) == 2
    c = budget(study)
    assert (c["complete"], c["failed"], c["discarded"], c["finished"]) == (2, 0, 1, 2)
    board = collect(study)
    assert board.counts["discarded"] == 1 and board.counts["failed"] == 0 and board.counts["total"] == 2
    assert len(board.groups) == 2


def _snapshot(trials):
    """What an extension must leave alone: each trial's number, state, value, params, attributes, times, and
    its run's summary file (bytes and mtime: not trained again)."""
    out = []
    for t in trials:
        summary = Path(t.user_attrs["run_dir"]) / "summary.json"
        out.append((t.number, t.state, t.value, t.params, t.user_attrs, t.datetime_start, t.datetime_complete,
                    summary.read_bytes(), summary.stat().st_mtime_ns))
    return out


@pytest.mark.slow
def test_more_seeds_join_the_finished_study_and_train_only_the_new_trial(tmp_path):
    """A finished two-seed grid, its file edited to three seeds: the same study, one new training (seed 2),
    the old trials untouched, the stored sweep updated; a third run trains nothing."""
    from irpe_bench.sweep.extend import CHOICES_ATTR

    space = {"model.rpe.method": {"choices": ["product"]}, "seed": {"choices": [0, 1]}}
    path = _write_sweep(tmp_path, space)
    assert main(["sweep", str(path), "--no-leaderboard"]) == 0
    before = _study(tmp_path).get_trials()
    assert [t.state for t in before] == [TrialState.COMPLETE] * 2
    old = _snapshot(before)
    data = yaml.safe_load(path.read_text())
    data["space"]["seed"]["choices"] = [0, 1, 2]
    path.write_text(yaml.safe_dump(data))
    assert main(["sweep", str(path), "--no-leaderboard"]) == 0
    study = _study(tmp_path)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert _snapshot(trials[:2]) == old
    assert trials[2].params == {"model.rpe.method": "product", "seed": 2} and trials[2].user_attrs["seed"] == 2
    assert trials[2].user_attrs["config_key"] == trials[0].user_attrs["config_key"]  # one leaderboard row
    runs = sorted(p.name for p in (tmp_path / "out" / "runs").iterdir())
    assert runs == [f"trial-000{i}-{trials[0].user_attrs['variant']}" for i in range(3)]  # three trainings in all
    meta = study.user_attrs["sweep"]
    assert meta["space"]["seed"] == [0, 1, 2] and study.user_attrs[CHOICES_ATTR]["seed"] == [0, 1, 2]
    assert len(meta["extended"]) == 1 and "+1 grid point(s), new choices {'seed': [2]}" in meta["extended"][0]
    assert "python run.py sweep" in meta["command"]
    assert main(["sweep", str(path), "--no-leaderboard"]) == 0
    assert len(_study(tmp_path).trials) == 3


@pytest.mark.slow
def test_a_new_grid_choice_runs_only_its_cells_and_a_changed_override_is_refused(tmp_path, capsys):
    """``--set`` a third method (inserted between the old two) on a finished method × seed grid: only its cell
    trains. The same file with a changed training override is refused before any work, saying what differs."""
    path = _write_sweep(tmp_path, {"model.rpe.method": {"choices": ["none", "product"]}, "seed": {"choices": [0]}})
    assert main(["sweep", str(path), "--no-leaderboard"]) == 0
    old = _snapshot(_study(tmp_path).get_trials())
    assert main(["sweep", str(path), "--no-leaderboard", "--set",
                 "space.model.rpe.method.choices=[none,cross,product]"]) == 0
    trials = _study(tmp_path).get_trials()
    assert _snapshot(trials[:2]) == old and len(trials) == 3
    assert trials[2].state == TrialState.COMPLETE and trials[2].params == {"model.rpe.method": "cross", "seed": 0}
    assert "_cross_" in trials[2].user_attrs["variant"]
    assert len(list((tmp_path / "out" / "runs").iterdir())) == 3
    capsys.readouterr()
    assert main(["sweep", str(path), "--no-leaderboard", "--set", "space.model.rpe.method.choices=[none,cross,product]",
                 "overrides.trainer.max_epochs=1"]) == 2
    err = capsys.readouterr().err
    assert "error: study 's'" in err and "was created from a different sweep" in err, err[-2000:]
    assert "trainer.max_epochs: 2 -> 1" in err and "--set study.name=NEW" in err
    assert len(_study(tmp_path).trials) == 3 and len(list((tmp_path / "out" / "runs").iterdir())) == 3
