"""DeiT with iRPE: equal to the official algorithm to the logit, official checkpoints, surgery, cost counts."""
import itertools

import pytest
import timm
import torch
import torch.nn.functional as F

from irpe_bench.bench.reference import build_reference_model
from irpe_bench.models import (
    RPEAttention,
    count_params_and_macs,
    create_model,
    load_official_checkpoint,
    parse_official_name,
    rpe_layers,
)
from irpe_bench.rpe import RPEConfig, bucket_ids
from tests.test_rpe_encoding import plain_contextual_logits, plain_values

TINY = dict(img_size=32, patch_size=4, num_classes=10, embed_dim=64, depth=2, num_heads=4)
WORDS = {"euc": "euclidean", "quant": "quant", "cross": "cross", "product": "product"}
COMBOS = [c for c in itertools.product(WORDS, ["contextual", "bias"], ["q", "k", "v", "qk", "qkv"], [True, False])
          if not (c[1] == "bias" and "v" in c[2])]


def official_pair(method, mode, on, shared, ratio=1.9, name="deit_tiny_patch16_224", **kw):
    """(reference model with random tables, our model loaded from the reference's official-format weights)."""
    torch.manual_seed(0)
    kw = kw or TINY
    ref = build_reference_model(name, method, mode, ratio, shared, on, init_tables=0.5, **kw)
    ours = create_model(name, rpe=RPEConfig(method=WORDS[method], mode=mode, on=on, shared_head=shared, ratio=ratio),
                        **kw)
    load_official_checkpoint(ours, {"model": ref.state_dict()})
    return ref, ours


@pytest.mark.parametrize("method, mode, on, shared", COMBOS)
@pytest.mark.parametrize("ratio", [1.9, 2.5])
def test_same_logits_as_the_official_algorithm(method, mode, on, shared, ratio):
    ref, ours = official_pair(method, mode, on, shared, ratio)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected, got = ref.eval()(x), ours.eval()(x)
    assert (expected - got).abs().max() < 1e-5
    assert (expected - ref.eval()(torch.zeros_like(x))).abs().max() > 1e-3  # the input matters


@pytest.mark.parametrize("method, mode, on", [("product", "contextual", "qkv"), ("cross", "contextual", "qkv"),
                                              ("euc", "bias", "qk"), ("quant", "contextual", "k")])
def test_same_gradients_as_the_official_algorithm(method, mode, on):
    ref, ours = official_pair(method, mode, on, shared=False)
    x = torch.randn(2, 3, 32, 32)
    target = torch.tensor([1, 7])
    for m in (ref, ours):
        m.train()
        F.cross_entropy(m(x), target).backward()
    ref_grads = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        if ".rp_" in name or name not in ref_grads:  # cross tables are concatenated here: compare the halves
            rows = ref_grads[name.replace("lookup_table", "rp_rows.lookup_table")].grad
            cols = ref_grads[name.replace("lookup_table", "rp_cols.lookup_table")].grad
            dim = -2 if ".rpe_v." in name and "weight" in name else -1
            expected = torch.cat([rows, cols], dim)
        else:
            expected = ref_grads[name].grad
        torch.testing.assert_close(p.grad, expected, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["deit_tiny_patch16_224_ctx_product_50_shared_qkv",
                                  "deit_tiny_patch16_224_ctx_cross_56_shared_k"])
def test_official_names_at_224_match_the_official_algorithm(name):
    """The real 14×14 grid with the class token: 50 product buckets, 2 × 82 cross entries."""
    base, cfg = parse_official_name(name)
    method = {v: k for k, v in WORDS.items()}[cfg.method]
    torch.manual_seed(0)
    ref = build_reference_model(base, method, cfg.mode, cfg.ratio, cfg.shared_head, cfg.on, init_tables=0.5)
    ours = load_official_checkpoint(create_model(name), {"model": ref.state_dict()})
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ref.eval()(x) - ours.eval()(x)).abs().max() < 1e-4


def test_checkpoint_file_roundtrip_and_module_prefix(tmp_path):
    ref, _ = official_pair("product", "contextual", "qk", True)
    path = tmp_path / "official.pth"
    torch.save({"model": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 299}, path)
    ours = create_model("deit_tiny_patch16_224", rpe=RPEConfig(on="qk"), **TINY)
    load_official_checkpoint(ours, path)
    assert torch.equal(ours.blocks[1].attn.rpe_q.lookup_table_weight, ref.blocks[1].attn.rpe_q.lookup_table_weight)


