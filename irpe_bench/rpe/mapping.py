"""2D mapping methods: turn the offset between two patches into bucket ids (paper §3.2, Eq. 19–25).

Offsets are ``(Δrow, Δcol) = position(query) - position(key)`` on the patch grid, patches in row-major order
(timm's ``PatchEmbed``). Each mapping owns its table size and id offsets and returns ``C`` *components*
of ids, each indexing one table; the encodings of the components are summed. Only ``cross`` has two
components (rows, cols). Component ``c``'s ids are shifted by the sizes of components ``< c`` so that all
components index one concatenated table of ``total`` buckets — callers never special-case cross.

Tokens that are not patches (timm's ``num_prefix_tokens``: class, distillation, register tokens) get one
extra bucket per component, id = the component's last entry, shared by their whole row and column (the
official code's ``skip`` bucket, shared by all prefix tokens since its 2022 fix).

Bucket counts per component (without the prefix bucket), with ``b = int(β)``:

============  ==================  ==========================================================
method        ids                 notes
============  ==================  ==========================================================
euclidean     g(round(√(Δr²+Δc²))) + b   Eq. 19–20. 2b+1 slots; distances ≥ 0 use only b+1 of them.
quant         g(Δr²+Δc²) + b     **Official code**, not Eq. 21: g of the *squared* distance.
quant_rank    g(rank(√(Δr²+Δc²))) + b   Paper's Eq. 21: rank among all distinct lattice distances.
cross         g(Δr)+b, g(Δc)+b   Eq. 22–24: two tables (rows, cols) of 2b+1, summed.
product       (g(Δr)+b)(2b+1) + g(Δc)+b   Eq. 25: one table of (2b+1)².
============  ==================  ==========================================================
"""
from __future__ import annotations

import functools
from typing import Callable, Tuple

import torch

from .index import get_index
from .registry import Registry


class Mapping:
    """A 2D mapping method. Subclasses set ``directed``, ``num_components`` and implement two methods."""

    name: str = ""
    directed: bool = False
    num_components: int = 1

    def component_size(self, beta: float) -> int:
        """Buckets in each component's table, excluding the prefix-token bucket."""
        return 2 * int(beta) + 1

    def ids(self, diff: torch.Tensor, g: Callable[[torch.Tensor], torch.Tensor], beta: float) -> torch.Tensor:
        """Bucket ids for offsets ``diff`` (…, 2) int64 → (C, …) int64 in ``[0, component_size)``."""
        raise NotImplementedError


#: name -> Mapping instance; ``@register_mapping("name")`` on a subclass registers an instance of it.
MAPPINGS = Registry("mapping", instantiate=True)
register_mapping = MAPPINGS.register
get_mapping: Callable[[str], Mapping] = MAPPINGS.lookup


@register_mapping("euclidean")
class Euclidean(Mapping):
    """Eq. 19–20, undirected: ``g(round(√(Δr² + Δc²)))``."""

    def ids(self, diff, g, beta):
        dist = diff.square().sum(-1).float().sqrt().round()
        return (g(dist) + int(beta)).unsqueeze(0)


@register_mapping("quant")
class Quant(Mapping):
    """The official code's "quantization": ``g(Δr² + Δc²)``, g applied to the squared distance.

    NOTE: this differs from the paper's Eq. 21, which applies g to the *rank* of the distance among the sorted
    distinct distances (0, 1, √2, 2, √5, …); ``quant_rank`` implements that. On 14×14 with ratio 33 both use
    51 buckets, but far distances merge differently. ``quant`` is the default because the released
    ``deit_small_patch16_224_ctx_quant_51_shared_k`` uses it.
    """

    def ids(self, diff, g, beta):
        return (g(diff.square().sum(-1)) + int(beta)).unsqueeze(0)


@register_mapping("quant_rank")
class QuantRank(Mapping):
    """The paper's Eq. 21: ``g(quant(√(Δr² + Δc²)))`` with quant = rank among all distinct lattice distances.

    The ranks are taken among the distinct distances present on the grid, as the authors' original release
    did (``quantize_values`` over the grid): on 14×14 with ratio 33 this uses 50 + 1 buckets, like ``quant``.
    Ids are translation invariant on a given grid but depend on its size.
    """

    def ids(self, diff, g, beta):
        sq = diff.square().sum(-1)
        return (g(torch.searchsorted(sq.unique(), sq)) + int(beta)).unsqueeze(0)


@register_mapping("cross")
class Cross(Mapping):
    """Eq. 22–24, directed: ``r = p^row[g(Δr)] + p^col[g(Δc)]``, two tables of 2b+1 buckets."""

    directed = True
    num_components = 2

    def ids(self, diff, g, beta):
        return g(diff).movedim(-1, 0) + int(beta)


