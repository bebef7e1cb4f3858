"""timm DeiT/ViT models with iRPE: construction, official names and checkpoints, cost counting."""
from .attention import RPEAttention
from .checkpoint import convert_official_state_dict, load_official_checkpoint
from .deit import (
    OFFICIAL_RATIOS,
    count_params_and_macs,
    create_model,
    parse_official_name,
    resize_input,
    resolve_rpe,
    rpe_layers,
    set_attention_options,
    variant_slug,
)

__all__ = [
    "RPEAttention", "convert_official_state_dict", "load_official_checkpoint", "OFFICIAL_RATIOS",
    "count_params_and_macs", "create_model", "parse_official_name", "resolve_rpe", "rpe_layers",
    "set_attention_options", "variant_slug", "resize_input",
]
