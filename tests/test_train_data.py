"""DataModules: digits split, an ImageNet-style folder of PNGs written here, synthetic tensors, CIFAR's missing root."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from irpe_bench.train import train
from irpe_bench.train.config import DataConfig
from irpe_bench.train.data import DATAMODULES, build_datamodule

from ._train_helpers import tiny_config


def test_registry_names():
    assert set(DATAMODULES) == {"digits", "cifar10", "cifar100", "imagefolder", "synthetic"}


def test_digits_split_is_stratified_and_seeded():
    dm = build_datamodule(DataConfig(name="digits", auto_augment=None, reprob=0.0), 16, seed=3)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) == 1797 and len(dm.val_set) == 360
    counts = np.bincount(dm.val_set.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified
    again = build_datamodule(DataConfig(name="digits"), 16, seed=3)
    again.setup()
    assert np.array_equal(again.val_set.labels, dm.val_set.labels)
    x, y = dm.val_set[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= y < 10
    other = build_datamodule(DataConfig(name="digits"), 16, seed=4)
    other.setup()
    assert not np.array_equal(other.val_set.labels, dm.val_set.labels)


def _write_folder(root, classes=("cat", "dog", "fox"), per_class=(6, 2)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")


def test_imagefolder_trains_on_pngs(tmp_path):
    _write_folder(tmp_path / "imgs")
    config = tiny_config(tmp_path, data={"name": "imagefolder", "root": str(tmp_path / "imgs"), "batch_size": 6,
                                         "auto_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "mixup": 0.8,
                                         "cutmix": 1.0},
                         trainer={"max_epochs": 1, "limit_train_batches": None, "benchmark_batches": 1})
    dm = build_datamodule(config.data, 16, 0)
    dm.check()
    dm.setup()
    assert dm.num_classes == 3 and len(dm.train_set) == 18 and len(dm.val_set) == 6
    x, y = dm.train_set[0]
    assert x.shape == (3, 16, 16) and y in (0, 1, 2)
    summary = train(config, run_dir=tmp_path / "run")
    assert summary["status"] == "finished" and summary["global_step"] == 3  # 18 images / batch 6
    assert any(summary["metrics"]["val/acc1"] == pytest.approx(i / 6) for i in range(7))  # 6 val images


def test_imagefolder_missing_val(tmp_path):
    (tmp_path / "imgs" / "train" / "a").mkdir(parents=True)
    dm = build_datamodule(DataConfig(name="imagefolder", root=str(tmp_path / "imgs")), 16, 0)
    with pytest.raises(ValueError, match="val.*is missing"):
        dm.check()


def test_synthetic_shapes_and_throughput_run(tmp_path):
    config = tiny_config(tmp_path, data={"name": "synthetic", "num_samples": 64, "num_classes": 7},
                         trainer={"max_epochs": 1, "limit_train_batches": None, "benchmark_batches": 2})
    dm = build_datamodule(config.data, 16, 0)
    dm.setup()
    x, y = dm.train_set[5]
    assert x.shape == (3, 16, 16) and 0 <= y < 7 and len(dm.train_set) == 64 and dm.num_classes == 7
    summary = train(config, run_dir=tmp_path / "syn")
    assert summary["global_step"] == 2 and summary["throughput/infer_img_s"] > 0
    assert summary["throughput/train_img_s"] > 0  # 2 batches, first skipped


def test_cifar_missing_root_message(tmp_path):
    dm = build_datamodule(DataConfig(name="cifar100", root=str(tmp_path)), 32, 0)
    with pytest.raises(ValueError) as e:
        dm.check()
    assert "cifar-100-python" in str(e.value) and "data.download=true" in str(e.value)
