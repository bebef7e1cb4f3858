"""Configs parse; bad input fails before any training with a message naming field, value and what is allowed."""
from __future__ import annotations

from pathlib import Path

import pytest

from irpe_bench.cli import main
from irpe_bench.keys import MONITOR
from irpe_bench.rpe import RPEConfig
from irpe_bench.train.config import build_config, flatten, load_config

from ._train_helpers import TINY, tiny_dict, write_yaml

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_shipped_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"digits.yaml", "cifar10.yaml", "cifar100.yaml", "imagenet_deit_tiny.yaml", "imagenet_deit_small.yaml",
            "imagenet_deit_base.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_parses(path):
    config = load_config(path)
    assert config.model.resolved_img_size % config.model.resolved_patch_size == 0
    assert flatten(config.model_dump(mode="json"))["data.name"] == config.data.name


def test_digits_default_is_papers_default_rpe():
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "digits.yaml")
    assert config.model.rpe == RPEConfig(method="product", mode="contextual", ratio=1.9, shared_head=True, on="k")
    assert config.data.name == "digits" and config.model.abs_pos is True


def test_imagenet_configs_follow_the_deit_recipe():
    root = Path(__file__).resolve().parents[1] / "configs"
    for size in ("tiny", "small", "base"):
        c = load_config(root / f"imagenet_deit_{size}.yaml")
        o, d = c.optim, c.data
        assert (o.opt, o.lr, o.lr_base_batch, o.weight_decay, o.min_lr, o.warmup_lr, o.warmup_epochs) == (
            "adamw", 5e-4, 512, 0.05, 1e-5, 1e-6, 5)
        assert (o.smoothing, c.model.drop_path_rate, c.trainer.max_epochs) == (0.1, 0.1, 300)
        assert (d.mixup, d.cutmix, d.reprob, d.auto_augment) == (0.8, 1.0, 0.25, "rand-m9-mstd0.5-inc1")
        assert d.batch_size * c.trainer.devices == 1024 and c.trainer.precision == "bf16-mixed"
        assert c.model.rpe.on == "k" and c.model.rpe.ratio == 1.9


def test_on_key_is_not_a_yaml_boolean(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  rpe:\n    on: qk\n    mode: contextual\n")
    assert load_config(p).model.rpe.on == "qk"


def test_official_name_resolves_to_base_and_rpe():
    c = build_config({"model": {"name": "deit_small_patch16_224_ctx_product_50_shared_qkv"}})
    assert c.model.name == "deit_small_patch16_224" and c.model.rpe.on == "qkv" and c.model.rpe.ratio == 1.9


def test_monitor_constant():
    assert MONITOR == "val/acc1"


@pytest.mark.parametrize("override, needles", [
    ({"model": {"bogus": 1}}, ["model.bogus", "unknown key", "abs_pos"]),
    ({"optim": {"lr": "fast"}}, ["optim.lr", "'fast'"]),
    ({"trainer": {"max_epochs": 0}}, ["trainer.max_epochs", "greater than or equal to 1", "0"]),
    ({"model": {"img_size": 18}}, ["img_size=18", "patch_size=4"]),
    ({"model": {"name": "deit_nano_patch3"}}, ["unknown model", "deit_nano_patch3", "deit_tiny_patch16_224"]),
    ({"data": {"name": "fashion"}}, ["unknown dataset", "'fashion'", "digits", "mnist"]),
    ({"data": {"name": "cifar10"}}, ["data.root is required", "cifar10"]),
    ({"model": {"rpe": {"method": "hexagon"}}}, ["model.rpe.method", "hexagon", "product"]),
    ({"model": {"rpe": {"layers": [5]}}}, ["layer", "5"]),
    ({"data": {"batch_size": 31, "mixup": 0.8}}, ["even batch size", "31"]),
])
def test_bad_config_is_rejected_with_clear_message(tmp_path, override, needles):
    with pytest.raises(ValueError) as e:
        build_config(tiny_dict(tmp_path, **override))
    for n in needles:
        assert n in str(e.value), (n, str(e.value))


def _cli(argv, capsys):
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_cli_rejects_unknown_key_before_training(tmp_path, capsys):
    cfg = write_yaml(tmp_path / "c.yaml", tiny_dict(tmp_path))
    rc, err = _cli(["train", str(cfg), "--set", "optim.learning_rate=1"], capsys)
    assert rc == 2 and "optim.learning_rate" in err and "unknown key" in err
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_cli_missing_dataset_path(tmp_path, capsys):
    cfg = write_yaml(tmp_path / "c.yaml", tiny_dict(tmp_path, data={"name": "cifar10", "root": str(tmp_path / "no")}))
    rc, err = _cli(["train", str(cfg)], capsys)
    assert rc == 2 and "cifar-10-batches-py" in err and str(tmp_path / "no") in err
    rc, err = _cli(["train", str(cfg), "--set", "data.name=imagefolder"], capsys)
    assert rc == 2 and "imagefolder" in err and "train" in err
    assert not (tmp_path / "runs").exists()


def test_cli_resume_without_checkpoint(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    rc, err = _cli(["train", "--resume", str(tmp_path / "run")], capsys)
    assert rc == 2 and "holds no checkpoint" in err and "last.ckpt" in err
    rc, err = _cli(["train", "--resume", str(tmp_path / "nothing")], capsys)
    assert rc == 2 and "no such run directory" in err


def test_cli_missing_config_file(tmp_path, capsys):
    rc, err = _cli(["train", str(tmp_path / "absent.yaml")], capsys)
    assert rc == 2 and "absent.yaml" in err and "does not exist" in err


def test_tiny_helper_is_valid(tmp_path):
    assert build_config(tiny_dict(tmp_path)).model.depth == TINY["model"]["depth"]
