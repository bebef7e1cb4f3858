"""Failed trials and time limits, on real sweeps (tiny DeiTs on digits, real Lightning trainers, SQLite).

What a user relies on: ``--retry-failed`` lists every failure with its reason (never a password), queues each
retryable one again with its parameters so it resumes its own checkpoint, runs it although the budget was spent,
and never retries a trial twice or an invalid one; ``study.trial_timeout_s`` stops a trial that runs too long
and the sweep goes on; a trial killed after its last epoch and retried still reports its speed and accuracy."""
from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from irpe_bench import keys as K
from irpe_bench.cli import main
from irpe_bench.train.module import ClassificationModule

from ._processes import start
from ._train_helpers import tiny_dict, write_yaml

ROOT = Path(__file__).resolve().parents[1]
SECRET_URL = "postgresql://bench:hunter2pw@db.example/optuna"


def _write_sweep(tmp_path: Path, space, study=None, base_sections=None) -> Path:
    write_yaml(tmp_path / "base.yaml", tiny_dict(tmp_path, **(base_sections or {})))
    data = {"study": {"name": "s", "sampler": "grid", "pruner": "none", **(study or {})}, "base": "base.yaml",
            "space": space, "out_dir": str(tmp_path / "out")}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _study(tmp_path: Path) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path}/out/optuna.db")


@pytest.fixture
def fails_once_in_epoch_2(monkeypatch):
    """The first trial to reach its second epoch fails there, with a storage URL in its message (a disk or
    network error naming where it wrote); every later step trains normally. Epoch 1's checkpoint is on disk."""
    armed = {"on": True}
    step = ClassificationModule.training_step

    def training_step(self, batch, batch_idx):
        if armed["on"] and self.current_epoch == 1:
            armed["on"] = False
            raise RuntimeError(f"lost the connection to {SECRET_URL} while writing")
        return step(self, batch, batch_idx)

    monkeypatch.setattr(ClassificationModule, "training_step", training_step)
    return armed


