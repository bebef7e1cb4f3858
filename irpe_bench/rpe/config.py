"""``RPEConfig``: one typed, validated description of an iRPE variant.

The coefficients of the index function are given either as the paper's ``ratio`` r (α : β : γ = 1 : 2 : 8,
so α = r, β = 2r, γ = 8r; default r = 1.9, i.e. 7×7 + 1 = 50 product buckets) or as explicit
``alpha``/``beta``/``gamma``. After validation ``alpha``, ``beta`` and ``gamma`` are always set, and explicit
coefficients in the ratio's proportions become that ratio: one model, one slug and one config key.
"""
from __future__ import annotations

import math
from typing import Literal, Tuple, Union

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from .index import INDEX_FUNCTIONS
from .mapping import MAPPINGS, num_buckets

DEFAULT_RATIO = 1.9
ATTACHMENTS = ("q", "k", "v")

#: Short words the official model names use, and the words used here.
OFFICIAL_METHOD_WORDS = {"euc": "euclidean", "quant": "quant", "cross": "cross", "product": "product"}
OFFICIAL_MODE_WORDS = {"ctx": "contextual", "bias": "bias"}


_REL_TOL = 1e-9


def _fmt(x: float) -> str:
    return f"{x:g}"


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_ratio_triple(a, b, g) -> bool:
    """Whether α : β : γ is r : 2r : 8r (up to float rounding), so that ``ratio`` r names it."""
    return all(map(_is_number, (a, b, g))) and a > 0 and math.isclose(b, 2 * a, rel_tol=_REL_TOL) and \
        math.isclose(g, 8 * a, rel_tol=_REL_TOL)


def block_indices(layers: Union[str, Tuple[int, ...]], depth: int, field: str = "layers") -> Tuple[int, ...]:
    """``layers`` (``"all"`` or block indices, validated) as the indices of a ``depth``-block model; an index out
    of range is refused naming ``field``. Shared by every per-layer encoding (iRPE, :mod:`irpe_bench.pos`)."""
    if layers == "all":
        return tuple(range(depth))
    bad = [i for i in layers if i >= depth]
    if bad:
        raise ValueError(f"{field}={list(layers)}: index {bad[0]} is out of range for a model with "
                         f"depth={depth} (allowed: 0..{depth - 1})")
    return tuple(layers)


