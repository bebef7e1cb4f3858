"""``irpe-bench describe``: build a model and print what a variant is, without training."""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .overrides import add_set_argument

    p.add_argument("model", nargs="?", default="deit_tiny_patch16_224_ctx_product_50_shared_k",
                   help="timm DeiT/ViT name or official iRPE name")
    add_set_argument(p, "rpe.* fields, pos.* (another family: pos.family=rope_axial), abs_pos (true, false, "
                        "sincos), or timm kwargs (img_size, patch_size, num_classes, ...)")


def run(args: argparse.Namespace) -> int:
    """Build a model and print its variant name, buckets, parameters and MACs (no training)."""
    from pydantic import ValidationError

    from .models import count_params_and_macs, create_model, rpe_layers
    from .overrides import parse_overrides
    from .pos import PosConfig
    from .rpe.config import RPEConfig
    from .train.config import format_errors

    kwargs = parse_overrides(args.overrides)
    rpe = kwargs.pop("rpe", None)  # with an official name: fields that refine its config
    abs_pos = kwargs.pop("abs_pos", True)
    pos = kwargs.pop("pos", None)
    try:
        pos = PosConfig(**pos) if isinstance(pos, dict) else pos
    except ValidationError as e:
        raise ValueError(format_errors(e, "--set pos", root=PosConfig)) from None
    try:
        model = create_model(args.model, rpe=rpe, abs_pos=abs_pos, pos=pos, **kwargs)
    except ValidationError as e:  # the iRPE fields: one line per problem, the field and what is allowed
        raise ValueError(format_errors(e, "--set rpe", root=RPEConfig)) from None
    cfg = model.rpe_config
    cost = count_params_and_macs(model)
    info = {
        "variant": model.variant,
        "rpe": cfg.model_dump() if cfg is not None else None,
        "rpe_layers": rpe_layers(model),
        "pos": model.pos_config.model_dump() if model.pos_config is not None else None,
        "abs_pos": getattr(model, "abs_pos_kind", "learned") if model.pos_embed is not None else "none",
        "grid": list(model.patch_embed.grid_size),
        "num_prefix_tokens": model.num_prefix_tokens,
        "num_buckets": list(cfg.num_buckets(model.num_prefix_tokens)) if cfg is not None else [],
        **cost,
    }
    print(json.dumps(info, indent=2))
    return 0
