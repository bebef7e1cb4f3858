"""Build timm DeiT / ViT models with iRPE, by their timm names or by the official iRPE model names.

The surgery is small on purpose: timm builds the model (weights init, drop path, heads, everything), then
``blocks[i].attn`` is replaced by :class:`RPEAttention` in the layers ``rpe.layers`` names, reusing the timm
attention's own qkv/proj modules. Other layers keep timm's fused attention untouched.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple, Union

import timm
import torch
from torch import nn

from ..pos import PosConfig, families
from ..rpe import RPEConfig
from ..rpe.config import OFFICIAL_METHOD_WORDS, OFFICIAL_MODE_WORDS
from .attention import RPEAttention

#: Ratios of the official registered models (reference §3): the number in the name counts the buckets
#: used on 14×14, and these are the ratios that produce them.
OFFICIAL_RATIOS: Dict[Tuple[str, int], float] = {
    ("euc", 20): 20.0,
    ("quant", 51): 33.0,
    ("cross", 56): 20.0,
    ("product", 50): 1.9,
}

_OFFICIAL_NAME = re.compile(
    r"^(?P<base>deit_(?:tiny|small|base)_patch16_224)_(?P<mode>ctx|bias)_(?P<method>euc|quant|cross|product)_"
    r"(?P<buckets>\d+)_(?P<shared>shared|unshared)_(?P<on>q?k?v?)$"
)


def parse_official_name(name: str) -> Optional[Tuple[str, RPEConfig]]:
    """``deit_small_patch16_224_ctx_product_50_shared_qkv`` → (``deit_small_patch16_224``, RPEConfig), or None.

    Every mode / sharing / attachment combination of the official ``get_rpe_config`` is accepted; the
    method and bucket count must be one the official code registers (they fix the ratio).
    """
    m = _OFFICIAL_NAME.match(name)
    if m is None:
        return None
    key = (m["method"], int(m["buckets"]))
    if key not in OFFICIAL_RATIOS:
        known = ", ".join(f"{meth}_{n}" for meth, n in OFFICIAL_RATIOS)
        raise ValueError(f"official model name {name!r}: unknown method/bucket pair '{key[0]}_{key[1]}'; "
                         f"known: {known}")
    if not m["on"]:
        raise ValueError(f"official model name {name!r}: no attachment (expected q, k, v, qk, qkv, …)")
    config = RPEConfig(
        method=OFFICIAL_METHOD_WORDS[m["method"]],
        mode=OFFICIAL_MODE_WORDS[m["mode"]],
        ratio=OFFICIAL_RATIOS[key],
        shared_head=m["shared"] == "shared",
        on=m["on"],
    )
    return m["base"], config


def _vit_blocks_check(model: nn.Module, name: str) -> None:
    if not (hasattr(model, "blocks") and hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")):
        raise ValueError(f"model {name!r} is not a timm VisionTransformer (DeiT/ViT); iRPE needs patch tokens")


def _grid_hook(model: nn.Module, args: Tuple[Any, ...]) -> None:
    """With ``dynamic_img_size`` the grid follows each input; the attention layers read it from here."""
    grid = tuple(model.patch_embed.dynamic_feat_size(args[0].shape[-2:]))
    for block in model.blocks:
        if isinstance(block.attn, RPEAttention):
            block.attn.grid_size = grid


def resolve_rpe(name: str, rpe: Optional[RPEConfig | Dict[str, Any]]) -> Tuple[str, Optional[RPEConfig]]:
    """(timm name, iRPE config) for ``create_model``: an official name brings its config, which a dict of fields
    refines (``{"layers": [0, 1]}``); a plain timm name takes ``rpe`` as given (dict or RPEConfig or None)."""
    official = parse_official_name(name)
    if official is None:
        return name, RPEConfig(**rpe) if isinstance(rpe, dict) else rpe
    if isinstance(rpe, RPEConfig):
        raise ValueError(f"model {name!r} already names its iRPE config; pass rpe=None, or a dict of the "
                         "fields to change")
    base, config = official
    return base, config.with_updates(**rpe) if rpe else config


def create_model(
    name: str,
    rpe: Optional[RPEConfig | Dict[str, Any]] = None,
    abs_pos: Union[bool, str] = True,
    pos: Optional[PosConfig | Dict[str, Any]] = None,
    **timm_kwargs: Any,
) -> nn.Module:
    """Build a timm DeiT/ViT and give iRPE attention to the layers ``rpe.layers`` names.

    Args:
        name: a timm model name (``deit_tiny_patch16_224``, any ``vit_*``), or an official iRPE model name
            such as ``deit_small_patch16_224_ctx_product_50_shared_qkv`` (then ``rpe`` must be None).
        rpe: the iRPE variant; None builds the plain timm model (the no-RPE baseline). With an official name:
            None, or a dict of fields that refine the official config.
        abs_pos: the absolute position embedding: True (or ``"learned"``) timm's learned one; False (or
            ``"none"``) none (paper Table 4, rows 2–7); ``"sincos"`` the fixed 2D sin-cos table (MAE).
        pos: another position-encoding family (:class:`irpe_bench.pos.PosConfig` or a dict of its fields):
            RoPE, a relative bias table, the continuous bias, PEG (:mod:`irpe_bench.pos.families`).
        timm_kwargs: passed to ``timm.create_model`` (``img_size``, ``patch_size``, ``embed_dim``, ``depth``,
            ``num_heads``, ``num_classes``, ``drop_path_rate``, …). ``pretrained`` is never used: nothing is
            downloaded.
    Returns:
        the timm model, with ``model.rpe_config`` (None without iRPE) and ``model.variant`` (the slug that
        names its runs, see :func:`variant_slug`) set.
    """
    name, rpe = resolve_rpe(name, rpe)
    if not timm.is_model(name):
        raise ValueError(f"unknown model {name!r}; use a timm DeiT/ViT name (e.g. {timm.list_models('deit_*')[:4]}) "
                         "or an official iRPE name such as 'deit_small_patch16_224_ctx_product_50_shared_k'")
    if timm_kwargs.pop("pretrained", False):
        raise ValueError("pretrained=True is not supported: no weights are downloaded; use "
                         "load_official_checkpoint() or a local checkpoint")
    _check_img_patch(timm_kwargs)
    try:
        model = timm.create_model(name, pretrained=False, **timm_kwargs)
    except TypeError as e:
        if "unexpected keyword argument" not in str(e):
            raise
        import inspect

        from timm.models.vision_transformer import VisionTransformer

        bad = str(e).rsplit("argument", 1)[-1].strip(" '\"")
        allowed = sorted(p for p in inspect.signature(VisionTransformer.__init__).parameters if p != "self")
        raise ValueError(f"{bad}={timm_kwargs.get(bad)!r}: not an option of timm's {name!r}; allowed: "
                         f"{allowed}") from None
    _vit_blocks_check(model, name)
    abs_pos = normalise_abs_pos(abs_pos)
    pos = PosConfig(**pos) if isinstance(pos, dict) else pos
    if abs_pos == "sincos":
        families.set_sincos(model)
    if not abs_pos:
        # NOTE: built with the embedding, then removed (what timm's ``pos_embed="none"`` leaves: None), rather than
        # built without it: timm draws the embedding's init from the global RNG first, so leaving it out would
        # shift every later draw and a seed would no longer give the same initial weights with and without it
        del model.pos_embed
        model.pos_embed = None
    model.rpe_config = rpe
    model.pos_config = None
    model.variant = variant_slug(name, rpe, model.num_prefix_tokens, abs_pos, pos)
    layers = rpe.layer_indices(len(model.blocks)) if rpe is not None else ()
    if pos is not None:
        families.attach(model, pos, layers)  # checks everything (layers, overlap with iRPE) before changing
    if rpe is None:
        return model
    grid = tuple(model.patch_embed.grid_size)
    for i in layers:
        block = model.blocks[i]
        block.attn = RPEAttention(block.attn, rpe, grid, model.num_prefix_tokens)
    if getattr(model, "dynamic_img_size", False):
        model.register_forward_pre_hook(_grid_hook)
    return model


ABS_POS_WORDS = {"learned": True, "none": False, "sincos": "sincos"}


def normalise_abs_pos(value: Union[bool, str]) -> Union[bool, str]:
    """True / False / ``"sincos"``: the words ``learned`` and ``none`` are True and False (one config key each)."""
    if isinstance(value, bool):
        return value
    if value in ABS_POS_WORDS:
        return ABS_POS_WORDS[value]
    raise ValueError(f"model.abs_pos={value!r}: allowed: true, false, {sorted(ABS_POS_WORDS)}")


def resize_input(model: nn.Module, img_size: int | Tuple[int, int]) -> nn.Module:
    """Make ``model`` take images of ``img_size`` for good, each position encoding as its paper transfers it:
    timm's ``set_input_size`` (the patch grid; the learned absolute embedding resampled bicubically, as timm
    loads a checkpoint at another size), the sin-cos table recomputed, iRPE's buckets for the new grid (the
    index function is defined for every offset), and the other families by :func:`irpe_bench.pos.families.resize`.
    """
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    _check_img_patch({"img_size": size, "patch_size": tuple(model.patch_embed.patch_size)})
    model.set_input_size(img_size=size)
    grid = tuple(model.patch_embed.grid_size)
    if getattr(model, "abs_pos_kind", None) == "sincos":
        families.set_sincos(model)
    for block in model.blocks:
        if isinstance(block.attn, RPEAttention):
            block.attn.grid_size = grid
    families.resize(model, grid)
    return model


def _check_img_patch(kwargs: Dict[str, Any]) -> None:
    """Fail before building when the image is not an integer number of patches (timm would only warn later)."""
    img, patch = kwargs.get("img_size"), kwargs.get("patch_size")
    if img is None or patch is None or kwargs.get("dynamic_img_pad"):
        return
    img = (img, img) if isinstance(img, int) else tuple(img)
    patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
    if any(i % p for i, p in zip(img, patch)):
        raise ValueError(f"img_size={img} is not divisible by patch_size={patch}; choose an image size that is "
                         "a multiple of the patch size")


def set_attention_options(model: nn.Module, **options: Any) -> nn.Module:
    """Set attributes (``recompute_weights``, ``kernel``) on every iRPE attention layer of ``model``."""
    for m in model.modules():
        if isinstance(m, RPEAttention):
            for name, value in options.items():
                setattr(m, name, value)
    return model


def rpe_layers(model: nn.Module) -> Tuple[int, ...]:
    """Indices of the blocks whose attention carries iRPE."""
    return tuple(i for i, b in enumerate(model.blocks) if isinstance(b.attn, RPEAttention))


def variant_slug(model_name: str, rpe: Optional[RPEConfig], num_prefix_tokens: int = 1,
                 abs_pos: Union[bool, str] = True, pos: Optional[PosConfig] = None) -> str:
    """One name per variant (W&B run, leaderboard row, checkpoint dir): ``deit_tiny_ctx_product_50_shared_k``,
    ``deit_tiny_rope_mixed_noabs``, ``deit_tiny_norpe`` (no relative encoding), ``deit_tiny_norpe_sincos``."""
    base = re.sub(r"_patch\d+_\d+$", "", model_name)
    parts = [base] + ([rpe.slug(num_prefix_tokens)] if rpe is not None else []) + \
        ([pos.slug()] if pos is not None else [])
    if len(parts) == 1:
        parts.append("norpe")
    if not abs_pos:
        parts.append("noabs")
    elif abs_pos == "sincos":
        parts.append("sincos")
    return "_".join(parts)


@torch.no_grad()
def count_params_and_macs(model: nn.Module, img_size: Optional[Tuple[int, int]] = None,
                          in_chans: int = 3) -> Dict[str, int]:
    """Trainable parameters and multiply–accumulates of one image's forward pass, via torch's flop counter.

    MACs = FLOPs / 2 of the matmul-like ops the counter knows (linear, conv, bmm), the convention of the
    paper's MACs column. Gathers and scatters (the O(L²) index steps) are not counted, as in the paper.
    NOTE: attention runs on SDPA's math backend here, because the counter has no formula for the fused CPU
    kernel and would silently count q·kᵀ and a·v as zero.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    if img_size is None:
        img_size = tuple(model.patch_embed.img_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_chans, *img_size, device=device))
    finally:
        model.train(was_training)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # a fixed sin-cos table is no parameter
    return {"params": trainable, "macs": counter.get_total_flops() // 2}
