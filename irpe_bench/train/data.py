"""LightningDataModules behind one registry: ``digits`` (default, offline), ``cifar10``/``cifar100``, ``imagefolder``,
``synthetic``.

Every image dataset goes through the same timm ``create_transform`` pipeline (RandAugment, random erasing, …) so
that small datasets exercise the ImageNet recipe's code path. The training sampler is always a seeded
``DistributedSampler`` (world size 1 on one device) and Lightning calls its ``set_epoch``: the data order is a pure
function of (seed, epoch), which is what lets a killed run resume with the same order. The sampler also reseeds the
global RNGs when an epoch's data stream starts (see :class:`EpochSeededSampler`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..rpe.registry import Registry
from .config import DataConfig

#: name -> DataModule class; ``data.name`` in configs, CLI choices and tests read its keys.
DATAMODULES = Registry("dataset")
register_datamodule = DATAMODULES.register


def _posterize_zero_bits_compat() -> None:
    """Let timm's RandAugment posterize to 0 bits again, as the DeiT recipe did.

    NOTE: ``rand-m9-mstd0.5-inc1`` samples magnitude 10 about 2% of the time; ``PosterizeIncreasing`` then asks
    Pillow for 0 bits, which Pillow >= 10 rejects with a ValueError mid-epoch (old Pillow, used by DeiT, returned a
    black image). We restore the old result instead of clipping the magnitude (``mmax9``), which would change the
    augmentation distribution of the recipe.
    """
    from PIL import Image
    from timm.data import auto_augment as aa

    original = aa.posterize
    if getattr(original, "_zero_bits_compat", False):
        return

    def posterize(img, bits_to_keep, **kwargs):
        if bits_to_keep >= 8:
            return img
        if bits_to_keep <= 0:
            return Image.new(img.mode, img.size)
        return original(img, bits_to_keep, **kwargs)

    posterize._zero_bits_compat = True
    aa.posterize = posterize
    for name, fn in list(aa.NAME_TO_OP.items()):
        if fn is original:
            aa.NAME_TO_OP[name] = posterize


class EpochSeededSampler(DistributedSampler):
    """``DistributedSampler`` that reseeds torch/numpy/random from (seed, epoch, rank) when iteration starts.

    Augmentations, mixup and drop path then depend only on the epoch, not on how the process got there. NOTE: the
    reseed is here, at the first fetch of an epoch, rather than in ``on_train_epoch_start``, because on resume
    Lightning creates the iterator and prefetches the first batch before that hook; iteration start is the one
    point both paths share. With ``num_workers > 0`` the workers' seeds come from the loader's generator, which
    ``set_epoch`` reseeds too.
    """

    def __init__(self, *args, loader_generator: Optional[torch.Generator] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.loader_generator = loader_generator

    def _epoch_seed(self) -> int:
        return int(np.random.SeedSequence([self.seed, self.epoch, self.rank]).generate_state(1)[0])

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self.loader_generator is not None:
            self.loader_generator.manual_seed(self._epoch_seed())

    def __iter__(self):
        pl.seed_everything(self._epoch_seed(), workers=True, verbose=False)
        return super().__iter__()


class ImageDataModule(pl.LightningDataModule):
    """Shared loaders and transforms; subclasses say where the images come from."""

    name = ""
    mean: Tuple[float, ...] = (0.485, 0.456, 0.406)  # timm's IMAGENET_DEFAULT_*
    std: Tuple[float, ...] = (0.229, 0.224, 0.225)

    def __init__(self, config: DataConfig, img_size: int, seed: int = 0) -> None:
        super().__init__()
        self.config, self.img_size, self.seed = config, img_size, seed
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None

    # ---- what subclasses provide
    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def check(self) -> None:
        """Fail with a clear message before any training when the data is not where it should be."""

    def datasets(self) -> Tuple[Dataset, Dataset]:
        raise NotImplementedError

    # ---- shared
    def transform(self, training: bool):
        from timm.data import create_transform

        c = self.config
        _posterize_zero_bits_compat()
        return create_transform(
            input_size=(3, self.img_size, self.img_size), is_training=training, scale=c.scale, hflip=c.hflip,
            color_jitter=c.color_jitter, auto_augment=c.auto_augment, interpolation=c.interpolation,
            re_prob=c.reprob, re_mode="pixel", re_count=1, mean=self.mean, std=self.std,
            crop_pct=c.crop_pct if c.crop_pct is not None else (1.0 if self.img_size <= 64 else 0.875),
        )

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self.datasets()

    def _world(self) -> Tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        world, rank = self._world()
        generator = torch.Generator().manual_seed(self.seed)
        sampler = EpochSeededSampler(self.train_set, num_replicas=world, rank=rank, shuffle=True, seed=self.seed,
                                     drop_last=True, loader_generator=generator)
        return DataLoader(self.train_set, batch_size=self.config.batch_size, sampler=sampler, drop_last=True,
                          generator=generator,
                          num_workers=self.config.num_workers, pin_memory=torch.cuda.is_available(),
                          persistent_workers=False)

    def val_dataloader(self) -> DataLoader:
        world, rank = self._world()
        bs = self.config.eval_batch_size or int(1.5 * self.config.batch_size)
        sampler = DistributedSampler(self.val_set, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(self.val_set, batch_size=bs, sampler=sampler, num_workers=self.config.num_workers,
                          pin_memory=torch.cuda.is_available())


class _ArrayImages(Dataset):
    """uint8 HxW grey images in memory, served as PIL RGB so timm's transforms apply unchanged."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.images[i], mode="L").convert("RGB")
        return self.transform(img), int(self.labels[i])


@register_datamodule("digits")
class DigitsDataModule(ImageDataModule):
    """scikit-learn's 1,797 real 8×8 handwritten digits (shipped with the library: never downloads).

    The 8×8 images are upsampled by the transforms' resize to ``img_size``; the stratified train/val split is
    fixed by the seed.
    """

    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    @property
    def num_classes(self) -> int:
        return 10

    def datasets(self) -> Tuple[Dataset, Dataset]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # N, 8, 8 in [0, 16] → uint8
        tr, va = train_test_split(np.arange(len(images)), test_size=self.config.val_fraction,
                                  stratify=digits.target, random_state=self.seed)
        return (_ArrayImages(images[tr], digits.target[tr], self.transform(True)),
                _ArrayImages(images[va], digits.target[va], self.transform(False)))


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

    def datasets(self) -> Tuple[Dataset, Dataset]:
        train, val = self._tv(True), self._tv(False)
        train.transform, val.transform = self.transform(True), self.transform(False)
        return train, val


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
    """ImageNet-style ``root/train/<class>/*`` and ``root/val/<class>/*`` read by timm's dataset factory."""

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

    def datasets(self) -> Tuple[Dataset, Dataset]:
        from timm.data import create_dataset

        train = create_dataset("", root=str(self._split_dir("train")), transform=self.transform(True))
        val = create_dataset("", root=str(self._split_dir("val")), transform=self.transform(False),
                             class_map=None)
        if train.reader.class_to_idx != val.reader.class_to_idx:
            raise ValueError(f"imagefolder: class folders differ between train/ and val/ under {self.config.root!r}")
        return train, val


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

    def datasets(self) -> Tuple[Dataset, Dataset]:
        c = self.config
        return (_RandomImages(c.num_samples, self.img_size, c.num_classes, self.seed),
                _RandomImages(max(2, c.num_samples // 4), self.img_size, c.num_classes, self.seed + 1))


def build_datamodule(config: DataConfig, img_size: int, seed: int) -> ImageDataModule:
    return DATAMODULES.lookup(config.name)(config, img_size, seed)
