"""Seeds pair runs across variants: the same seed gives the same initial weights for every parameter the variants
share, the same data order (and augmentation) and the same validation and test images, with and without iRPE.

That is what lets the leaderboard compare a variant with its baseline by a paired test over seeds. The models and
the data come from the real build path: ``train.run.build_model`` after ``seed_everything``, as ``train()`` does,
and the real DataModule's training loader.
"""
from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from irpe_bench.train.data import build_datamodule
from irpe_bench.train.run import build_model

from ._train_helpers import tiny_config

#: (model section overrides, what it is); the first is the reference
VARIANTS = [
    ({}, "contextual product on k (the default)"),
    ({"rpe": None}, "no iRPE (baseline)"),
    ({"rpe": {"mode": "bias", "on": "qk"}}, "bias on q and k"),
    ({"rpe": {"method": "euclidean", "ratio": 2.5}}, "euclidean, other ratio"),
    ({"rpe": {"method": "cross"}}, "cross (two components)"),
    ({"rpe": {"method": "quant", "on": "qkv", "shared_head": False}}, "quant on qkv, per head"),
    ({"rpe": {"layers": [1]}}, "iRPE in block 1 only"),
    ({"abs_pos": False}, "no absolute position embedding"),
    ({"abs_pos": False, "rpe": None}, "neither"),
]


def _is_table(name: str) -> bool:
    return ".rpe_" in name and ".lookup_table_" in name


def _initial(tmp_path, model: dict, seed: int = 0) -> dict:
    config = tiny_config(tmp_path, model=model, seed=seed)
    assert (config.model.rpe is None) == ("rpe" in model and model["rpe"] is None)
    dm = build_datamodule(config.data, config.model.resolved_img_size, config.seed)  # as train(): data first
    pl.seed_everything(config.seed, workers=True, verbose=False)
    net = build_model(config, dm.num_classes)
    return dict(net.state_dict())


@pytest.mark.parametrize("seed", [0, 7])
def test_same_seed_same_initial_weights_for_every_shared_parameter(tmp_path, seed):
    reference = _initial(tmp_path, VARIANTS[0][0], seed)
    plain = {k for k in reference if not _is_table(k)}
    assert {"pos_embed", "cls_token", "blocks.0.attn.qkv.weight", "head.weight"} <= plain
    for model, what in VARIANTS[1:]:
        state = _initial(tmp_path, model, seed)
        own = {k for k in state if not _is_table(k)}
        expected = plain - ({"pos_embed"} if model.get("abs_pos") is False else set())
        assert own == expected, what  # the variants share every parameter but the tables (and pos_embed)
        for k in own:
            assert torch.equal(state[k], reference[k]), f"{what}: {k} differs"
        for k in state.keys() - own:  # RPE tables start at zero and drew nothing from the random stream
            assert not state[k].any(), f"{what}: {k}"
    other = _initial(tmp_path, VARIANTS[0][0], seed + 1)
    assert not torch.equal(other["blocks.0.attn.qkv.weight"], reference["blocks.0.attn.qkv.weight"])


def _first_batches(tmp_path, model: dict, seed: int, epoch: int, n: int = 3):
    """The first ``n`` training batches of ``epoch`` as train() sees them (augmentation on): the DataModule is
    built, the global RNG seeded, the model built, then the epoch's loader iterated."""
    data = {"auto_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "hflip": 0.5}
    config = tiny_config(tmp_path, model=model, data=data, seed=seed)
    dm = build_datamodule(config.data, config.model.resolved_img_size, config.seed)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    build_model(config, dm.num_classes)
    torch.rand(17)  # whatever else consumed the global stream in between (a variant's own work) changes nothing
    dm.setup("fit")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    out = []
    for i, (x, y) in enumerate(loader):
        if i == n:
            break
        out.append((x.clone(), y.clone()))
    return out


@pytest.mark.parametrize("epoch", [0, 1])
def test_same_seed_same_data_order_and_augmentation_with_and_without_irpe(tmp_path, epoch):
    with_rpe = _first_batches(tmp_path, {}, seed=3, epoch=epoch)
    for model in ({"rpe": None}, {"rpe": {"mode": "bias", "method": "cross"}}):
        other = _first_batches(tmp_path, model, seed=3, epoch=epoch)
        for (xa, ya), (xb, yb) in zip(with_rpe, other, strict=True):
            assert torch.equal(ya, yb) and torch.equal(xa, xb)
    different_seed = _first_batches(tmp_path, {}, seed=4, epoch=epoch)
    assert not torch.equal(different_seed[0][1], with_rpe[0][1])


def test_validation_and_test_splits_do_not_depend_on_the_seed(tmp_path):
    splits = []
    for seed in (0, 1, 2):
        config = tiny_config(tmp_path, seed=seed)
        dm = build_datamodule(config.data, config.model.resolved_img_size, config.seed)
        dm.setup()
        splits.append((dm.train_set.indices, dm.val_set.indices, dm.test_set.indices))
    for train, val, test in splits[1:]:
        assert np.array_equal(train, splits[0][0]) and np.array_equal(val, splits[0][1])
        assert np.array_equal(test, splits[0][2])
    assert len(splits[0][2]) == 450