@register_mapping("product")
class Product(Mapping):
    """Eq. 25, directed: ``r = p[g(Δr), g(Δc)]``, one table of (2b+1)² buckets, row-major in (Δr, Δc)."""

    directed = True

    def component_size(self, beta):
        return (2 * int(beta) + 1) ** 2

    def ids(self, diff, g, beta):
        b = int(beta)
        rc = g(diff) + b
        return (rc[..., 0] * (2 * b + 1) + rc[..., 1]).unsqueeze(0)


def grid_offsets(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(L, L, 2) int64 offsets ``pos_i - pos_j`` of a row-major ``height × width`` grid, L = h·w."""
    rows = torch.arange(height, device=device).repeat_interleave(width)
    cols = torch.arange(width, device=device).repeat(height)
    pos = torch.stack([rows, cols], dim=-1)
    return pos[:, None, :] - pos[None, :, :]


def num_buckets(method: str, beta: float, num_prefix_tokens: int) -> Tuple[int, ...]:
    """Table size of each component, including the prefix-token bucket when there are prefix tokens."""
    mapping = get_mapping(method)
    size = mapping.component_size(beta) + (1 if num_prefix_tokens > 0 else 0)
    return (size,) * mapping.num_components


def bucket_ids(
    method: str,
    index: str,
    alpha: float,
    beta: float,
    gamma: float,
    height: int,
    width: int,
    num_prefix_tokens: int = 0,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Bucket ids ``I(i, j)`` for all token pairs of a ``height × width`` grid after ``num_prefix_tokens``.

    Returns:
        (C, L, L) int64, ``L = num_prefix_tokens + height·width``; component ``c`` indexes the
        concatenated table at ``[sum(sizes[:c]), sum(sizes[:c+1]))``. Computed afresh on every call (a few
        element-wise passes over L×L): :class:`~irpe_bench.models.RPEAttention` keeps its grid's ids in a
        non-persistent buffer, so a forward pass does not call this.
    """
    mapping, fn = get_mapping(method), get_index(index)
    g = functools.partial(fn, alpha=float(alpha), beta=float(beta), gamma=float(gamma))
    sizes = num_buckets(method, beta, num_prefix_tokens)
    patch_ids = mapping.ids(grid_offsets(height, width, device), g, beta)  # C, hw, hw
    p, n = num_prefix_tokens, height * width
    ids = patch_ids.new_empty((len(sizes), p + n, p + n))
    if p > 0:
        ids[:, :p, :] = sizes[0] - 1
        ids[:, :, :p] = sizes[0] - 1
    ids[:, p:, p:] = patch_ids
    starts = torch.tensor([0, *sizes[:-1]], device=device).cumsum(0)
    ids += starts.view(-1, 1, 1)
    return ids.contiguous()


def offset_slots(height: int, width: int) -> int:
    """Slots of :func:`offset_ids`: one per patch offset ``(2h − 1)·(2w − 1)``, then the prefix-token slot."""
    return (2 * height - 1) * (2 * width - 1) + 1


def offset_ids(ids: torch.Tensor, height: int, width: int, num_prefix_tokens: int = 0) -> torch.Tensor:
    """The bucket ids of :func:`bucket_ids` as a function of the patch offset alone: (C, L, L) → (C, S) int32,
    S = :func:`offset_slots`.

    Slot ``(Δr + h − 1)·(2w − 1) + Δc + w − 1`` holds ``I`` of any two patches with offset ``(Δr, Δc) = pos_i −
    pos_j``; the last slot holds the prefix tokens' bucket (0 without prefix tokens, never read then). Every
    mapping is translation invariant on its grid (its ids are a function of the offset; ``quant_rank`` ranks
    among the grid's own distances), so one representative pair per offset gives the whole table: ids are read,
    not recomputed, so they match :func:`bucket_ids` exactly, index function and float rounding included.

    NOTE: why a table per offset: a fused kernel rebuilds ``I(i, j)`` of any tile from the token coordinates
    and this (C, ~4·L) table instead of reading a (C, L, L) one; reversing its patch slots gives ``I(j, i)``
    (``offset ↦ −offset``), the query-side lookup.
    """
    p = num_prefix_tokens
    dr, dc = torch.arange(1 - height, height), torch.arange(1 - width, width)
    rows_i, rows_j = dr.clamp(min=0), (-dr).clamp(min=0)  # row of i, of j: rows_i − rows_j = Δr, both in range
    cols_i, cols_j = dc.clamp(min=0), (-dc).clamp(min=0)
    i = (p + rows_i[:, None] * width + cols_i[None, :]).flatten().to(ids.device)
    j = (p + rows_j[:, None] * width + cols_j[None, :]).flatten().to(ids.device)
    prefix = ids[:, :1, 0] if p > 0 else ids.new_zeros((ids.shape[0], 1))
    return torch.cat([ids[:, i, j], prefix], dim=1).to(torch.int32).contiguous()
