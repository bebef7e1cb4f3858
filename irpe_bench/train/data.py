"""The datasets a config can name, behind the registry of :mod:`.datamodule`: the embedded ``digits`` (default),
``mnist`` and ``relpos`` (:mod:`.embedded_data`, offline, registered on import here), ``cifar10``/``cifar100``,
``imagefolder``, ``synthetic``; and :func:`build_datamodule`, the one entry point.

Each provides three splits: train, validation (chooses the epoch; None when ``data.val_fraction`` is 0) and test
(reported, never used to choose anything). The splits are fixed by ``data.split_seed``, never by the model seed:
every variant and every seed sees the same validation and test images. The embedded sets and synthetic hold out
``test_fraction`` of all images as test; CIFAR tests on its official test set and an image folder on its ``val/``
folder; validation is ``val_fraction`` of the remaining training images, stratified by class. What every
DataModule shares (the seeded sampler, timm's transforms, the loaders, the splits) is :mod:`.datamodule`.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Tuple

import torch
from torch.utils.data import Dataset

from . import embedded_data  # noqa: F401  (registers digits, mnist, relpos)
from .datamodule import ImageDataModule, carve_validation
from .datasets import DATAMODULES, register_datamodule

if TYPE_CHECKING:
    from .config import DataConfig

__all__ = ["DATAMODULES", "ImageDataModule", "build_datamodule", "register_datamodule"]


class _CIFAR(ImageDataModule):
    folder = ""
    classes = 0

    @property
    def num_classes(self) -> int:
        return self.classes

    def check(self) -> None:
        where = Path(self.config.root or ".") / self.folder
        if not self.config.download and not where.is_dir():
            raise ValueError(f"{self.name}: no data at {str(where)!r} (data.root={self.config.root!r}); put the "
                             f"extracted '{self.folder}' folder there, or set data.download=true on a machine "
                             "with network access")

    def prepare_data(self) -> None:
        if self.config.download:
            self._tv(True, download=True)
            self._tv(False, download=True)

    def _tv(self, train: bool, download: bool = False):
        from torchvision import datasets

        cls = datasets.CIFAR10 if self.classes == 10 else datasets.CIFAR100
        return cls(self.config.root, train=train, download=download)

    def datasets(self) -> Tuple[Dataset, Optional[Dataset], Dataset]:
        """Official test set as test; validation carved from the 50,000 training images."""
        test = self._tv(False)
        test.transform = self.transform(False)
        train = self._tv(True)
        train, val = carve_validation(self, train, train.targets)
        return train, val, test


@register_datamodule("cifar10")
class CIFAR10DataModule(_CIFAR):
    folder, classes = "cifar-10-batches-py", 10
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@register_datamodule("cifar100")
class CIFAR100DataModule(_CIFAR):
    folder, classes = "cifar-100-python", 100
    mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


@register_datamodule("imagefolder")
class ImageFolderDataModule(ImageDataModule):
    """ImageNet-style ``root/train/<class>/*`` and ``root/val/<class>/*`` read by timm's dataset factory.

    ``val/`` is the test split (the paper reports ImageNet val); validation, when ``val_fraction > 0``, is carved
    from ``train/``; with ``val_fraction: 0`` the final epoch is reported.
    """

    def _split_dir(self, split: str) -> Path:
        return Path(self.config.root or ".") / split

    @property
    def num_classes(self) -> int:
        return sum(1 for p in self._split_dir("train").iterdir() if p.is_dir())

    def check(self) -> None:
        for split in ("train", "val"):
            d = self._split_dir(split)
            if not d.is_dir():
                raise ValueError(f"imagefolder: {str(d)!r} is missing (data.root={self.config.root!r}); expected "
                                 "class folders under root/train/ and root/val/")
        if self.num_classes < 2:
            raise ValueError(f"imagefolder: {str(self._split_dir('train'))!r} holds fewer than 2 class folders")

    def datasets(self) -> Tuple[Dataset, Optional[Dataset], Dataset]:
        from timm.data import create_dataset

        train = create_dataset("", root=str(self._split_dir("train")), transform=self.transform(True))
        test = create_dataset("", root=str(self._split_dir("val")), transform=self.transform(False))
        if train.reader.class_to_idx != test.reader.class_to_idx:
            raise ValueError(f"imagefolder: class folders differ between train/ and val/ under {self.config.root!r}")
        train, val = carve_validation(self, train, [t for _, t in train.reader.samples])
        return train, val, test


class _RandomImages(Dataset):
    """A small pool of fixed random images cycled to ``length``: data loading must not be the bottleneck."""

    def __init__(self, length: int, img_size: int, num_classes: int, seed: int, pool: int = 64) -> None:
        g = torch.Generator().manual_seed(seed)
        self.length = length
        self.images = torch.randn(min(pool, length), 3, img_size, img_size, generator=g)
        self.labels = torch.randint(0, num_classes, (length,), generator=g)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        return self.images[i % len(self.images)], int(self.labels[i])


@register_datamodule("synthetic")
class SyntheticDataModule(ImageDataModule):
    """Random tensors of the model's input shape, for throughput runs (accuracy is meaningless)."""

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def datasets(self) -> Tuple[Dataset, Optional[Dataset], Dataset]:
        """``num_samples`` training images; validation and test sized by their fractions of it (at least 2)."""
        c, s = self.config, self.config.split_seed
        size = lambda f: max(2, round(c.num_samples * f))  # noqa: E731
        val = _RandomImages(size(c.val_fraction), self.img_size, c.num_classes, s + 1) if c.has_validation else None
        return (_RandomImages(c.num_samples, self.img_size, c.num_classes, s), val,
                _RandomImages(size(c.test_fraction), self.img_size, c.num_classes, s + 2))


def build_datamodule(config: DataConfig, img_size: int, seed: int) -> ImageDataModule:
    return DATAMODULES.lookup(config.name)(config, img_size, seed)
