"""``PosConfig``: a position-encoding family other than iRPE (RoPE, relative bias tables, PEG), typed and
validated before any work starts.

iRPE keeps its own config (``model.rpe``, :class:`irpe_bench.rpe.RPEConfig`): it is the harness's subject and
its fields are the paper's. The other families are one field each here, ``model.pos``, with the same per-layer
control (``layers``). What each family reads, its defaults and how it is built live with the family in
:mod:`.families` (its registry, :data:`.families.FAMILIES`); this module imports nothing heavy itself and asks
the registry only while validating.

Defaults are filled in on validation (``rope_theta`` 100 for ``rope_axial``, …), so an explicit default and an
omitted one are one model, one slug and one config key; a field the family does not read must stay unset.
"""
from __future__ import annotations

from typing import Any, Literal, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..rpe.config import block_indices

#: the fields a family may read besides ``family`` and ``layers``; the others must stay None
OPTION_FIELDS = ("rope_theta", "cpb_hidden")


def _fmt(x: float) -> str:
    return f"{x:g}"


class PosConfig(BaseModel):
    """Where and which non-iRPE position encoding the model carries.

    Attributes:
        family: a key of :data:`irpe_bench.pos.families.FAMILIES`: ``rope_axial``, ``rope_mixed``, ``rpb``,
            ``cpb``, ``cpe``.
        layers: ``"all"`` or the transformer blocks that get it (for ``cpe``: the blocks whose input passes a
            PEG); None: the family's default (``cpe``: block 1, i.e. after the first block as in CPVT; the
            others: all).
        rope_theta: RoPE's frequency base (``rope_*`` only); None: timm's RoPE-ViT value (axial 100, mixed 10).
        cpb_hidden: width of the continuous bias MLP (``cpb`` only); None: 512, Swin-v2's.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    family: str
    layers: Union[Literal["all"], Tuple[int, ...], None] = None
    rope_theta: Optional[float] = Field(None, gt=0.0)
    cpb_hidden: Optional[int] = Field(None, ge=1)

    @field_validator("layers", mode="before")
    @classmethod
    def _layers(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            v = (v,)
        if isinstance(v, (list, tuple)):
            if not v:
                raise ValueError("layers=[]: give 'all' or at least one block index")
            if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in v):
                raise ValueError(f"layers={list(v)}: block indices must be integers ≥ 0")
            return tuple(sorted(set(v)))
        return v

    @model_validator(mode="before")
    @classmethod
    def _family_defaults(cls, data: Any) -> Any:
        """Fill the family's defaults and refuse options it does not read (before the fields are frozen)."""
        if not isinstance(data, dict) or not isinstance(data.get("family"), str):
            return data
        from .families import FAMILIES

        family = FAMILIES.lookup(data["family"])
        out = dict(data)
        for name in OPTION_FIELDS:
            if name in family.defaults:
                if out.get(name) is None:
                    out[name] = family.defaults[name]
            elif out.get(name) is not None:
                readers = sorted(f for f, e in FAMILIES.items() if name in e.defaults)
                raise ValueError(f"{name}={out[name]!r}: family {data['family']!r} does not read it (only "
                                 f"{readers} do); leave it unset")
        if out.get("layers") is None:
            out["layers"] = family.default_layers
        return out

    def layer_indices(self, depth: int) -> Tuple[int, ...]:
        """The block indices that get the encoding in a ``depth``-block model; rejects indices out of range."""
        return block_indices(self.layers, depth, "model.pos.layers")

    def slug(self) -> str:
        """The family's name, then what differs from its defaults: ``rope_axial``, ``rope_mixed_t20``,
        ``cpe_L1-5``, ``rpb_L0-1``."""
        from .families import FAMILIES

        family = FAMILIES.lookup(self.family)
        parts = [self.family]
        if self.rope_theta is not None and self.rope_theta != family.defaults.get("rope_theta"):
            parts.append(f"t{_fmt(self.rope_theta)}")
        if self.cpb_hidden is not None and self.cpb_hidden != family.defaults.get("cpb_hidden"):
            parts.append(f"h{self.cpb_hidden}")
        if self.layers != family.default_layers:
            parts.append("L" + ("all" if self.layers == "all" else "-".join(map(str, self.layers))))
        return "_".join(parts)