def test_mismatched_checkpoint_lists_missing_and_unexpected_keys():
    ref, _ = official_pair("product", "contextual", "k", True)
    wrong = create_model("deit_tiny_patch16_224", rpe=RPEConfig(on="q"), abs_pos=False, **TINY)
    with pytest.raises(ValueError) as e:
        load_official_checkpoint(wrong, ref.state_dict())
    msg = str(e.value)
    assert "missing keys (2): ['blocks.0.attn.rpe_q.lookup_table_weight', 'blocks.1.attn.rpe_q" in msg
    assert "unexpected keys (3): ['blocks.0.attn.rpe_k.lookup_table_weight'" in msg and "'pos_embed'" in msg
    unshared = create_model("deit_tiny_patch16_224", rpe=RPEConfig(shared_head=False), **TINY)
    with pytest.raises(ValueError, match=r"shape mismatches \(2\): \['blocks.0.attn.rpe_k.lookup_table_weight: "
                                         r"checkpoint \(1, 16, 50\) vs model \(4, 16, 50\)"):
        load_official_checkpoint(unshared, ref.state_dict())


def _plain_attention(attn: RPEAttention, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Eq. 13–17 written out with O(L²·d) tables and an explicit softmax, for one RPEAttention."""
    B, N, C = x.shape
    q, k, v = attn.qkv(x).reshape(B, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    s = attn.scale
    logits = s * q @ k.transpose(-1, -2)
    for name, x_side, transpose in (("rpe_k", q, False), ("rpe_q", k, True)):
        rpe = getattr(attn, name)
        if rpe is None:
            continue
        if rpe.mode == "bias":
            term = sum(rpe.table[:, ids[c]] for c in range(ids.shape[0])).unsqueeze(0)
        else:
            term = plain_contextual_logits(x_side, rpe.table, ids, s)
        logits = logits + (term.transpose(-1, -2) if transpose else term)
    a = logits.softmax(-1)
    out = a @ v
    if attn.rpe_v is not None:
        out = out + plain_values(a, attn.rpe_v.table, ids)
    return attn.proj(out.transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("method", ["product", "cross", "quant_rank"])
@pytest.mark.parametrize("on, mode", [("k", "contextual"), ("qk", "bias"), ("qkv", "contextual"), ("v", "contextual")])
@pytest.mark.parametrize("fused", [True, False])
def test_attention_paths_on_a_non_square_grid_equal_the_plain_equations(method, on, mode, fused):
    """3×5 patches + 2 prefix tokens: the grid comes from the patch embedding, never from √L."""
    torch.manual_seed(0)
    model = create_model("deit_tiny_distilled_patch16_224", img_size=(12, 20), patch_size=4, embed_dim=32, depth=1,
                         num_heads=2, num_classes=3, rpe=RPEConfig(method=method, on=on, mode=mode, ratio=1.0))
    attn = model.blocks[0].attn
    assert attn.grid_size == (3, 5) and attn.num_prefix_tokens == 2
    attn.fused_attn = fused
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(2, 17, 32, requires_grad=True)
    ids = bucket_ids(method, "piecewise", 1.0, 2.0, 8.0, 3, 5, 2)
    got, expected = attn(x), _plain_attention(attn, x, ids)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    g = torch.randn_like(got)
    params = [x, *attn.parameters()]
    for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(expected, params, g)):
        # NOTE: fp32 round-off of two summation orders: against a float64 run, autograd's eager gradients here are
        # off by up to 1.6e-5 and the hand-written backward's by 2.3e-5 (float64 equality: tests/test_fastpaths.py)
        torch.testing.assert_close(a, b, atol=4e-5, rtol=1e-4)
    assert model(torch.randn(1, 3, 12, 20)).shape == (1, 3)


@pytest.mark.parametrize("on", ["k", "qkv", "q"])
def test_zero_tables_reproduce_plain_timm_attention(on):
    torch.manual_seed(0)
    ours = create_model("deit_tiny_patch16_224", rpe=RPEConfig(on=on), **TINY)
    plain = timm.create_model("deit_tiny_patch16_224", **TINY)
    plain.load_state_dict({k: v for k, v in ours.state_dict().items() if "lookup_table" not in k})
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), plain(x), atol=1e-5, rtol=1e-5)


def test_only_the_chosen_layers_carry_rpe():
    model = create_model("deit_tiny_patch16_224", rpe=RPEConfig(layers=[0, 2], on="qv"), **{**TINY, "depth": 4})
    assert rpe_layers(model) == (0, 2)
    assert type(model.blocks[1].attn).__name__ == "Attention" and type(model.blocks[3].attn).__name__ == "Attention"
    tables = sorted(k for k in model.state_dict() if "lookup_table" in k)
    assert tables == [f"blocks.{i}.attn.rpe_{a}.lookup_table_weight" for i in (0, 2) for a in "qv"]
    with pytest.raises(ValueError, match="index 4 is out of range for a model with depth=4"):
        create_model("deit_tiny_patch16_224", rpe=RPEConfig(layers=[4]), **{**TINY, "depth": 4})


def test_abs_pos_false_removes_the_position_embedding():
    with_pos = create_model("deit_tiny_patch16_224", rpe=RPEConfig(), **TINY)
    without = create_model("deit_tiny_patch16_224", rpe=RPEConfig(), abs_pos=False, **TINY)
    assert without.pos_embed is None and "pos_embed" not in without.state_dict()
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(with_pos) - n(without) == 65 * 64
    assert without.variant == "deit_tiny_ctx_product_50_shared_k_noabs"
    assert without(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_dynamic_image_size_follows_the_input():
    """A changed grid rebuilds the bucket buffers: the ids are those of the new grid, and a dynamic model's
    output on a 4×6 image equals a fixed 4×6 model's with the same weights (no absolute position embedding,
    which timm would resample)."""
    cfg = RPEConfig(on="qkv")
    model = create_model("deit_tiny_patch16_224", rpe=cfg, abs_pos=False, dynamic_img_size=True, **TINY).eval()
    _randomise_tables(model)
    x = torch.randn(1, 3, 16, 24)
    with torch.no_grad():
        got = model(x)
    assert got.shape == (1, 10)
    attn = model.blocks[0].attn
    assert attn.grid_size == (4, 6)
    torch.testing.assert_close(attn.bucket_ids, bucket_ids(cfg.method, cfg.index, cfg.alpha, cfg.beta, cfg.gamma,
                                                           4, 6, 1), rtol=0, atol=0)
    assert attn.bucket_index.shape == attn.bucket_index_t.shape == (1, 25 * 25)
    fixed = create_model("deit_tiny_patch16_224", rpe=cfg, abs_pos=False, **{**TINY, "img_size": (16, 24)}).eval()
    fixed.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(got, fixed(x))
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    assert model.blocks[1].attn.grid_size == (8, 8) and model.blocks[1].attn.bucket_ids.shape == (1, 65, 65)


def _randomise_tables(model, std=0.3):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lookup_table" in name:
                p.normal_(0, std)


@pytest.mark.parametrize("on, mode", [("qkv", "contextual"), ("qk", "bias")])
def test_bucket_buffers_are_not_saved_and_follow_the_module(on, mode):
    """Checkpoints hold only learned tables (the buffers are non-persistent); buffers exist only where a table
    reads them, and move with the module."""
    model = create_model("deit_tiny_patch16_224", rpe=RPEConfig(on=on, mode=mode), **TINY)
    assert not [k for k in model.state_dict() if "bucket" in k]
    attn = model.blocks[0].attn
    names = {n.split(".")[-1] for n, _ in attn.named_buffers()}
    assert names == ({"bucket_ids", "bucket_index", "bucket_index_t"} if mode == "contextual" else {"bucket_ids"})
    model.to(torch.float64)
    assert attn.bucket_ids.dtype == torch.int64


def test_a_meta_device_model_builds_and_materialises_with_the_right_ids():
    """Built under ``torch.device("meta")`` (the sweep's slug), the buffers are shape-only; after
    ``to_empty`` the first forward rebuilds them, so the model computes what a CPU-built one does."""
    cfg = RPEConfig(on="qkv", method="quant_rank")  # NOTE: quant_rank's ids need data (unique): not on meta
    with torch.device("meta"):
        meta = create_model("deit_tiny_patch16_224", rpe=cfg, **TINY)
    assert meta.blocks[0].attn.bucket_ids.is_meta
    torch.manual_seed(0)
    cpu = create_model("deit_tiny_patch16_224", rpe=cfg, **TINY).eval()
    _randomise_tables(cpu)
    meta = meta.to_empty(device="cpu").eval()
    meta.load_state_dict(cpu.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(meta(x), cpu(x), rtol=0, atol=0)
    torch.testing.assert_close(meta.blocks[0].attn.bucket_ids, cpu.blocks[0].attn.bucket_ids, rtol=0, atol=0)


def test_sequence_that_does_not_match_the_grid_fails_clearly():
    attn = create_model("deit_tiny_patch16_224", rpe=RPEConfig(), **TINY).blocks[0].attn
    with pytest.raises(ValueError, match=r"sequence length 50 does not match the patch grid 8x8 plus 1 prefix "
                                         r"token\(s\) = 65"):
        attn(torch.randn(1, 50, 64))


@pytest.mark.parametrize("name, kwargs, pattern", [
    ("deit_huge_patch16_224", dict(rpe=RPEConfig()), r"unknown model 'deit_huge_patch16_224'"),
    ("deit_tiny_patch16_224", dict(img_size=30, patch_size=4), r"img_size=\(30, 30\) is not divisible by patch_size"),
    ("deit_tiny_patch16_224", dict(pretrained=True), r"pretrained=True is not supported"),
    ("resnet18", {}, r"model 'resnet18' is not a timm VisionTransformer"),
    ("deit_small_patch16_224_ctx_product_51_shared_k", {}, r"unknown method/bucket pair 'product_51'; known: euc_20"),
])
def test_bad_model_arguments_fail_before_building(name, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        create_model(name, **kwargs)


def test_official_name_with_explicit_rpe_is_refused():
    with pytest.raises(ValueError, match="already names its iRPE config; pass rpe=None"):
        create_model("deit_tiny_patch16_224_ctx_product_50_shared_k", rpe=RPEConfig())


@pytest.mark.parametrize("name, method, ratio, on, mode, shared", [
    ("deit_small_patch16_224_ctx_euc_20_shared_k", "euclidean", 20, "k", "contextual", True),
    ("deit_small_patch16_224_ctx_quant_51_shared_k", "quant", 33, "k", "contextual", True),
    ("deit_small_patch16_224_ctx_cross_56_shared_k", "cross", 20, "k", "contextual", True),
    ("deit_base_patch16_224_ctx_product_50_shared_qkv", "product", 1.9, "qkv", "contextual", True),
    ("deit_tiny_patch16_224_bias_product_50_unshared_qk", "product", 1.9, "qk", "bias", False),
])
def test_official_names_parse_to_their_configs(name, method, ratio, on, mode, shared):
    base, cfg = parse_official_name(name)
    assert base == name.split("_ctx_")[0].split("_bias_")[0]
    assert (cfg.method, cfg.ratio, cfg.on, cfg.mode, cfg.shared_head) == (method, ratio, on, mode, shared)


@pytest.mark.slow
def test_deit_small_parameter_and_mac_counts_match_the_paper():
    """Table 2/5 and reference §5: parameters exactly; the efficient K path adds 12·H·L·d·K = 45.4M MACs."""
    counts = {on: count_params_and_macs(create_model(f"deit_small_patch16_224_ctx_product_50_shared_{on}"))
              for on in ("k", "qk", "qkv")}
    base = count_params_and_macs(create_model("deit_small_patch16_224"))
    unshared = count_params_and_macs(create_model("deit_small_patch16_224", rpe=RPEConfig(shared_head=False)))
    bias = count_params_and_macs(create_model("deit_small_patch16_224", rpe=RPEConfig(shared_head=False, mode="bias")))
    assert base["params"] == 22_050_664
    assert [counts[on]["params"] for on in ("k", "qk", "qkv")] == [22_089_064, 22_127_464, 22_165_864]
    assert unshared["params"] == 22_281_064 and round(unshared["params"] / 1e6, 2) == 22.28
    assert round(bias["params"] / 1e6, 2) == 22.05
    per_path = 12 * 6 * 197 * 64 * 50
    assert counts["k"]["macs"] - base["macs"] == per_path == 45_388_800
    assert counts["qk"]["macs"] - base["macs"] == 2 * per_path
    assert bias["macs"] == base["macs"] and unshared["macs"] == counts["k"]["macs"]
    assert abs(base["macs"] / 1e6 - 4613) / 4613 < 0.01  # the paper's DeiT-S figure, within 1%


@pytest.mark.slow
def test_deit_tiny_and_base_parameter_counts_match_the_official_logs():
    assert count_params_and_macs(create_model("deit_tiny_patch16_224_ctx_product_50_shared_k"))["params"] == 5_755_816
    base = create_model("deit_base_patch16_224_ctx_product_50_shared_k")
    assert sum(p.numel() for p in base.parameters()) == 86_606_056


def test_official_name_refined_by_a_dict_of_fields():
    model = create_model("deit_tiny_patch16_224_ctx_product_50_shared_qkv", rpe={"layers": [0], "mode": "contextual"},
                         **TINY)
    assert rpe_layers(model) == (0,) and model.rpe_config.on == "qkv" and model.rpe_config.ratio == 1.9
