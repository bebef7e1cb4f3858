"""The standard benchmark cases: whole-model training steps and inference, single attention layers.

Every suite builds, in one process, the no-RPE baseline (timm's DeiT with fused attention), irpe_bench's
model for each iRPE mode and the same mode's reference model (:mod:`irpe_bench.bench.reference`, the
official algorithm written plainly: advanced indexing, naive value path), with identical weights for ours and
the reference, and times them interleaved (:mod:`irpe_bench.bench.harness`).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..models import RPEAttention, count_params_and_macs, create_model, set_attention_options
from ..rpe import RPEConfig
from . import reference
from .harness import Case, peak_memory, run_interleaved, summarize, tensor_bytes

#: iRPE variants of the issue's goals: product mapping, ratio 1.9 (50 buckets), shared heads, all layers.
MODES: Dict[str, Dict[str, str]] = {
    "k": dict(mode="contextual", on="k"),
    "qk": dict(mode="contextual", on="qk"),
    "qkv": dict(mode="contextual", on="qkv"),
    "bias_k": dict(mode="bias", on="k"),
    "qkv_lowmem": dict(mode="contextual", on="qkv", recompute_weights=True),  # weights recomputed in backward
    "k_lowmem": dict(mode="contextual", on="k", recompute_weights=True),
    # GPU: the same variants on the opt-in Triton kernel instead of SDPA's memory-efficient kernel
    "k_triton": dict(mode="contextual", on="k", kernel="triton"),
    "bias_k_triton": dict(mode="bias", on="k", kernel="triton"),
    # GPU: the fused iRPE kernel (tables gathered inside, no L×L tensor), opt-in and not yet measured
    "k_fused": dict(mode="contextual", on="k", kernel="triton_fused"),
    "qk_fused": dict(mode="contextual", on="qk", kernel="triton_fused"),
    "qkv_fused": dict(mode="contextual", on="qkv", kernel="triton_fused"),
    "bias_k_fused": dict(mode="bias", on="k", kernel="triton_fused"),
    # GPU: K and bias-K on eager attention instead of SDPA; QKV with attention_core's backward instead of autograd's
    "k_eager": dict(mode="contextual", on="k", kernel="eager"),
    "bias_k_eager": dict(mode="bias", on="k", kernel="eager"),
    "qkv_core": dict(mode="contextual", on="qkv", core_backward=True),
    "qkv_lowmem_core": dict(mode="contextual", on="qkv", recompute_weights=True, core_backward=True),
}
#: Position-encoding families besides iRPE (``model.pos``, learned absolute positions kept as in the baseline):
#: timed against the same baseline; they are timm's own modules, so no reference model is built for them.
FAMILY_MODES = ["rope_axial", "rope_mixed", "rpb", "cpb", "cpe"]
#: The issue's four variants; the others are implementation variants of one of them (same reference model).
CORE = ["k", "qk", "qkv", "bias_k"]
#: The same variants with ``recompute_weights`` (no L×L tensor kept for the backward pass: less memory, more time).
LOWMEM = ["k_lowmem", "qkv_lowmem"]
#: Attributes of :class:`RPEAttention` a bench mode sets (the rest of a MODES entry is the RPEConfig).
MODULE_OPTIONS = ("recompute_weights", "kernel", "core_backward")
#: The variants run on a fused Triton kernel (CUDA, bf16/fp16 only).
FUSED = ["k_fused", "qk_fused", "qkv_fused", "bias_k_fused"]
TRITON_KERNELS = ("triton", "triton_fused")


def _config_fields(mode: str) -> Dict[str, str]:
    return {k: v for k, v in MODES[mode].items() if k not in MODULE_OPTIONS}


#: Implementation variant → the issue's variant with the same iRPE config (its reference model): ``qkv_lowmem`` →
#: ``qkv``, ``k_triton`` → ``k``, …
VARIANT_OF = {m: base for m in MODES if m not in CORE for base in CORE if _config_fields(m) == _config_fields(base)}

#: Model shapes (timm kwargs on top of ``deit_tiny_patch16_224``). ``digits``: the CPU training config
#: (configs/digits.yaml): 32×32, patch 4 → 8×8 + cls = 65 tokens, width 64, depth 4, 2 heads.
#: ``tiny64``: DeiT-Tiny (192 wide, 3 heads, depth 12) on the same 65 tokens. ``tiny224``: DeiT-Tiny at 224.
PRESETS: Dict[str, Dict[str, Any]] = {
    "digits": dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=2, mlp_ratio=2.0, num_classes=10),
    "tiny64": dict(img_size=32, patch_size=4, num_classes=10),
    "tiny224": dict(img_size=224, patch_size=16, num_classes=1000),
    "micro": dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=10),  # smoke tests
}
BASE_MODEL = "deit_tiny_patch16_224"
TABLE_STD = 0.1  # random tables so that iRPE changes the outputs (zero tables would hide errors)


def rpe_config(mode: str) -> RPEConfig:
    if mode not in MODES:
        raise ValueError(f"unknown bench mode {mode!r}; choices: {list(MODES) + FAMILY_MODES}")
    return RPEConfig(method="product", ratio=1.9, shared_head=True, layers="all", **_config_fields(mode))


def fp32_checkable(mode: str) -> bool:
    """The fp32 exactness check cannot run a mode pinned to a Triton kernel (bf16/fp16 only); those kernels'
    exactness is tested against float64 instead (tests/test_triton_attention.py, tests/test_triton_irpe.py)."""
    return MODES.get(mode, {}).get("kernel") not in TRITON_KERNELS


def _count_macs(model: nn.Module, mode: str) -> int:
    """MACs of one image (counted on the CPU in fp32: a Triton-pinned copy counts with the default kernel)."""
    if not fp32_checkable(mode):
        model = set_attention_options(copy.deepcopy(model), kernel="auto")
    return count_params_and_macs(model)["macs"]


def _set_options(model: nn.Module, mode: str) -> nn.Module:
    return set_attention_options(model, **{k: v for k, v in MODES[mode].items() if k in MODULE_OPTIONS})


def reference_of(mode: str, modes: Sequence[str]) -> str:
    """The mode whose reference model a mode is compared with: ``qkv_lowmem`` shares ``qkv``'s, etc."""
    base = VARIANT_OF.get(mode, mode)
    return base if base in modes else mode


