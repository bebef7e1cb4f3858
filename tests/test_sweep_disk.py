"""A study's disk on real sweeps (tiny DeiTs, real Lightning trainers, SQLite): retention, disk use, room checks.

What a user on a scratch quota relies on: ``study.checkpoints: keep-best`` leaves each finished trial only the
checkpoint its test split was evaluated on, ``keep-none`` none, ``keep-all`` (the default) everything — and none
of them ever deletes the checkpoints a queued or failed (retryable) trial resumes from; the setting may change
between runs of a study (the next worker start applies it to trials already finished); ``status`` says how much
the study occupies and how much is free."""
from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from irpe_bench.cli import main
from irpe_bench.sweep.config import load_sweep
from irpe_bench.sweep.disk import disk_use, needed_bytes, retain
from irpe_bench.sweep.storage import requeue

from ._train_helpers import tiny_dict, write_yaml


def _write(tmp_path: Path, seeds, checkpoints: str | None = None) -> Path:
    write_yaml(tmp_path / "base.yaml", tiny_dict(tmp_path, trainer={"benchmark_batches": 0, "max_epochs": 1}))
    study = {"name": "d", "sampler": "grid", "pruner": "none", **({"checkpoints": checkpoints} if checkpoints else {})}
    data = {"study": study, "base": "base.yaml", "out_dir": str(tmp_path / "out"),
            "space": {"seed": {"choices": list(seeds)}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _ckpts(run_dir) -> list:
    return sorted(p.name for p in Path(run_dir, "checkpoints").iterdir())


def _study(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name="d", storage=f"sqlite:///{tmp_path}/out/optuna.db")


def test_keep_all_then_keep_best_then_keep_none_and_status_reports_the_disk(tmp_path, capsys):
    path = _write(tmp_path, [0, 1])
    assert main(["sweep", str(path), "--no-leaderboard"]) == 0
    trials = _study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    dirs = [Path(t.user_attrs["run_dir"]) for t in trials]
    assert all(_ckpts(d)[-1] == "last.ckpt" and len(_ckpts(d)) == 2 for d in dirs)  # keep-all: best and last
    sweep = load_sweep(path)
    before = disk_use(sweep)
    sizes = sum(p.stat().st_size for d in dirs for p in (d / "checkpoints").iterdir())
    assert (before.files, before.checkpoints) == (4, sizes) and before.total > sizes and before.free > 0
    assert needed_bytes(sweep) == 2 * max(p.stat().st_size for d in dirs for p in (d / "checkpoints").iterdir())

    capsys.readouterr()
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "in 4 checkpoint file(s) (study.checkpoints: keep-all)" in out and " free on " in out, out

    # the setting changed on the study: the next worker start applies it to the trials already finished
    assert main(["sweep", str(path), "--set", "study.checkpoints=keep-best", "--no-leaderboard"]) == 0
    for d in dirs:
        best = Path(json.loads((d / "summary.json").read_text())["best_checkpoint"])
        assert _ckpts(d) == [best.name]  # the checkpoint the test split was evaluated on
    after = disk_use(sweep)
    assert after.files == 2 and after.checkpoints < before.checkpoints
    assert main(["sweep", str(path), "--set", "study.checkpoints=keep-none", "--no-leaderboard"]) == 0
    assert all(_ckpts(d) == [] for d in dirs) and disk_use(sweep).files == 0
    assert [t.state for t in _study(tmp_path).trials] == [TrialState.COMPLETE] * 2  # results untouched


def test_retention_never_deletes_what_a_queued_or_failed_trial_resumes(tmp_path):
    path = _write(tmp_path, [0, 1, 2])
    assert main(["sweep", str(path), "--no-leaderboard"]) == 0
    study = _study(tmp_path)
    t0, t1, t2 = study.trials
    # a copy of trial 0 waits to resume its run directory (as a heartbeat retry or --retry-failed queues it);
    # trial 1's directory is also named by a failed trial that nothing retried yet
    requeue(study, t0)
    study.add_trial(optuna.create_trial(state=TrialState.FAIL, user_attrs={"run_dir": t1.user_attrs["run_dir"]}))
    assert [t.state for t in study.trials[3:]] == [TrialState.WAITING, TrialState.FAIL]
    kept = {n: _ckpts(t.user_attrs["run_dir"]) for n, t in enumerate((t0, t1))}
    freed = retain(study, "keep-none")
    assert freed > 0 and _ckpts(t2.user_attrs["run_dir"]) == []
    assert {n: _ckpts(t.user_attrs["run_dir"]) for n, t in enumerate((t0, t1))} == kept


def test_an_unknown_retention_is_refused_naming_the_field(tmp_path):
    path = _write(tmp_path, [0], checkpoints="keep-some")
    with pytest.raises(ValueError, match=r"study\.checkpoints.*keep-some|keep-some.*checkpoints"):
        load_sweep(path)


def test_a_checkpoint_replaced_while_the_study_is_measured_is_skipped_not_fatal(tmp_path):
    """Another worker's top-k checkpoint is deleted between listing the study's checkpoints and reading their
    sizes (this killed a worker of a real two-worker study): the room check and the disk report go on with the
    files still there."""
    import threading

    from irpe_bench.sweep.disk import file_sizes

    kept, gone = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    kept.write_bytes(b"x" * 10)
    assert file_sizes([kept, gone]) == [10]

    sweep = load_sweep(_write(tmp_path, [0]))
    ckpts = tmp_path / "out" / "runs" / "trial-0000-x" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "last.ckpt").write_bytes(b"y" * 100)
    stop = threading.Event()

    def replace_best() -> None:  # what ModelCheckpoint does to a top-k file, as fast as it can
        i = 0
        while not stop.is_set():
            new = ckpts / f"epoch{i:03d}.ckpt"
            new.write_bytes(b"z" * 50)
            (ckpts / f"epoch{i - 1:03d}.ckpt").unlink(missing_ok=True)
            i += 1

    worker = threading.Thread(target=replace_best)
    worker.start()
    try:
        for _ in range(300):
            assert needed_bytes(sweep) == 200
            assert disk_use(sweep).checkpoints >= 100
    finally:
        stop.set()
        worker.join()
