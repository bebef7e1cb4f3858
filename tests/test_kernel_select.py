"""Kernel selection (``irpe_bench.models.attention.select_kernel``) as a table of cases: inputs → kernel or error.

The module docstring of :mod:`irpe_bench.models.attention` says why each rule exists; this table pins them.
"""
import pytest
import torch

from irpe_bench.models import RPEAttention, create_model
from irpe_bench.models.attention import KERNELS, select_kernel
from irpe_bench.rpe import RPEConfig

TRAIN = dict(training=True, grad_enabled=True, term_needs_grad=True)  # a training step: the term needs a gradient
EVAL = dict(training=False, grad_enabled=False, term_needs_grad=False)  # inference under no_grad
CUDA, CPU = dict(device_type="cuda"), dict(device_type="cpu")

CASES = [
    # (id, inputs, kernel)
    ("auto cpu inference: fused cpu kernel", {**EVAL, **CPU}, "sdpa"),
    ("auto cpu eval with grad but frozen terms", dict(grad_enabled=True, term_needs_grad=False, **CPU), "sdpa"),
    ("auto cuda training: mem-efficient kernel has the mask grad", {**TRAIN, **CUDA}, "sdpa"),
    ("auto cpu training: hand-written backward", {**TRAIN, **CPU}, "core"),
    ("auto cpu training, core_backward off", {**TRAIN, **CPU, "core_backward": False}, "eager"),
    ("auto other device training: autograd", {**TRAIN, "device_type": "mps"}, "eager"),
    ("auto cpu, mask grad but not training: no backward to keep for", dict(training=False, grad_enabled=True,
                                                                            term_needs_grad=True, **CPU), "eager"),
    ("auto cpu training, recompute", {**TRAIN, **CPU, "recompute_weights": True}, "recompute"),
    ("auto cpu training, dropout: autograd", {**TRAIN, **CPU, "attn_dropout": 0.1}, "eager"),
    ("auto cpu training, dropout + recompute: checkpoint", {**TRAIN, **CPU, "attn_dropout": 0.1,
                                                            "recompute_weights": True}, "checkpoint"),
    ("auto cpu eval, dropout ignored", {**EVAL, **CPU, "attn_dropout": 0.1, "has_v_table": True}, "eager"),
    ("auto v table, cuda training: autograd", {**TRAIN, **CUDA, "has_v_table": True}, "eager"),
    ("auto v table, cuda training, core forced", {**TRAIN, **CUDA, "has_v_table": True, "core_backward": True},
     "core"),
    ("auto v table, cuda training, recompute", {**TRAIN, **CUDA, "has_v_table": True, "recompute_weights": True},
     "recompute"),
    ("auto v table, cpu training", {**TRAIN, **CPU, "has_v_table": True}, "core"),
    ("auto v table, inference", {**EVAL, **CUDA, "has_v_table": True}, "eager"),
    ("auto fused_attn=False, cuda inference", {**EVAL, **CUDA, "fused_attn": False}, "eager"),
    ("auto fused_attn=False, cpu training", {**TRAIN, **CPU, "fused_attn": False}, "core"),
    ("forced eager, cuda inference", {**EVAL, **CUDA, "kernel": "eager"}, "eager"),
    ("forced eager, cpu training: the eager family's core", {**TRAIN, **CPU, "kernel": "eager"}, "core"),
    ("forced eager, cuda training", {**TRAIN, **CUDA, "kernel": "eager"}, "eager"),
    ("forced sdpa, cpu training: math fallback, exact", {**TRAIN, **CPU, "kernel": "sdpa"}, "sdpa"),
    ("forced sdpa, training with dropout", {**TRAIN, **CUDA, "kernel": "sdpa", "attn_dropout": 0.1}, "sdpa"),
    ("forced triton, runs", {**TRAIN, **CUDA, "kernel": "triton"}, "triton"),
    ("forced triton, eval ignores dropout", {**EVAL, **CUDA, "kernel": "triton", "attn_dropout": 0.1}, "triton"),
    ("forced triton_fused, runs a v table", {**TRAIN, **CUDA, "kernel": "triton_fused", "has_v_table": True},
     "triton_fused"),
]