def _randomise_tables(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lookup_table" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * TABLE_STD)


def build_models(preset: str, modes: Sequence[str], impls: Sequence[str], seed: int = 0) -> Dict[str, nn.Module]:
    """``{"baseline": m, "k/ours": m, "k/reference": m, …}``; ours and reference share every weight."""
    kw = PRESETS[preset]
    torch.manual_seed(seed)
    models = {"baseline": create_model(BASE_MODEL, rpe=None, **kw)}
    ref = reference if "reference" in impls else None
    for mode in modes:
        if mode in FAMILY_MODES:
            torch.manual_seed(seed)
            models[f"{mode}/ours"] = create_model(BASE_MODEL, rpe=None, pos={"family": mode}, **kw)
            continue
        cfg = rpe_config(mode)
        torch.manual_seed(seed)
        ours = _set_options(create_model(BASE_MODEL, rpe=cfg, **kw), mode)
        _randomise_tables(ours, seed)
        if "ours" in impls:
            models[f"{mode}/ours"] = ours
        if ref is not None and reference_of(mode, modes) == mode:
            r = ref.build_reference_model(BASE_MODEL, "product", mode=cfg.mode, ratio=1.9, shared_head=True,
                                          rpe_on=cfg.on, **kw)
            r.load_state_dict(ours.state_dict())
            models[f"{mode}/reference"] = r
    return models


def _autocast(device: torch.device, amp: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()


def logits_and_grads(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Dict[str, torch.Tensor]:
    """One batch's logits (key ``"logits"``) and every parameter gradient (by parameter name), grads cleared after."""
    m.zero_grad(set_to_none=True)
    logits = m(x)
    F.cross_entropy(logits, y).backward()
    out = {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}
    out["logits"] = logits.detach()
    m.zero_grad(set_to_none=True)
    return out


def largest_difference(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> float:
    """Largest |a - b| over the tensors of two :func:`logits_and_grads` results (``a``'s keys)."""
    return max((a[n] - b[n]).abs().max().item() for n in a)


def max_difference(a: nn.Module, b: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Largest |a - b| over logits and all parameter gradients (float32, no autocast), same batch."""
    return largest_difference(logits_and_grads(a, x, y), logits_and_grads(b, x, y))


def _split(name: str):
    return ("none", "baseline") if name == "baseline" else tuple(name.split("/"))


def model_suite(preset: str, batch: int, modes: Sequence[str], device: torch.device, warmup: int = 2,
                rounds: int = 7, train: bool = True, memory: bool = True, impls=("ours", "reference"),
                amp: Optional[torch.dtype] = None, budget_s: Optional[float] = None, seed: int = 0,
                clock: str = "wall") -> List[Dict]:
    """Training steps (forward, backward, AdamW) or, with ``train=False``, inference forwards (eval mode)."""
    models = build_models(preset, modes, impls, seed)
    kw = PRESETS[preset]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, kw["img_size"], kw["img_size"], generator=gen).to(device)
    y = torch.randint(0, kw["num_classes"], (batch,), generator=gen).to(device)
    cases = []
    for name, m in models.items():
        mode, impl = _split(name)
        macs = _count_macs(m, mode) if impl != "reference" else None
        m.to(device).train(train)
        if train:
            opt = torch.optim.AdamW(m.parameters(), lr=1e-5)

            def step(m=m, opt=opt):
                with _autocast(device, amp):
                    loss = F.cross_entropy(m(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        else:
            opt = None

            def step(m=m):
                with torch.inference_mode(), _autocast(device, amp):
                    return m(x)
        case = Case(name=f"{mode}/{impl}" if impl != "baseline" else "baseline", mode=mode, impl=impl, step=step)
        case.opt, case.macs = opt, macs
        cases.append(case)
    by_name = {c.name: c for c in cases}
    for c in cases:  # exactness first: same weights, same batch, before any optimiser step
        ref_name = f"{reference_of(c.mode, modes)}/reference"
        if c.impl == "ours" and ref_name in by_name and fp32_checkable(c.mode):
            small = min(batch, 8)  # NOTE: train mode (DeiT has no dropout), so each training path is checked
            c.check = max_difference(models[c.name], models[ref_name], x[:small], y[:small])
    run_interleaved(cases, warmup, rounds, device, budget_s, clock)
    if memory:
        for c in cases:
            m = models[c.name]
            state = [t for s in (c.opt.state.values() if c.opt else []) for t in s.values()]
            c.static_bytes = tensor_bytes(list(m.parameters()) + list(m.buffers()) + state)
            c.peak_bytes = peak_memory(c.step, device)
    return summarize(cases, {m: reference_of(m, modes) for m in modes})


def _layer(preset: str) -> nn.Module:
    kw = PRESETS[preset]
    from timm.layers import Attention

    dim = kw.get("embed_dim", 192)
    return Attention(dim, num_heads=kw.get("num_heads", 3), qkv_bias=True)


def layer_suite(preset: str, batch: int, modes: Sequence[str], device: torch.device, warmup: int = 3,
                rounds: int = 15, impls=("ours", "reference"), amp: Optional[torch.dtype] = None,
                budget_s: Optional[float] = None, seed: int = 0, clock: str = "wall") -> List[Dict]:
    """One attention layer, forward + backward (to its input and weights), at the preset's width and tokens."""
    kw = PRESETS[preset]
    grid = (kw["img_size"] // kw["patch_size"],) * 2
    L = 1 + grid[0] * grid[1]
    torch.manual_seed(seed)
    base = _layer(preset)
    layers = {"baseline": base}
    ref = reference if "reference" in impls else None
    for mode in modes:
        cfg = rpe_config(mode)
        ours = _set_options(RPEAttention(copy.deepcopy(base), cfg, grid, 1), mode)
        _randomise_tables(ours, seed)
        if "ours" in impls:
            layers[f"{mode}/ours"] = ours
        if ref is not None and reference_of(mode, modes) == mode:
            r = ref.ReferenceRPEAttention(copy.deepcopy(base), "product", cfg.mode, 1.9, True, cfg.on, skip=1)
            r.load_state_dict(ours.state_dict())
            layers[f"{mode}/reference"] = r
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, L, base.qkv.in_features, generator=gen).to(device).requires_grad_()
    g = torch.randn(batch, L, base.qkv.in_features, generator=gen).to(device)
    cases = []
    for name, m in layers.items():
        m.to(device)
        mode, impl = _split(name)

        def step(m=m):
            with _autocast(device, amp):
                out = m(x)
            out.backward(g.to(out.dtype))
            x.grad = None
            for p in m.parameters():
                p.grad = None
        cases.append(Case(name=name, mode=mode, impl=impl, step=step))
    by_name = {c.name: c for c in cases}
    for c in cases:
        ref_name = f"{reference_of(c.mode, modes)}/reference"
        if c.impl == "ours" and ref_name in by_name and fp32_checkable(c.mode):
            a, b = layers[c.name](x), layers[ref_name](x)
            c.check = (a - b).abs().max().item()
    run_interleaved(cases, warmup, rounds, device, budget_s, clock)
    return summarize(cases, {m: reference_of(m, modes) for m in modes})
