"""``status``, ``studies`` and ``delete`` on real SQLite storages: a study with finished, running and queued
trials (the running one as a worker leaves it: worker, config, per-epoch values), and one with a real worker
mid-trial (slow)."""
from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from irpe_bench.cli import main
from irpe_bench.sweep import load_sweep
from irpe_bench.sweep.status import study_status, to_text
from irpe_bench.sweep.storage import open_study, storage_from_url

from ._processes import start
from ._train_helpers import tiny_dict, write_yaml

ROOT = Path(__file__).resolve().parents[1]


def _sweep_file(tmp_path: Path, seeds=(0, 1, 2, 3, 4), **trainer) -> Path:
    write_yaml(tmp_path / "base.yaml", tiny_dict(tmp_path, trainer=trainer) if trainer else tiny_dict(tmp_path))
    data = {"study": {"name": "watch", "sampler": "grid", "pruner": "none"}, "base": "base.yaml",
            "out_dir": str(tmp_path / "out"), "space": {"seed": {"choices": list(seeds)}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture()
def watched(tmp_path):
    """A 5-point grid: two trials finished (60 s and 100 s), one running at epoch 1 of 2, two queued."""
    sweep = load_sweep(_sweep_file(tmp_path))
    study, _ = open_study(sweep, {})
    t0 = dt.datetime(2026, 1, 1, 12, 0, 0)
    for n, (seconds, value, test) in enumerate([(60, 0.90, 0.88), (100, 0.95, 0.91)]):
        trial = study.ask()
        trial.set_user_attr("variant", f"v{n}")
        trial.set_user_attr("test/acc1", test)
        study.tell(trial, value)
    running = study.ask()
    for k, v in {"variant": "running-one", "worker": "hostA:4242", "config": {"trainer.max_epochs": 2}}.items():
        running.set_user_attr(k, v)
    running.report(0.5, step=0)
    return sweep, study, t0


def _with_times(url, t0):
    """The finished trials' start/complete times as if they took 60 s and 100 s (the storage stamps the clock)."""
    from optuna.storages._rdb import models

    with optuna.storages.RDBStorage(url).scoped_session() as session:
        for t in session.query(models.TrialModel).all():
            if t.number in (0, 1):
                t.datetime_start = t0
                t.datetime_complete = t0 + dt.timedelta(seconds=(60, 100)[t.number])
            if t.number == 2:
                t.datetime_start = t0
        session.commit()


def test_status_counts_running_trials_eta_and_best(watched):
    sweep, study, t0 = watched
    _with_times(sweep.storage_url, t0)
    now = t0 + dt.timedelta(seconds=30)
    st = study_status(optuna.load_study(study_name="watch", storage=sweep.storage_url), 5, now=now)
    assert st.counts["complete"] == 2 and st.counts["running"] == 1 and st.counts["waiting"] == 2
    (r,) = st.running
    assert (r.variant, r.worker, r.epoch, r.epochs, r.elapsed_s) == ("running-one", "hostA:4242", 1, 2, 30.0)
    assert st.median_trial_s == 80.0
    assert st.eta_s == pytest.approx(80.0 * (5 - 2 - 0.5) / 1)  # median × trials left (running = half) ÷ running
    assert (st.best_trial, st.best_variant, st.best_value, st.best_test) == (1, "v1", 95.0, pytest.approx(91.0))
    text = to_text(st)
    assert "study watch: 2 of 5 finished" in text and "1 running, 2 queued" in text
    assert "trial 2 running-one on hostA:4242, epoch 1/2, 0m 30s elapsed" in text
    assert "ETA about 3m 20s" in text and "best so far: trial 1 v1, val acc1 best 95.00" in text


def test_status_studies_and_delete_commands(watched, capsys, monkeypatch):
    sweep, study, _ = watched
    path = str(sweep.path)
    assert main(["status", path]) == 0
    assert "study watch: 2 of 5 finished" in capsys.readouterr().out
    assert main(["studies", "--storage", sweep.storage_url]) == 0
    out = capsys.readouterr().out
    assert "1 studies in" in out and "watch: 5 trials" in out and "best val acc1 95.00" in out
    monkeypatch.setattr("sys.stdin", open(os.devnull))  # no answer: refused, nothing deleted
    assert main(["delete", path]) == 2
    assert "not confirmed" in capsys.readouterr().err
    assert optuna.get_all_study_names(sweep.storage_url) == ["watch"]
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("watch\n"))  # the name typed: deleted
    assert main(["delete", path]) == 0
    assert optuna.get_all_study_names(sweep.storage_url) == []
    assert main(["status", path]) == 2 and "no such study" in capsys.readouterr().err


def test_read_only_commands_never_create_a_storage(tmp_path, capsys):
    missing = tmp_path / "none.db"
    assert main(["studies", "--storage", f"sqlite:///{missing}"]) == 2
    assert "no such SQLite file" in capsys.readouterr().err and not missing.exists()
    assert main(["studies", "--storage", "redis://user:secret@host/0"]) == 2
    err = capsys.readouterr().err
    assert "expected sqlite:///path.db" in err and "secret" not in err
    assert main(["status", str(_sweep_file(tmp_path))]) == 2
    assert "run the sweep first" in capsys.readouterr().err and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_status_of_a_real_worker_mid_trial(tmp_path, capsys):
    path = _sweep_file(tmp_path, seeds=(0, 1), max_epochs=40, limit_train_batches=4)
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    worker = start(["sweep", str(path), "--no-leaderboard"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    try:
        storage = f"sqlite:///{tmp_path / 'out' / 'optuna.db'}"
        deadline, st = time.time() + 300, None
        while time.time() < deadline:
            time.sleep(1.0)
            if not (tmp_path / "out" / "optuna.db").exists():
                continue
            try:  # NOTE: through storage_from_url, which rides out creating the tables as the worker does
                study = optuna.load_study(study_name="watch", storage=storage_from_url(storage))
            except KeyError:
                continue
            st = study_status(study, 2)
            if st.running and st.running[0].epoch >= 2:
                break
        assert st is not None and st.running, "the worker never reported an epoch"
        # Freeze the worker so the trial is still mid-run while `status` reads it.
        worker.send_signal(signal.SIGSTOP)
        st = study_status(optuna.load_study(study_name="watch", storage=storage), 2)
        assert st.running, "the trial finished before the worker was frozen"
        (r,) = st.running
        assert r.worker.endswith(f":{worker.pid}") and r.epochs == 40 and 2 <= r.epoch < 40
        assert r.elapsed_s > 0 and st.counts["waiting"] == 1 and st.counts["finished"] == 0
        capsys.readouterr()
        assert main(["status", str(path)]) == 0
        out = capsys.readouterr().out
        assert f"on {r.worker}" in out and "/40" in out
    finally:
        worker.kill()
        worker.wait(timeout=30)
    assert any(t.state == TrialState.RUNNING for t in optuna.load_study(study_name="watch", storage=storage).trials)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_serves_the_study_over_http_on_loopback(watched, tmp_path):
    import json
    import urllib.request

    sweep, _, _ = watched
    port = _free_port()
    proc = start(["dashboard", str(sweep.path), "--port", str(port)], cwd=tmp_path,
                 env={**os.environ, "WANDB_MODE": "offline"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                 text=True)
    try:
        deadline, studies = time.time() + 60, None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2) as r:
                    studies = json.loads(r.read())["study_summaries"]
                break
            except OSError:
                time.sleep(0.5)
        assert studies is not None, proc.stderr.read() if proc.poll() is not None else "no answer"
        (s,) = studies
        assert s["study_name"] == "watch"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{s['study_id']}", timeout=10) as r:
            detail = json.loads(r.read())
        assert len(detail["trials"]) == 5 and [t["state"] for t in detail["trials"]].count("Complete") == 2
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/dashboard/" in err


def test_dashboard_rejects_a_bad_port_before_serving(watched, capsys):
    sweep, _, _ = watched
    assert main(["dashboard", str(sweep.path), "--port", "70000"]) == 2
    assert "--port=70000: expected 1..65535" in capsys.readouterr().err