ERRORS = [
    ("unknown kernel", dict(kernel="flash"), r"kernel='flash'; allowed: auto, triton, sdpa, eager"),
    ("bad core_backward", dict(core_backward="yes"), r"core_backward='yes'; allowed: None \(by device\)"),
    ("sdpa with a v table", dict(kernel="sdpa", has_v_table=True),
     r"kernel='sdpa' cannot run this layer: a value table needs the attention weights"),
    ("triton with a v table", dict(kernel="triton", has_v_table=True, **CUDA),
     r"kernel='triton' cannot run this layer: a value table needs the attention weights"),
    ("sdpa with fused_attn=False", dict(kernel="sdpa", fused_attn=False),
     r"kernel='sdpa' cannot run this layer: timm's fused_attn=False asks for eager attention"),
    ("triton where it cannot run", dict(kernel="triton", triton_problem="device cpu, dtype torch.float32"),
     r"kernel='triton' cannot run here \(device cpu, dtype torch.float32\); it needs CUDA"),
    ("triton with training dropout", dict(kernel="triton", attn_dropout=0.1, **TRAIN, **CUDA),
     r"kernel='triton' cannot run here \(attention dropout 0.1 \(the Triton kernel has none\)\)"),
    ("triton_fused with fused_attn=False", dict(kernel="triton_fused", fused_attn=False, **CUDA),
     r"kernel='triton_fused' cannot run this layer: timm's fused_attn=False asks for eager attention"),
    ("triton_fused where it cannot run", dict(kernel="triton_fused", triton_problem="an attention mask"),
     r"kernel='triton_fused' cannot run here \(an attention mask\); it needs CUDA.* no attention dropout or mask"),
    ("triton_fused with training dropout", dict(kernel="triton_fused", attn_dropout=0.1, **TRAIN, **CUDA),
     r"kernel='triton_fused' cannot run here \(attention dropout 0.1"),
]


@pytest.mark.parametrize("inputs, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_select_kernel(inputs, expected):
    assert select_kernel(**inputs) == expected


@pytest.mark.parametrize("inputs, message", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_a_kernel_that_cannot_run_raises_with_the_reason(inputs, message):
    with pytest.raises(ValueError, match=message):
        select_kernel(**inputs)


def test_every_kernel_and_outcome_is_covered():
    """The table reaches every accepted kernel and every outcome, so a new rule needs a new row."""
    assert {c[1].get("kernel", "auto") for c in CASES} == set(KERNELS)
    assert {c[2] for c in CASES} == {"sdpa", "eager", "core", "recompute", "checkpoint", "triton", "triton_fused"}


def _layer(on: str) -> RPEAttention:
    model = create_model("deit_tiny_patch16_224", rpe=RPEConfig(on=on), img_size=16, patch_size=4, embed_dim=32,
                         depth=1, num_heads=2, num_classes=3)
    return model.blocks[0].attn


def test_the_module_feeds_its_state_to_the_table():
    """``RPEAttention.kernel_for`` reads its options, the autograd state and whether a term needs a gradient."""
    attn = _layer("k").train()
    q = torch.zeros(1, 2, 17, 16)
    grad_term, frozen = [torch.zeros(1, requires_grad=True)], [torch.zeros(1)]
    assert attn.kernel_for(q, grad_term) == "core"
    assert attn.kernel_for(q, frozen) == "sdpa"
    with torch.no_grad():
        assert attn.kernel_for(q, grad_term) == "sdpa"
    attn.recompute_weights = True
    assert attn.kernel_for(q, grad_term) == "recompute"
    attn.eval()
    assert attn.kernel_for(q, grad_term) == "eager"


def test_a_forced_sdpa_with_a_value_table_fails_in_the_forward_pass():
    attn = _layer("kv")
    attn.kernel = "sdpa"
    with pytest.raises(ValueError, match="a value table needs the attention weights"):
        attn(torch.randn(1, 17, 32))
    attn.kernel = "auto"
    assert attn(torch.randn(1, 17, 32)).shape == (1, 17, 32)
