"""Tiny real training configs for the train tests: 16×16 digits, patch 4, width 32, depth 2, a few batches."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import yaml

from irpe_bench.train.config import TrainConfig, build_config, merge

TINY: Dict[str, Any] = {
    "seed": 0,
    "model": {"name": "deit_tiny_patch16_224", "img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2,
              "num_heads": 2, "mlp_ratio": 2.0, "drop_path_rate": 0.1,
              "rpe": {"method": "product", "mode": "contextual", "on": "k"}},
    "data": {"name": "digits", "batch_size": 32, "auto_augment": None, "reprob": 0.0, "hflip": 0.0,
             "scale": [0.8, 1.0], "mixup": 0.0, "cutmix": 0.0},
    "optim": {"lr": 2e-3, "scale_lr": False, "warmup_epochs": 1, "step_on_epochs": False},
    "trainer": {"max_epochs": 2, "accelerator": "cpu", "precision": "32-true", "limit_train_batches": 4,
                "limit_val_batches": 2, "limit_test_batches": 2, "enable_progress_bar": False, "log_every_n_steps": 1,
                "throughput_skip_steps": 1, "benchmark_batches": 2},
    "log": {"wandb": False},
}


def tiny_dict(tmp_path: Path, **sections: Dict[str, Any]) -> Dict[str, Any]:
    d = merge(TINY, {"log": {"runs_dir": str(tmp_path / "runs")}})
    return merge(d, sections)


def tiny_config(tmp_path: Path, **sections: Dict[str, Any]) -> TrainConfig:
    return build_config(tiny_dict(tmp_path, **sections))


def write_yaml(path: Path, data: Dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path
