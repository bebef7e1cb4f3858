"""Two CPU processes (DDP, gloo) through the real CLI: one run directory, data split across ranks, lr scaled."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ._train_helpers import tiny_dict, write_yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    data = tiny_dict(tmp_path, trainer={"devices": 2, "strategy": "ddp", "max_epochs": 2, "limit_train_batches": 3,
                                        "limit_val_batches": None},
                     optim={"scale_lr": True, "lr": 5e-4})
    cfg = write_yaml(tmp_path / "ddp.yaml", data)
    run_dir = tmp_path / "ddp_run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "train", str(cfg), "--run-dir", str(run_dir)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "finished"
    assert summary["global_step"] == 2 * 3  # each rank steps through its own 3 batches per epoch
    assert 0.0 <= summary["val/acc1"] <= 100.0
    # global batch 2 × 32 = 64 → lr 5e-4 × 64 / 512 at the warmup's end (warmup 1 epoch, then cosine)
    rows = [line.split(",") for line in (run_dir / "csv" / "metrics.csv").read_text().splitlines()]
    header, body = rows[0], rows[1:]
    lrs = [float(r[header.index("train/lr")]) for r in body if r[header.index("train/lr")]]
    assert max(lrs) <= 5e-4 * 64 / 512 + 1e-12 and max(lrs) > 5e-4 * 32 / 512
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.yaml", "ddp_run"]  # one run dir for both ranks
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
