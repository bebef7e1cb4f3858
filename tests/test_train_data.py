"""DataModules: the train/val/test splits (fixed by split_seed, never by the model seed), an ImageNet-style folder of
PNGs written here (val/ is the test set), synthetic tensors, CIFAR's missing root."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from irpe_bench.train import train
from irpe_bench.train.config import DataConfig
from irpe_bench.train.data import DATAMODULES, build_datamodule

from ._train_helpers import tiny_config


def test_registry_names():
    assert set(DATAMODULES) == {"digits", "mnist", "relpos", "cifar10", "cifar100", "imagefolder", "synthetic"}


def test_every_declared_dataset_is_registered_by_its_module():
    """The config validates names against declarations (no import); each resolves to the class its module registers."""
    from irpe_bench.rpe.registry import Declared, Registry
    from irpe_bench.train.datamodule import ImageDataModule

    for name in sorted(DATAMODULES):
        cls = DATAMODULES.lookup(name)
        assert issubclass(cls, ImageDataModule) and cls.name == name and not isinstance(DATAMODULES[name], Declared)
    reg = Registry("thing")
    reg.declare("ghost", "irpe_bench.keys")  # a module that registers nothing
    with pytest.raises(RuntimeError, match="importing irpe_bench.keys did not register it"):
        reg.lookup("ghost")
    with pytest.raises(ValueError, match=r"unknown thing 'x'; choices: \['ghost'\]"):
        reg.check("x")


def test_digits_split_is_stratified_fixed_by_split_seed_not_by_seed():
    dm = build_datamodule(DataConfig(name="digits", auto_augment=None, reprob=0.0), 16, seed=3)
    dm.setup()
    # test: 25 % of 1,797 (rounded up); validation: 20 % of the remaining 1,347; train: the rest
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (1077, 270, 450)
    for ds, n in ((dm.val_set, 270), (dm.test_set, 450)):
        counts = np.bincount(ds.labels, minlength=10)
        assert counts.min() >= n // 10 - 2 and counts.max() <= n // 10 + 2  # stratified (classes of 174..183)
    splits = [set(ds.indices.tolist()) for ds in (dm.train_set, dm.val_set, dm.test_set)]
    assert set.union(*splits) == set(range(1797)) and sum(map(len, splits)) == 1797  # disjoint, complete
    x, y = dm.test_set[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= y < 10
    for seed in (0, 4):  # the model seed changes nothing: every seed sees the same validation and test images
        again = build_datamodule(DataConfig(name="digits"), 16, seed=seed)
        again.setup()
        assert np.array_equal(again.val_set.indices, dm.val_set.indices)
        assert np.array_equal(again.test_set.indices, dm.test_set.indices)
    other = build_datamodule(DataConfig(name="digits", split_seed=1), 16, seed=3)
    other.setup()
    assert not np.array_equal(other.test_set.indices, dm.test_set.indices)
    assert not np.array_equal(other.val_set.indices, dm.val_set.indices)


def test_digits_without_validation_keeps_the_same_test_split():
    with_val = build_datamodule(DataConfig(), 16, 0)
    without = build_datamodule(DataConfig(val_fraction=0), 16, 0)
    with_val.setup()
    without.setup()
    assert without.val_set is None and len(without.train_set) == 1347 and without.val_dataloader() == []
    assert np.array_equal(without.test_set.indices, with_val.test_set.indices)


@pytest.mark.parametrize("data, message", [
    ({"name": "cifar10", "root": "x", "test_fraction": 0.2}, "data.test_fraction=0.2: data.name='cifar10' tests on "
                                                             "the official test set; leave test_fraction unset"),
    ({"name": "imagefolder", "root": "x", "test_fraction": 0.1}, "tests on its val/ folder"),
    ({"test_fraction": 0.9, "val_fraction": 0.6}, "leaves 4% of the images for training; allowed: more than 5%"),
    ({"test_fraction": 0.0}, "data.test_fraction: Input should be greater than 0"),
    ({"val_fraction": 1.0}, "data.val_fraction: Input should be less than 1"),
    ({"split_seed": -1}, "data.split_seed: Input should be greater than or equal to 0"),
])
def test_bad_split_settings_fail_before_work(data, message):
    from irpe_bench.train.config import build_config

    with pytest.raises(ValueError) as e:
        build_config({"data": data})
    assert message in str(e.value)


def test_split_defaults_and_round_trip():
    from irpe_bench.train.config import build_config

    assert DataConfig().test_fraction == 0.25 and DataConfig(name="synthetic").test_fraction == 0.25
    assert DataConfig(name="cifar10", root="x").test_fraction is None
    c = build_config({"data": {"split_seed": 3, "val_fraction": 0.1}})
    assert build_config(c.model_dump(mode="json")) == c and c.data.split_seed == 3


def _write_folder(root, classes=("cat", "dog", "fox"), per_class=(6, 2)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per_class):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(root / split / c / f"{i}.png")


def test_imagefolder_trains_on_pngs(tmp_path):
    """val/ is the test split; validation is carved from train/ (stratified: 1 of each class's 6 at 0.2 → 4 images,
    at least one per class) and chooses the epoch tested on val/."""
    _write_folder(tmp_path / "imgs")
    config = tiny_config(tmp_path, data={"name": "imagefolder", "root": str(tmp_path / "imgs"), "batch_size": 6,
                                         "auto_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "mixup": 0.8,
                                         "cutmix": 1.0},
                         trainer={"max_epochs": 1, "limit_train_batches": None, "benchmark_batches": 1})
    dm = build_datamodule(config.data, 16, 0)
    dm.check()
    dm.setup()
    assert dm.num_classes == 3 and (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (14, 4, 6)
    assert sorted({int(dm.val_set[i][1]) for i in range(4)}) == [0, 1, 2]
    assert set(dm.train_set.indices).isdisjoint(dm.val_set.indices)
    assert dm.val_set.dataset.transform is not dm.train_set.dataset.transform  # evaluated without augmentation
    x, y = dm.train_set[0]
    assert x.shape == (3, 16, 16) and y in (0, 1, 2)
    summary = train(config, run_dir=tmp_path / "run")
    assert summary["status"] == "finished" and summary["global_step"] == 2  # 14 images / batch 6, drop_last
    assert any(summary["metrics"]["val/acc1"] == pytest.approx(100 * i / 4) for i in range(5))  # 4 val images
    assert any(summary["test/acc1"] == pytest.approx(100 * i / 6) for i in range(7))  # the 6 images of val/
    assert summary["selection"] == "best_val" and summary["test/epoch"] == 1


def test_imagefolder_without_validation_reports_the_final_epoch(tmp_path):
    _write_folder(tmp_path / "imgs")
    config = tiny_config(tmp_path, data={"name": "imagefolder", "root": str(tmp_path / "imgs"), "batch_size": 6,
                                         "val_fraction": 0},
                         trainer={"max_epochs": 2, "limit_train_batches": None, "benchmark_batches": 0})
    dm = build_datamodule(config.data, 16, 0)
    dm.setup()
    assert dm.val_set is None and len(dm.train_set) == 18
    summary = train(config, run_dir=tmp_path / "run")
    assert summary["status"] == "finished" and summary["global_step"] == 6
    assert summary["selection"] == "final" and summary["test/epoch"] == 2
    assert summary["val/acc1"] is None and summary["val/acc1_best"] is None
    assert not any(k.startswith("val/") for k in summary["metrics"])  # validation never ran
    assert any(summary["test/acc1"] == pytest.approx(100 * i / 6) for i in range(7))


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
    assert (len(dm.val_set), len(dm.test_set)) == (13, 16)  # 0.2 and 0.25 of 64
    other_seed = build_datamodule(config.data, 16, 5)
    other_seed.setup()
    assert torch.equal(other_seed.test_set.images, dm.test_set.images)  # fixed by split_seed, not seed
    summary = train(config, run_dir=tmp_path / "syn")
    assert summary["global_step"] == 2 and summary["throughput/infer_img_s"] > 0
    assert summary["throughput/train_img_s"] > 0  # 2 batches, first skipped
    assert any(summary["test/acc1"] == pytest.approx(100 * i / 16) for i in range(17))


def test_cifar_missing_root_message(tmp_path):
    dm = build_datamodule(DataConfig(name="cifar100", root=str(tmp_path)), 32, 0)
    with pytest.raises(ValueError) as e:
        dm.check()
    assert "cifar-100-python" in str(e.value) and "data.download=true" in str(e.value)
