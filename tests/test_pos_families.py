"""Position-encoding families besides iRPE: each built through the harness is timm's own model on the same weights
(state_dict loads both ways, the same logits), follows a new image size as its paper does, and bad combinations
fail before any work with the field and what is allowed."""
import pytest
import timm
import torch

from irpe_bench.models import count_params_and_macs, create_model, resize_input
from irpe_bench.pos import PosConfig
from irpe_bench.pos.families import FAMILIES, sincos_pos_embed
from irpe_bench.rpe import RPEConfig
from irpe_bench.train.config import build_config

DIMS = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
BASE = "vit_small_patch16_224"


def harness(family=None, abs_pos=False, rpe=None, seed=0, **kw):
    torch.manual_seed(seed)
    pos = None if family is None else {"family": family, **kw.pop("pos", {})}
    return create_model(BASE, rpe=rpe, abs_pos=abs_pos, pos=pos, **{**DIMS, **kw}).eval()


def timm_twin(family):
    """timm's model that has the family, with the harness's sizes and without layer scale (DeiT has none;
    ``timm.create_model`` drops ``init_values=None``, so it is taken out after building)."""
    if family in ("rope_axial", "rope_mixed"):
        name = "vit_small_patch16_rope_224" if family == "rope_axial" else "vit_small_patch16_rope_mixed_224"
        model = timm.create_model(name, **DIMS)
        for b in model.blocks:
            del b.gamma_1, b.gamma_2
            b.gamma_1 = b.gamma_2 = None
        return model.eval()
    rel = {"rpb": "bias", "cpb": "mlp_swin"}[family]
    model = timm.create_model("vit_relpos_small_patch16_224", class_token=True, global_pool="token", fc_norm=False,
                              qkv_bias=True, rel_pos_type=rel, rel_pos_dim=512 if family == "cpb" else None, **DIMS)
    for b in model.blocks:
        b.ls1 = b.ls2 = torch.nn.Identity()
    return model.eval()


