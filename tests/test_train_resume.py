"""A run SIGKILLed during epoch 2 and resumed with ``--resume RUN_DIR`` ends exactly where an uninterrupted run does."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from irpe_bench.cli import main
from irpe_bench.train import train

from ._processes import start
from ._train_helpers import tiny_config, tiny_dict, write_yaml

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = dict(trainer={"max_epochs": 3, "limit_train_batches": None, "limit_val_batches": None,
                         "benchmark_batches": 0},
                data={"auto_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "mixup": 0.8, "cutmix": 1.0})


def _child_env() -> dict:
    # one thread, like the in-process runs (conftest), so float reductions split the same way
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline"}


@pytest.mark.slow
def test_killed_and_resumed_equals_uninterrupted(tmp_path):
    reference = train(tiny_config(tmp_path, **SECTIONS), run_dir=tmp_path / "reference")

    cfg = write_yaml(tmp_path / "c.yaml", tiny_dict(tmp_path, **SECTIONS))
    run_dir = tmp_path / "killed"
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = start(["train", str(cfg), "--run-dir", str(run_dir)], env=_child_env(), cwd=ROOT,
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while not last.is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        size = -1
        while last.is_file() and last.stat().st_size != size:  # let the write of epoch 1's checkpoint finish
            size = last.stat().st_size
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (run_dir / "summary.json").exists()
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] < 2  # killed before the last epoch ended

    assert main(["train", "--resume", str(run_dir)]) == 0
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["resumed_from"].endswith("last.ckpt") and resumed["epochs"] == 3
    assert resumed["global_step"] == reference["global_step"]
    assert resumed["metrics"] == reference["metrics"]
    assert resumed["val/acc1_best"] == reference["val/acc1_best"]
    # the test split is evaluated on the same validation-chosen checkpoint, whether or not the run was killed
    assert resumed["selection"] == reference["selection"] == "best_val"
    assert resumed["test/epoch"] == reference["test/epoch"]
    assert resumed["test/acc1"] == reference["test/acc1"] and resumed["test/loss"] == reference["test/loss"]
    assert resumed["wandb_id"] == json.loads((run_dir / "run.json").read_text())["wandb_id"]


def _as_fractions(checkpoint: dict) -> dict:
    """A checkpoint as the code before percent accuracies wrote it (the inverse of ``upgrade_checkpoint``)."""
    from irpe_bench.keys import ACC_UNIT, MONITOR

    old = dict(checkpoint)
    old.pop(ACC_UNIT)
    old["best_acc1"] = checkpoint["best_acc1"] / 100
    old["callbacks"] = {}
    for key, state in checkpoint["callbacks"].items():
        state = dict(state)
        if key.startswith("ModelCheckpoint") and state.get("monitor") == MONITOR:
            for name in ("best_model_score", "kth_value", "current_score"):
                if state.get(name) is not None:
                    state[name] = state[name] / 100
            state["best_k_models"] = {p: v / 100 for p, v in state["best_k_models"].items()}
        if isinstance(state.get("metrics"), dict):
            state["metrics"] = {k: v / 100 if "acc" in k else v for k, v in state["metrics"].items()}
        old["callbacks"][key] = state
    return old


def test_a_run_begun_with_fraction_accuracies_resumes_in_percent(tmp_path):
    """Accuracies are percent in every file; a checkpoint written before (fractions) is converted as it loads, so
    the resumed run's best-so-far, the checkpoint it tests and its summary are all in percent, never mixed."""
    from irpe_bench.keys import ACC_UNIT, MONITOR, MONITOR_BEST, PERCENT
    from irpe_bench.train.module import upgrade_checkpoint

    sections = dict(trainer={"max_epochs": 2, "benchmark_batches": 0})
    first = train(tiny_config(tmp_path, **sections), run_dir=tmp_path / "run")
    assert 1.0 < first[MONITOR_BEST] <= 100.0 and 0.0 <= first["test/acc1"] <= 100.0  # percent
    assert Path(first["best_checkpoint"]).name.startswith("epoch") and "val_acc1_" in first["best_checkpoint"]
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt[ACC_UNIT] == PERCENT and ckpt["best_acc1"] == pytest.approx(first[MONITOR_BEST])

    old = _as_fractions(ckpt)  # round trip: the conversion restores every score the callbacks compare
    upgrade_checkpoint(old)
    assert old["best_acc1"] == pytest.approx(ckpt["best_acc1"]) and old[ACC_UNIT] == PERCENT
    for key, state in ckpt["callbacks"].items():
        for name in ("best_model_score", "kth_value", "current_score"):
            if torch.is_tensor(state.get(name)):
                assert torch.allclose(old["callbacks"][key][name], state[name]), (key, name)

    torch.save(_as_fractions(ckpt), last)  # the run as the older code left it, resumed at its last epoch
    again = train(tiny_config(tmp_path, **sections), run_dir=tmp_path / "run", resume_from=last)
    assert again[MONITOR_BEST] == pytest.approx(first[MONITOR_BEST])  # percent, not the stored fraction
    assert again[MONITOR] == pytest.approx(first[MONITOR])
    assert again["test/acc1"] == pytest.approx(first["test/acc1"]) and again["best_checkpoint"] == \
        first["best_checkpoint"]
