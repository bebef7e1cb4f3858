"""The position-encoding families besides iRPE, built from timm's own modules and grafted onto a timm ViT.

One registry, :data:`FAMILIES`, a slug per family (the config's ``model.pos.family``). Each family is timm's
implementation, not a re-implementation, wired into the blocks ``model.pos.layers`` names the way timm's own
models wire it, so that a harness model loads the weights of the timm model that has the family and computes the
same function (tests/test_pos_families.py):

* ``rope_axial`` — 2D axial RoPE (Heo et al., ECCV 2024, "RoPE-Axial"): ``timm.layers.RotaryEmbeddingCat`` at the
  model's top (``model.rope``), applied to q and k of the patch tokens by timm's ``AttentionRope``; as timm's
  ``vit_*_patch16_rope_224`` (frequency base 100, xy grid);
* ``rope_mixed`` — RoPE-Mixed, learnable frequencies per layer and head (``RotaryEmbeddingMixed``); as timm's
  ``vit_*_patch16_rope_mixed_224`` (base 10);
* ``rpb`` — a relative position bias table per layer (Swin / BEiT; ``timm.layers.RelPosBias``, with the class
  token's three extra entries), by timm's ``RelPosAttention``, as ``vit_relpos_*`` with ``rel_pos_type='bias'``;
* ``cpb`` — Swin-v2's continuous bias: an MLP of log-spaced relative coordinates, 16·sigmoid
  (``RelPosMlp(mode='swin')``), as ``vit_relpos_*`` with ``rel_pos_type='mlp_swin'``;
* ``cpe`` — CPVT's positional encoding generator: a 3×3 depthwise convolution of the patch grid added to the
  tokens at the input of the named blocks (``timm.models.twins.PosConv``); default after the first block, as
  CPVT found best.

Each family also knows how it follows a new input grid (:meth:`Family.resize`), for evaluation at other image
sizes, as its paper does: RoPE recomputes its angles for the new grid; the bias table is resized bicubically
(Swin, timm's ``set_window_size``); the continuous bias is queried at the new offsets, normalised by the
training window as Swin-v2 transfers windows; the PEG's convolution runs on any grid.

The absolute 2D sin-cos embedding (``model.abs_pos: sincos``, MAE's fixed table, class token at zero) is here too:
it is recomputed for a new grid instead of interpolated.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Optional, Tuple, Union

import torch
from timm.layers import AttentionRope, RelPosBias, RelPosMlp, build_sincos2d_pos_embed, create_rope_embed
from timm.models.twins import PosConv
from timm.models.vision_transformer_relpos import RelPosAttention
from torch import nn

from ..rpe.registry import Registry

FAMILIES = Registry("position-encoding family", instantiate=True)

Grid = Tuple[int, int]


def input_grid(model: nn.Module, x: torch.Tensor) -> Grid:
    """The patch grid of input ``x`` (follows each input with timm's ``dynamic_img_size``)."""
    if getattr(model, "dynamic_img_size", False):
        return tuple(model.patch_embed.dynamic_feat_size(x.shape[-2:]))
    return tuple(model.patch_embed.grid_size)


def _positions_hook(model: nn.Module, args: Tuple[Any, ...]) -> None:
    """Once per forward pass: what every family's layers need of this input (the grid, RoPE's angles)."""
    cfg = model.pos_config
    FAMILIES.lookup(cfg.family).on_forward(model, input_grid(model, args[0]))


class Family:
    """One family: how it is attached to a timm ViT, what it needs of each input, how it follows a new grid."""

    name: str = ""
    #: options of ``PosConfig`` this family reads, with their defaults (the others must stay unset)
    defaults: Dict[str, Any] = {}
    default_layers: Union[str, Tuple[int, ...]] = "all"
    #: it takes over the attention layer (one relative encoding per layer: not beside iRPE on the same layer)
    per_attention: bool = True
    #: parameter-name patterns left out of weight decay (the family's paper does)
    no_decay: Tuple[str, ...] = ()

    def check(self, embed_dim: int, num_heads: int, num_prefix_tokens: int) -> None:
        """Raise ValueError (naming the field) when the model cannot carry this family."""

    def attach(self, model: nn.Module, cfg, layers: Tuple[int, ...]) -> None:
        raise NotImplementedError

    def on_forward(self, model: nn.Module, grid: Grid) -> None:
        """Per input: give the layers what they need for ``grid``."""

    def resize(self, model: nn.Module, grid: Grid) -> None:
        """Follow a new input grid for good (evaluation at another image size)."""
        self.on_forward(model, grid)


def _heads(attn: nn.Module) -> int:
    return attn.num_heads


def _adopt(new: nn.Module, attn: nn.Module) -> None:
    """``new`` (built on the meta device) takes over the replaced attention's trained modules and its kernel
    choice, so that its parameters keep their names (``blocks.i.attn.qkv``) and their values."""
    new.qkv, new.proj, new.q_norm, new.k_norm = attn.qkv, attn.proj, attn.q_norm, attn.k_norm
    new.fused_attn = attn.fused_attn


def _dims(attn: nn.Module) -> Dict[str, Any]:
    """The constructor arguments timm's attention classes share, read from a timm ``Attention``."""
    return dict(dim=attn.qkv.in_features, num_heads=attn.num_heads, qkv_bias=attn.qkv.bias is not None,
                attn_drop=attn.attn_drop.p, proj_drop=attn.proj_drop.p, device="meta")


# ----------------------------------------------------------------------------------------------------- RoPE


class RopeAttention(AttentionRope):
    """timm's ``AttentionRope`` taking the place of a ViT block's attention and keeping its qkv/proj modules; the
    rotary embedding of the current input is set by the model's forward hook (``rope_embed``), as timm's Eva
    passes it to each block."""

    def __init__(self, attn: nn.Module, num_prefix_tokens: int):
        super().__init__(num_prefix_tokens=num_prefix_tokens, **_dims(attn))
        _adopt(self, attn)
        self.norm = getattr(attn, "norm", nn.Identity())
        self.rope_embed: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        return super().forward(x, rope=self.rope_embed, attn_mask=attn_mask, is_causal=is_causal)


class _Rope(Family):
    rope_type = ""
    no_decay = (r"^rope\.freqs$",)  # RoPE-Mixed's learnable frequencies (timm's no_weight_decay)

    def check(self, embed_dim: int, num_heads: int, num_prefix_tokens: int) -> None:
        head_dim = embed_dim // num_heads
        if head_dim % 4:
            raise ValueError(f"model.pos.family={self.name!r}: 2D RoPE rotates pairs of channels per axis, so the "
                             f"head dimension must be a multiple of 4; embed_dim={embed_dim} / num_heads={num_heads} "
                             f"gives {head_dim}")

    def rope_kwargs(self, cfg, layers: Tuple[int, ...]) -> Dict[str, Any]:
        raise NotImplementedError

    def attach(self, model: nn.Module, cfg, layers: Tuple[int, ...]) -> None:
        grid = list(model.patch_embed.grid_size)
        # NOTE: the kwargs of timm's Eva for its RoPE-ViT models (rope_grid_indexing='xy', no coordinate
        # augmentation), so the module and its state_dict are those of vit_*_patch16_rope[_mixed]_224
        model.rope = create_rope_embed(rope_type=self.rope_type, dim=model.embed_dim,
                                       num_heads=_heads(model.blocks[0].attn), feat_shape=grid,
                                       temperature=cfg.rope_theta, grid_indexing="xy", rotate_half=False,
                                       shift_coords=None, jitter_coords=None, rescale_coords=None,
                                       **self.rope_kwargs(cfg, layers))
        for slot, i in enumerate(layers):
            block = model.blocks[i]
            block.attn = RopeAttention(block.attn, model.num_prefix_tokens)
            block.attn.rope_slot = slot

    def on_forward(self, model: nn.Module, grid: Grid) -> None:
        rope = model.rope
        if list(grid) != list(rope.feat_shape):
            rope.update_feat_shape(list(grid))
        embed = rope.get_embed()
        for block in model.blocks:
            if isinstance(block.attn, RopeAttention):
                block.attn.rope_embed = embed[block.attn.rope_slot] if self.rope_type == "mixed" else embed


@FAMILIES.register("rope_axial")
class RopeAxial(_Rope):
    rope_type = "cat"
    defaults = {"rope_theta": 100.0}

    def rope_kwargs(self, cfg, layers):
        return {"in_pixels": False, "grid_offset": 0.0, "ref_feat_shape": None}


@FAMILIES.register("rope_mixed")
class RopeMixed(_Rope):
    rope_type = "mixed"
    defaults = {"rope_theta": 10.0}

    def rope_kwargs(self, cfg, layers):
        return {"depth": len(layers)}


# ------------------------------------------------------------------------------------------ relative bias


class BiasAttention(RelPosAttention):
    """timm's ``RelPosAttention`` (the attention of ``vit_relpos_*``) in a ViT block's place, keeping its
    qkv/proj modules; ``rel_pos`` is the family's bias module."""

    def __init__(self, attn: nn.Module, rel_pos: nn.Module):
        super().__init__(**_dims(attn))
        _adopt(self, attn)
        self.rel_pos = rel_pos

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("a relative position bias layer takes no attention mask")
        return super().forward(x)


class _Bias(Family):
    def check(self, embed_dim: int, num_heads: int, num_prefix_tokens: int) -> None:
        if num_prefix_tokens > 1:
            raise ValueError(f"model.pos.family={self.name!r}: timm's bias tables hold one prefix token (the class "
                             f"token); this model has {num_prefix_tokens}")

    def bias_module(self, cfg, grid: Grid, num_heads: int, num_prefix_tokens: int, device) -> nn.Module:
        raise NotImplementedError

    def attach(self, model: nn.Module, cfg, layers: Tuple[int, ...]) -> None:
        grid = tuple(model.patch_embed.grid_size)
        for i in layers:
            block = model.blocks[i]
            device = block.attn.qkv.weight.device
            rel = self.bias_module(cfg, grid, _heads(block.attn), model.num_prefix_tokens, device)
            block.attn = BiasAttention(block.attn, rel)

    def resize(self, model: nn.Module, grid: Grid) -> None:
        for block in model.blocks:
            if isinstance(block.attn, BiasAttention):
                block.attn.rel_pos.set_window_size(grid)

    def on_forward(self, model: nn.Module, grid: Grid) -> None:
        for block in model.blocks:
            if isinstance(block.attn, BiasAttention) and tuple(block.attn.rel_pos.window_size) != tuple(grid):
                raise ValueError(f"input grid {grid}: the bias tables are for {tuple(block.attn.rel_pos.window_size)}"
                                 "; resize the model first (irpe_bench.models.resize_input)")


@FAMILIES.register("rpb")
class RelativeBiasTable(_Bias):
    no_decay = (r"\.relative_position_bias_table$",)

    def bias_module(self, cfg, grid, num_heads, num_prefix_tokens, device):
        return RelPosBias(window_size=grid, num_heads=num_heads, prefix_tokens=num_prefix_tokens, device=device)


@FAMILIES.register("cpb")
class ContinuousBias(_Bias):
    defaults = {"cpb_hidden": 512}
    no_decay = (r"\.rel_pos\.mlp\.",)  # Swin-v2 leaves its cpb_mlp out of weight decay

    def bias_module(self, cfg, grid, num_heads, num_prefix_tokens, device):
        return RelPosMlp(window_size=grid, num_heads=num_heads, hidden_dim=cfg.cpb_hidden,
                         prefix_tokens=num_prefix_tokens, mode="swin", device=device)

    def resize(self, model: nn.Module, grid: Grid) -> None:
        for block in model.blocks:
            if isinstance(block.attn, BiasAttention):
                rel = block.attn.rel_pos
                if tuple(rel.pretrained_window_size) == (0, 0):
                    rel.pretrained_window_size = tuple(rel.window_size)  # Swin-v2: coordinates in training units
                rel.set_window_size(grid)


# ---------------------------------------------------------------------------------------------------- PEG


def _peg_hook(block: nn.Module, args: Tuple[Any, ...]) -> Tuple[Any, ...]:
    x, npt = args[0], block.peg_prefix_tokens
    tokens = block.peg(x[:, npt:], block.peg_grid)
    return (torch.cat([x[:, :npt], tokens], dim=1), *args[1:])


@FAMILIES.register("cpe")
class ConditionalEncoding(Family):
    default_layers = (1,)
    per_attention = False

    def attach(self, model: nn.Module, cfg, layers: Tuple[int, ...]) -> None:
        grid = tuple(model.patch_embed.grid_size)
        device = model.patch_embed.proj.weight.device
        for i in layers:
            block = model.blocks[i]
            block.peg = PosConv(model.embed_dim, model.embed_dim, device=device)
            block.peg_prefix_tokens, block.peg_grid = model.num_prefix_tokens, grid
            block.register_forward_pre_hook(_peg_hook)

    def on_forward(self, model: nn.Module, grid: Grid) -> None:
        for block in model.blocks:
            if hasattr(block, "peg"):
                block.peg_grid = tuple(grid)


# --------------------------------------------------------------------------------------- model-level wiring


def attach(model: nn.Module, cfg, rpe_layers: Tuple[int, ...] = ()) -> Tuple[int, ...]:
    """Give ``model`` (a timm ViT) the family of ``cfg`` (a :class:`.config.PosConfig`) in its layers; returns
    them. Raises ValueError before changing anything when the model cannot carry it."""
    family = FAMILIES.lookup(cfg.family)
    layers = cfg.layer_indices(len(model.blocks))
    family.check(model.embed_dim, _heads(model.blocks[0].attn), model.num_prefix_tokens)
    overlap = sorted(set(layers) & set(rpe_layers)) if family.per_attention else []
    if overlap:
        raise ValueError(f"model.pos.family={cfg.family!r} and iRPE (model.rpe) both on block(s) {overlap}: one "
                         "relative encoding per attention layer; set model.rpe: null, or give the two disjoint "
                         "layers (model.pos.layers, model.rpe.layers)")
    family.attach(model, cfg, layers)
    model.pos_config = cfg
    model.register_forward_pre_hook(_positions_hook)
    return layers


def no_decay_names(model: nn.Module) -> list:
    """Parameters of the model's family that its paper leaves out of weight decay."""
    cfg = getattr(model, "pos_config", None)
    if cfg is None:
        return []
    patterns = [re.compile(p) for p in FAMILIES.lookup(cfg.family).no_decay]
    return [n for n, _ in model.named_parameters() if any(p.search(n) for p in patterns)]


def resize(model: nn.Module, grid: Grid) -> None:
    """Make the family follow ``grid`` for good (after timm's ``set_input_size``)."""
    cfg = getattr(model, "pos_config", None)
    if cfg is not None:
        FAMILIES.lookup(cfg.family).resize(model, tuple(grid))


def sincos_pos_embed(grid: Grid, dim: int, num_prefix_tokens: int) -> torch.Tensor:
    """MAE's fixed 2D sin-cos table (timm's ``build_sincos2d_pos_embed``, temperature 10,000), zeros for the
    prefix tokens: shape (1, prefix + H·W, dim)."""
    table = build_sincos2d_pos_embed(list(grid), dim=dim, temperature=10000.0)
    return torch.cat([table.new_zeros(num_prefix_tokens, dim), table], dim=0).unsqueeze(0)


def set_sincos(model: nn.Module) -> None:
    """Replace the learned absolute embedding by the fixed sin-cos one for the model's grid (not trained)."""
    table = sincos_pos_embed(tuple(model.patch_embed.grid_size), model.embed_dim,
                             0 if model.no_embed_class else model.num_prefix_tokens)
    model.pos_embed = nn.Parameter(table.to(model.pos_embed.device, model.pos_embed.dtype), requires_grad=False)
    model.abs_pos_kind = "sincos"
