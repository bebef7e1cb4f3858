"""Import checkpoints of the official DeiT-with-iRPE code (microsoft/Cream ``iRPE/DeiT-with-iRPE``).

The official ``VisionTransformer`` uses timm's parameter names, and our ``RPEAttention`` keeps the official
``rpe_{q,k,v}.lookup_table_{weight,bias}`` names, so almost every key maps to itself. The one exception is
the cross method: the official code has two modules ``rp_rows``/``rp_cols``; here the two tables are one,
concatenated along the bucket axis (rows first, see :mod:`irpe_bench.rpe.mapping`).
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, Mapping, Union

import torch
from torch import nn

_CROSS_KEY = re.compile(r"^(?P<prefix>.*\.rpe_[qkv])\.rp_(?P<axis>rows|cols)\.(?P<param>lookup_table_\w+)$")


def _bucket_dim(param: str, prefix: str) -> int:
    """Bucket axis of a table: last for q/k and bias tables, the middle one for contextual v (H, K, d)."""
    return -2 if prefix.endswith("rpe_v") and param == "lookup_table_weight" else -1


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Map official parameter names to irpe_bench names (cross tables are concatenated, rows first)."""
    out: Dict[str, torch.Tensor] = {}
    cross: Dict[tuple, Dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key  # saved from DDP
        m = _CROSS_KEY.match(key)
        if m is None:
            out[key] = value
        else:
            cross.setdefault((m["prefix"], m["param"]), {})[m["axis"]] = value
    for (prefix, param), axes in cross.items():
        if set(axes) != {"rows", "cols"}:
            missing = ({"rows", "cols"} - set(axes)).pop()
            raise KeyError(f"official cross checkpoint has {prefix}.rp_{next(iter(axes))}.{param} "
                           f"but lacks {prefix}.rp_{missing}.{param}")
        out[f"{prefix}.{param}"] = torch.cat([axes["rows"], axes["cols"]], dim=_bucket_dim(param, prefix))
    return out


def load_official_checkpoint(model: nn.Module, checkpoint: Union[str, os.PathLike, Mapping[str, Any]]) -> nn.Module:
    """Load official DeiT-with-iRPE weights into the equivalent irpe_bench model, strictly.

    Args:
        model: built by :func:`irpe_bench.models.create_model` with the same config as the checkpoint (the
            official model name works: ``create_model("deit_small_patch16_224_ctx_product_50_shared_k")``).
        checkpoint: a path (read with ``torch.load(weights_only=True)``), a dict with the weights under
            ``"model"`` (the official model zoo format) or a bare state dict.
    Raises:
        ValueError listing missing and unexpected keys, or mismatched shapes, when the checkpoint is not
        for this model.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"checkpoint must be a path or a mapping, got {type(checkpoint).__name__}")
    state = checkpoint.get("model", checkpoint)
    state = convert_official_state_dict(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = ["official checkpoint does not match the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {missing}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {unexpected}")
        if shapes:
            lines.append(f"  shape mismatches ({len(shapes)}): {shapes}")
        lines.append("  build the model with the same name/config as the checkpoint (e.g. the official name).")
        raise ValueError("\n".join(lines))
    model.load_state_dict(state, strict=True)
    return model
