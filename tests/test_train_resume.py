"""A run SIGKILLed during epoch 2 and resumed with ``--resume RUN_DIR`` ends exactly where an uninterrupted run does."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from irpe_bench.cli import main
from irpe_bench.train import train

from ._train_helpers import tiny_config, tiny_dict, write_yaml

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = dict(trainer={"max_epochs": 3, "limit_train_batches": None, "limit_val_batches": None,
                         "benchmark_batches": 0},
                data={"auto_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "mixup": 0.8, "cutmix": 1.0})


def _child_env() -> dict:
    # one thread, like the in-process runs (conftest), so float reductions split the same way
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline",
            "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_killed_and_resumed_equals_uninterrupted(tmp_path):
    reference = train(tiny_config(tmp_path, **SECTIONS), run_dir=tmp_path / "reference")

    cfg = write_yaml(tmp_path / "c.yaml", tiny_dict(tmp_path, **SECTIONS))
    run_dir = tmp_path / "killed"
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen([sys.executable, str(ROOT / "run.py"), "train", str(cfg), "--run-dir", str(run_dir)],
                            env=_child_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
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
