"""What every DataModule shares: the seeded sampler, timm's transform pipeline, the loaders, and the stratified
splits (fixed by ``data.split_seed``). The datasets themselves live in :mod:`.data` and :mod:`.embedded_data`,
which register into :data:`.datasets.DATAMODULES`.

The training sampler is always a seeded ``DistributedSampler`` (world size 1 on one device) and Lightning calls its
``set_epoch``: the data order is a pure function of (seed, epoch), which is what lets a killed run resume with the
same order. The sampler also reseeds the global RNGs when an epoch's data stream starts (see
:class:`EpochSeededSampler`). Every image dataset goes through the same timm ``create_transform`` pipeline
(RandAugment, random erasing, …) so that small datasets exercise the ImageNet recipe's code path.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

if TYPE_CHECKING:  # NOTE: annotations only (the config validates dataset names by .datasets, never importing this)
    from .config import DataConfig


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
        self.val_set: Optional[Dataset] = None  # None: no validation split (val_fraction 0)
        self.test_set: Optional[Dataset] = None

    # ---- what subclasses provide
    @property
    def num_classes(self) -> int:
        raise NotImplementedError

    def check(self) -> None:
        """Fail with a clear message before any training when the data is not where it should be."""

    def datasets(self) -> Tuple[Dataset, Optional[Dataset], Dataset]:
        """(train, validation or None, test), split by ``config.split_seed``."""
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
            self.train_set, self.val_set, self.test_set = self.datasets()

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

    def _eval_loader(self, dataset: Dataset) -> DataLoader:
        world, rank = self._world()
        bs = self.config.eval_batch_size or int(1.5 * self.config.batch_size)
        # NOTE: DistributedSampler pads to a multiple of the world size (a few images counted twice under DDP)
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        return DataLoader(dataset, batch_size=bs, sampler=sampler, num_workers=self.config.num_workers,
                          pin_memory=torch.cuda.is_available())

    def val_dataloader(self):
        return self._eval_loader(self.val_set) if self.val_set is not None else []

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)


def stratified_split(labels: Sequence[int], fraction: float, seed: int, what: str) -> Tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out) with ``fraction`` of ``labels`` held out, stratified by class and fixed by
    ``seed``; a clear error when a class is too small to be split."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    try:
        kept, held = train_test_split(np.arange(len(labels)), test_size=fraction, stratify=labels,
                                      random_state=seed)
    except ValueError as e:
        raise ValueError(f"cannot hold out {fraction:g} of {len(labels)} images as the {what} split, stratified "
                         f"by class ({e}); change data.{'test' if what == 'test' else 'val'}_fraction") from None
    return np.sort(kept), np.sort(held)


def carve_validation(module: ImageDataModule, train: Dataset, labels: Sequence[int]
                      ) -> Tuple[Dataset, Optional[Dataset]]:
    """Training images (a dataset with a ``transform`` attribute, set to the training transform) → (train,
    validation or None): validation is ``val_fraction`` of them, stratified, by ``split_seed``, and served with
    the evaluation transform (a shallow copy shares the file list or arrays)."""
    c = module.config
    if not c.has_validation:
        return train, None
    kept, held = stratified_split(labels, c.val_fraction, c.split_seed, "validation")
    evaluated = copy.copy(train)
    evaluated.transform = module.transform(False)
    return Subset(train, kept.tolist()), Subset(evaluated, held.tolist())