def images(size=32, n=3):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def randomise(model):
    """Non-trivial values everywhere (timm zero-initialises some heads and tables)."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.mark.parametrize("family", ["rope_axial", "rope_mixed", "rpb", "cpb"])
def test_family_is_timms_model_on_the_same_weights(family):
    ours, theirs = randomise(harness(family)), timm_twin(family)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = images()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    other = randomise(timm_twin(family).train()).eval()  # and back: timm's weights into the harness
    fresh = harness(family, seed=3)
    fresh.load_state_dict(other.state_dict(), strict=True)
    torch.testing.assert_close(fresh(x), other(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["rope_axial", "rope_mixed", "rpb"])
def test_new_image_size_follows_timm(family):
    """RoPE's angles for the new grid, the bias table resized bicubically: what timm's set_input_size does."""
    ours, theirs = randomise(harness(family)), timm_twin(family)
    theirs.load_state_dict(ours.state_dict())
    resize_input(ours, 48)
    theirs.set_input_size(img_size=(48, 48))
    x = images(48)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_continuous_bias_keeps_training_units_at_a_new_size():
    """Swin-v2 transfers windows with coordinates normalised by the training window: every offset present at
    both sizes keeps its bias."""
    model = randomise(harness("cpb"))
    rel = model.blocks[0].attn.rel_pos
    before = rel.get_bias()[0, :, 1:, 1:]  # heads × 16 × 16 (patch tokens of the 4×4 grid)
    resize_input(model, 64)  # 8×8
    after = rel.get_bias()[0, :, 1:, 1:]
    idx = torch.tensor([r * 8 + c for r in range(4) for c in range(4)])  # the 4×4 corner of the 8×8 grid
    torch.testing.assert_close(after[:, idx][:, :, idx], before)
    assert model(images(64)).shape == (3, 10)


def test_peg_is_a_depthwise_conv_of_the_patch_grid_at_the_named_block():
    model = randomise(harness("cpe"))
    assert model.pos_config.layers == (1,)  # CPVT: after the first block
    x = images()
    with torch.no_grad():
        t = model._pos_embed(model.patch_embed(x))
        t = model.blocks[0](t)
        cls, grid = t[:, :1], t[:, 1:].transpose(1, 2).reshape(3, 32, 4, 4)
        t = torch.cat([cls, (model.blocks[1].peg.proj(grid) + grid).flatten(2).transpose(1, 2)], 1)
        expected = model.forward_head(model.norm(model.blocks[1].forward(t)))  # .forward: without the PEG hook
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    resize_input(model, 48)
    assert model(images(48)).shape == (3, 10)


def test_sincos_is_fixed_and_recomputed_for_a_new_grid():
    model = harness(abs_pos="sincos")
    assert not model.pos_embed.requires_grad and model.variant.endswith("_norpe_sincos")
    torch.testing.assert_close(model.pos_embed, sincos_pos_embed((4, 4), 32, 1))
    assert torch.all(model.pos_embed[0, 0] == 0)
    resize_input(model, 48)
    torch.testing.assert_close(model.pos_embed, sincos_pos_embed((6, 6), 32, 1))
    trainable = count_params_and_macs(harness(abs_pos="sincos"))["params"]
    assert trainable == count_params_and_macs(harness(abs_pos=False))["params"]


def test_learned_absolute_and_irpe_follow_a_new_grid():
    """Learned absolute: timm's bicubic resample; iRPE: the same tables, buckets of the new grid — equal to a
    model built at the new size with those weights."""
    rpe = RPEConfig(method="product", mode="contextual", on="qkv")
    small = randomise(harness(abs_pos=True, rpe=rpe))
    big = harness(abs_pos=True, rpe=rpe, img_size=48)
    state = small.state_dict()
    resize_input(small, 48)
    state["pos_embed"] = small.pos_embed.detach().clone()
    big.load_state_dict(state)
    x = images(48)
    torch.testing.assert_close(small(x), big(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_trains_a_step_and_resizes(family):
    model = harness(family, abs_pos=True)
    model.train()
    loss = model(images()).logsumexp(-1).mean()
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "head" not in n)
    resize_input(model.eval(), 48)
    assert model(images(48)).shape == (3, 10)


def test_slugs_name_the_family():
    assert harness("rope_mixed").variant == "vit_small_rope_mixed_noabs"
    assert harness("cpe", abs_pos=True, pos={"layers": [0, 1]}).variant == "vit_small_cpe_L0-1"
    assert harness("rope_axial", pos={"rope_theta": 100}).variant == "vit_small_rope_axial_noabs"  # the default
    assert harness("rope_axial", pos={"rope_theta": 20}).variant == "vit_small_rope_axial_t20_noabs"
    both = harness("cpe", abs_pos=True, rpe=RPEConfig())
    assert both.variant == "vit_small_ctx_product_50_shared_k_cpe"


@pytest.mark.parametrize("model, message", [
    ({"rpe": None, "pos": {"family": "rope"}}, "unknown position-encoding family 'rope'; choices: ['cpb', 'cpe'"),
    ({"pos": {"family": "rpb"}}, "both on block(s) [0, 1, 2"),
    ({"rpe": None, "pos": {"family": "rpb", "cpb_hidden": 64}}, "cpb_hidden=64: family 'rpb' does not read it"),
    ({"rpe": None, "embed_dim": 36, "num_heads": 6, "pos": {"family": "rope_axial"}}, "multiple of 4"),
    ({"rpe": None, "depth": 2, "pos": {"family": "cpe", "layers": [2]}}, "model.pos.layers=[2]: index 2 is out"),
    ({"abs_pos": "fixed"}, "allowed: true, false, ['learned', 'none', 'sincos']"),
])
def test_bad_combinations_fail_before_work(model, message):
    with pytest.raises(ValueError, match=None) as e:
        build_config({"model": {"img_size": 32, "patch_size": 8, **model}})
    assert message in str(e.value)


def test_disjoint_layers_may_mix_irpe_and_a_bias_table():
    cfg = build_config({"model": {**{k: v for k, v in DIMS.items() if k != "num_classes"}, "name": BASE,
                                  "rpe": {"layers": [0]}, "pos": {"family": "rpb", "layers": [1]}}})
    assert cfg.model.pos == PosConfig(family="rpb", layers=(1,))


def test_a_run_is_tested_at_other_sizes(tmp_path):
    """A real Lightning run of a family with the sin-cos table, tested at two more sizes: test/by_img_size in
    the summary and its flat keys in the CSV log (every family resizes in test_every_family_trains_a_step…)."""
    import csv

    from irpe_bench import keys as K
    from irpe_bench.train import train

    from ._train_helpers import tiny_config

    config = tiny_config(tmp_path, model={"rpe": None, "abs_pos": "sincos", "pos": {"family": "rope_mixed"}},
                         eval={"img_sizes": [24, 32]})
    summary = train(config)
    assert summary["variant"] == "deit_tiny_rope_mixed_sincos" and summary["status"] == "finished"
    by_size = summary[K.TEST_BY_SIZE]
    assert sorted(by_size) == ["24", "32"]
    for metrics in by_size.values():
        assert 0 <= metrics["acc1"] <= metrics["acc5"] <= 100 and metrics["loss"] > 0
    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    logged = [r for r in rows if r.get("test/acc1@32")]
    assert logged and float(logged[-1]["test/acc1@32"]) == pytest.approx(by_size["32"]["acc1"])


def test_at_the_training_size_the_resized_copy_gives_the_test_metric(tmp_path):
    """Resizing to the training size changes nothing: its accuracy is test/acc1 itself (same checkpoint, images,
    and the same batches: the tiny config limits the test loop to two, ``trainer.limit_test_batches``)."""
    from irpe_bench import keys as K
    from irpe_bench.train import train

    from ._train_helpers import tiny_config

    summary = train(tiny_config(tmp_path, model={"pos": {"family": "cpe"}}, eval={"img_sizes": [16]}))
    assert summary[K.TEST_BY_SIZE]["16"]["acc1"] == pytest.approx(summary[K.TEST_ACC1])
    assert summary[K.TEST_BY_SIZE]["16"]["loss"] == pytest.approx(summary[K.TEST_LOSS], rel=1e-5)


@pytest.mark.slow
def test_a_sweep_over_families_draws_no_irpe_for_rope_and_reports_every_size(tmp_path):
    """Real tiny trials: family × iRPE method is three rows (no iRPE field drawn under RoPE); the leaderboard
    gives each row at the other size with n, mean, CI, Δ against the no-encoding row and Holm."""
    import json

    import optuna
    import yaml

    from irpe_bench.cli import main

    from ._train_helpers import tiny_dict, write_yaml

    write_yaml(tmp_path / "base.yaml", tiny_dict(tmp_path, eval={"img_sizes": [24]}))
    sweep = {"study": {"name": "fam", "sampler": "grid", "pruner": "none"}, "base": "base.yaml",
             "out_dir": str(tmp_path / "out"),
             "space": {"model.pos.family": {"choices": ["none", "rope_mixed"]},
                       "model.rpe.method": {"choices": ["none", "product"]}, "seed": {"choices": [0, 1]}}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    assert main(["sweep", str(tmp_path / "sweep.yaml")]) == 0
    trials = optuna.load_study(study_name="fam", storage=f"sqlite:///{tmp_path}/out/optuna.db").trials
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    rope = [t for t in trials if t.params["model.pos.family"] == "rope_mixed"]
    assert len(rope) == 2 and all("model.rpe.method" not in t.params for t in rope)
    assert all(t.user_attrs["config"]["model.rpe"] is None and not t.user_attrs["baseline"] for t in rope)
    board = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
    assert board["img_sizes"] == [24] and set(board["img_size_mdd"]) == {"24"}
    rows = {g["variant"]: g for g in board["groups"]}
    assert set(rows) == {"deit_tiny_norpe", "deit_tiny_rope_mixed", "deit_tiny_ctx_product_50_shared_k"}
    at24 = rows["deit_tiny_rope_mixed"]["by_img_size"]["24"]
    assert at24["n"] == 2 and at24["test"] == "paired t" and at24["n_pairs"] == 2
    assert at24["ci95"][0] <= at24["mean"] <= at24["ci95"][1] and at24["p_holm"] is not None
    assert at24["delta_ci95"][0] <= at24["delta"] <= at24["delta_ci95"][1]
    assert rows["deit_tiny_norpe"]["by_img_size"]["24"]["delta"] is None  # the baseline itself
    md = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "## At other image sizes" in md and "| deit_tiny_rope_mixed | 24 | 2 |" in md
    assert "Minimum detectable difference at 80 % power" in md
    assert (tmp_path / "out" / "accuracy_by_size.png").stat().st_size > 0
    assert "test_acc1_by_size" in (tmp_path / "out" / "trials.csv").read_text().splitlines()[0]


def test_the_sizes_see_the_test_batches_lightnings_test_loop_sees():
    """``trainer.limit_test_batches`` as Lightning reads it: an int caps the batches, a float takes that fraction
    of the loader rounded down; None, all of them. Before, the sizes ignored it and disagreed with test/acc1."""
    from irpe_bench.train.resolution import batches_of

    loader = list(range(10))
    assert list(batches_of(loader, None)) == loader and list(batches_of(loader, 50)) == loader
    assert list(batches_of(loader, 3)) == [0, 1, 2] and list(batches_of(loader, 0.25)) == [0, 1]
    assert list(batches_of(loader, 1.0)) == loader