@pytest.mark.slow
def test_retry_failed_lists_reasons_and_resumes_each_failed_trial_once(tmp_path, capsys, fails_once_in_epoch_2):
    from irpe_bench.sweep.budget import budget

    # an image size its patch size does not divide is refused when the trial builds its config: "invalid"
    path = _write_sweep(tmp_path, {"model.img_size": {"choices": [16, 18]}, "model.patch_size": {"choices": [4, 3]}})
    assert main(["sweep", str(path), "--no-leaderboard"]) == 0
    trials = _study(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3 + [TrialState.COMPLETE]
    crashed = trials[0]
    assert crashed.params == {"model.img_size": 16, "model.patch_size": 4}
    assert crashed.user_attrs["status"] == "failed"
    assert [t.user_attrs["status"] for t in trials[1:3]] == ["invalid", "invalid"]
    assert crashed.user_attrs["error"] == "RuntimeError: lost the connection to postgresql://bench:***@db.example/" \
                                          "optuna while writing"  # stored redacted
    assert len(crashed.intermediate_values) == 1  # epoch 1 reported, then the crash in epoch 2
    assert budget(_study(tmp_path))["finished"] == 4  # the budget is spent: a plain rerun trains nothing
    capsys.readouterr()

    assert main(["sweep", str(path), "--retry-failed", "--no-leaderboard"]) == 0
    err = capsys.readouterr().err
    assert f"--retry-failed: trial 0 {crashed.user_attrs['variant']}: RuntimeError: lost the connection to " \
           "postgresql://bench:***@db.example/optuna while writing" in err
    assert "--retry-failed: trial 1 " in err and "model.img_size=16 is not divisible by model.patch_size=3" in err
    assert err.count("not retried: an invalid configuration") == 2 and "1 of 3 failed trial(s) queued again" in err
    assert "hunter2pw" not in err
    trials = _study(tmp_path).trials
    assert len(trials) == 5 and trials[4].state == TrialState.COMPLETE
    retry = trials[4]
    assert retry.params == crashed.params and retry.user_attrs["retry_of"] == 0
    assert retry.user_attrs["run_dir"] == crashed.user_attrs["run_dir"]
    assert retry.system_attrs["retry_history"] == [0]
    summary = json.loads((Path(retry.user_attrs["run_dir"]) / "summary.json").read_text())
    assert summary["resumed_from"].endswith("last.ckpt") and summary["epochs"] == 2
    assert summary["global_step"] == 2 * 4  # epoch 1 from the checkpoint, epoch 2 trained again: no repeat
    assert len(summary[K.TRAIN_IMG_S_EPOCHS]) == 2  # the speed of epoch 1 came back with the checkpoint
    c = budget(_study(tmp_path))
    assert (c["finished"], c["retried"], c["complete"], c["failed"]) == (4, 1, 2, 2)

    # a second --retry-failed: trial 0 has its copy; only the invalid one is listed, nothing is queued
    assert main(["sweep", str(path), "--retry-failed", "--no-leaderboard"]) == 0
    err = capsys.readouterr().err
    assert "trial 0 " not in err and "--retry-failed: trial 1 " in err and "0 of 2 failed trial(s)" in err
    assert len(_study(tmp_path).trials) == 5


@pytest.mark.slow
def test_trial_timeout_fails_the_slow_trial_and_the_sweep_goes_on(tmp_path):
    # 1000 epochs of two batches cannot end in 3 s; one epoch, set-up included, ends well within it
    path = _write_sweep(tmp_path, {"trainer.max_epochs": {"choices": [1000, 1]}}, study={"trial_timeout_s": 3},
                        base_sections={"trainer": {"limit_train_batches": 2, "limit_val_batches": 1},
                                       "optim": {"warmup_epochs": 0}})
    assert main(["sweep", str(path), "--no-leaderboard"]) == 0
    slow, quick = _study(tmp_path).trials
    assert slow.state == TrialState.FAIL and slow.user_attrs["status"] == "failed"
    m = re.fullmatch(r"trial_timeout_s=3 exceeded after (\d+) epochs?", slow.user_attrs["error"])
    assert m, slow.user_attrs["error"]
    assert 1 <= int(m[1]) < 1000 and len(slow.intermediate_values) == int(m[1])
    summary = json.loads((Path(slow.user_attrs["run_dir"]) / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["error"] == f"TimeLimitExceeded: {slow.user_attrs['error']}"
    assert quick.state == TrialState.COMPLETE and quick.params == {"trainer.max_epochs": 1}
    with pytest.raises(ValueError, match=r"trial_timeout_s"):
        from irpe_bench.sweep import load_sweep

        load_sweep(path, {"study": {"trial_timeout_s": 0}})


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}


@pytest.mark.slow
def test_a_trial_killed_after_its_last_epoch_keeps_its_speed_and_final_accuracy(tmp_path):
    """Killed while testing and benchmarking (its last epoch checkpointed), the trial is retried by the heartbeat
    and resumes with nothing left to train: its row must still show the speed measured before the kill and its
    final validation accuracy, not "—"."""
    from irpe_bench.report.leaderboard import collect

    path = _write_sweep(tmp_path, {"model.rpe.method": {"choices": ["product"]}},
                        study={"heartbeat_s": 1, "grace_s": 3},
                        base_sections={"trainer": {"benchmark_batches": 400}})  # a long window after the last epoch
    last = None
    proc = start(["sweep", str(path), "--no-leaderboard"], env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                 stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while proc.poll() is None and time.time() < deadline:
            found = list((tmp_path / "out" / "runs").glob("trial-0000-*/checkpoints/last.ckpt"))
            if found:
                try:
                    ckpt = torch.load(found[0], map_location="cpu", weights_only=True)
                except Exception:  # noqa: BLE001 - being written
                    ckpt = None
                if ckpt is not None and ckpt["global_step"] == 2 * 4:  # the last epoch's checkpoint
                    last = ckpt
                    break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL and last is not None, proc.stderr.read().decode()[-3000:]
    run_dir = found[0].parents[1]
    assert not (run_dir / "summary.json").exists()  # killed before the summary
    measured = last["callbacks"]["TrainThroughput"]["epochs"]
    assert len(measured) == 2 and all(x > 0 for x in measured)

    assert main(["sweep", str(path)]) == 0  # waits out the grace period; the retry resumes at the end
    study = _study(tmp_path)
    killed, retry = study.trials
    assert killed.state == TrialState.FAIL and retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"].endswith("last.ckpt") and summary["epochs"] == 2
    assert summary[K.TRAIN_IMG_S_EPOCHS] == measured  # nothing new timed: the speed from before the kill
    assert summary[K.MONITOR] == retry.intermediate_values[1]  # the last epoch's val/acc1, as reported then
    group = collect(study).groups[0]
    assert group.train_img_s == retry.user_attrs[K.TRAIN_IMG_S] == statistics.median(measured)
    assert group.acc1_final_mean == pytest.approx(summary[K.MONITOR])
    row = next(line for line in (tmp_path / "out" / "trials.csv").read_text().splitlines()
               if line.startswith(f"{retry.number},"))
    assert f",{retry.user_attrs[K.TRAIN_IMG_S]}," in row