class RPEConfig(BaseModel):
    """Where and how iRPE attaches to attention.

    Attributes:
        method: 2D mapping method, a key of ``MAPPINGS`` (euclidean, quant, quant_rank, cross, product).
        mode: ``bias`` (Eq. 14: a learnable scalar per bucket) or ``contextual`` (Eq. 15: ``q·r``).
        index: index function, a key of ``INDEX_FUNCTIONS`` (piecewise, clip).
        ratio: r for α : β : γ = r : 2r : 8r; mutually exclusive with explicit ``alpha/beta/gamma``.
        shared_head: one table for all heads (paper default) instead of one per head.
        on: the attachments, a non-empty subset of ``"qkv"``, normalised to q-k-v order.
        layers: ``"all"`` or the indices of the transformer blocks that get iRPE.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: str = "product"
    mode: Literal["bias", "contextual"] = "contextual"
    index: str = "piecewise"
    ratio: Union[float, None] = None
    alpha: Union[float, None] = None
    beta: Union[float, None] = None
    gamma: Union[float, None] = None
    shared_head: bool = True
    on: str = "k"
    layers: Union[Literal["all"], Tuple[int, ...]] = "all"

    @field_validator("method", "index")
    @classmethod
    def _registered(cls, v: str, info) -> str:
        (MAPPINGS if info.field_name == "method" else INDEX_FUNCTIONS).lookup(v)
        return v

    @field_validator("on")
    @classmethod
    def _attachments(cls, v: str) -> str:
        bad = [c for c in v if c not in ATTACHMENTS]
        if not v or bad or len(set(v)) != len(v):
            raise ValueError(f"on={v!r}: must be a non-empty subset of 'qkv' without repeats, e.g. 'k' or 'qkv'")
        return "".join(c for c in ATTACHMENTS if c in v)

    @field_validator("layers", mode="before")
    @classmethod
    def _layers(cls, v):
        if v == "all":
            return v
        if isinstance(v, int) and not isinstance(v, bool):
            v = [v]
        if not isinstance(v, (list, tuple)) or not v:
            raise ValueError(f"layers={v!r}: must be 'all' or a non-empty list of block indices")
        if any(not isinstance(i, int) or isinstance(i, bool) or i < 0 for i in v):
            raise ValueError(f"layers={v!r}: block indices must be integers >= 0")
        if len(set(v)) != len(v):
            raise ValueError(f"layers={v!r}: block indices must not repeat")
        return tuple(sorted(v))

    @model_validator(mode="before")
    @classmethod
    def _resolve_coefficients(cls, data):
        if not isinstance(data, dict):
            return data
        data = dict(data)
        explicit = [k for k in ("alpha", "beta", "gamma") if data.get(k) is not None]
        r = data.get("ratio")
        if len(explicit) == 3 and _is_ratio_triple(data["alpha"], data["beta"], data["gamma"]) and (
            r is None or (_is_number(r) and math.isclose(data["alpha"], r, rel_tol=_REL_TOL))
        ):
            # NOTE: one representation per model: explicit r : 2r : 8r coefficients are the ratio r (the same
            # slug, dump and config key as ratio=r), and a dumped config (ratio and its coefficients) reloads
            # as itself; equal up to float rounding, then recomputed from r
            explicit, r = [], float(data["alpha"]) if r is None else r
        if explicit and r is not None:
            raise ValueError(
                f"give either ratio={data['ratio']!r} or alpha/beta/gamma ({', '.join(explicit)} given), not both"
            )
        if explicit and len(explicit) != 3:
            missing = [k for k in ("alpha", "beta", "gamma") if k not in explicit]
            raise ValueError(f"alpha, beta and gamma must be given together; missing: {', '.join(missing)}")
        if not explicit:
            r = DEFAULT_RATIO if r is None else r
            if not isinstance(r, (int, float)) or isinstance(r, bool) or r <= 0:
                raise ValueError(f"ratio={r!r}: must be a number > 0 (α : β : γ = r : 2r : 8r)")
            data.update(ratio=float(r), alpha=float(r), beta=2.0 * r, gamma=8.0 * r)
        return data

    @model_validator(mode="after")
    def _cross_field(self) -> "RPEConfig":
        a, b, g = self.alpha, self.beta, self.gamma
        if a <= 0:
            raise ValueError(f"alpha={a:g}: must be > 0")
        if b < 1:
            raise ValueError(f"beta={b:g}: must be >= 1 (the index range is [-int(beta), int(beta)])")
        if a > b:
            raise ValueError(f"alpha={a:g} > beta={b:g}: need alpha <= beta < gamma")
        if g <= a or g <= b:
            raise ValueError(f"gamma={g:g}: must be > alpha={a:g} and > beta={b:g} (need alpha <= beta < gamma)")
        if self.mode == "bias" and "v" in self.on:
            raise ValueError(f"mode='bias' with on={self.on!r}: bias mode exists only on q and k; use "
                             "mode='contextual' for v")
        return self

    def with_updates(self, **changes) -> "RPEConfig":
        """A validated copy with ``changes``; a new ``ratio`` replaces explicit coefficients and vice versa."""
        data = self.model_dump()
        if "ratio" in changes:
            data.update(alpha=None, beta=None, gamma=None)
        if any(k in changes for k in ("alpha", "beta", "gamma")):
            data["ratio"] = None
        data.update(changes)
        return RPEConfig(**data)

    # ------------------------------------------------------------------ derived values
    def layer_indices(self, depth: int) -> Tuple[int, ...]:
        """The block indices that get iRPE in a ``depth``-block model; rejects indices out of range."""
        return block_indices(self.layers, depth)

    def num_buckets(self, num_prefix_tokens: int = 1) -> Tuple[int, ...]:
        """Table size of each mapping component (two for cross), including the prefix bucket."""
        return num_buckets(self.method, self.beta, num_prefix_tokens)

    def slug(self, num_prefix_tokens: int = 1) -> str:
        """Variant name in the style of the official model names, e.g. ``ctx_product_50_shared_k``.

        The number is the table size (all components, prefix bucket included); coefficients, index
        function and layers are appended only where they differ from the paper's defaults, so the name is
        unique for every distinct config.
        """
        mode = "ctx" if self.mode == "contextual" else "bias"
        parts = [mode, self.method, str(sum(self.num_buckets(num_prefix_tokens)))]
        if self.ratio is None:
            parts.append(f"a{_fmt(self.alpha)}b{_fmt(self.beta)}g{_fmt(self.gamma)}")
        elif self.ratio != DEFAULT_RATIO:
            parts.append(f"r{_fmt(self.ratio)}")
        if self.index != "piecewise":
            parts.append(self.index)
        parts += ["shared" if self.shared_head else "unshared", self.on]
        if self.layers != "all":
            parts.append("L" + "-".join(map(str, self.layers)))
        return "_".join(parts)
