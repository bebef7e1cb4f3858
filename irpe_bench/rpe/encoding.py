"""Lookup tables of iRPE and the attention terms they produce (paper Eq. 13–17, efficient form Eq. 26–28).

With ``s = head_dim ** -0.5`` and ``I(i, j)`` the bucket id of query ``i`` and key ``j``
(:mod:`irpe_bench.rpe.mapping`), attention with iRPE is, exactly as the official ``RPEAttention``::

    e_ij = s · q_i·k_j + b^K_ij + b^Q_ij                                        (Eq. 13, 16)
      contextual:  b^K_ij = s · q_i · r^K[I(i, j)]        b^Q_ij = s · k_j · r^Q[I(j, i)]      (Eq. 15)
      bias:        b^K_ij = r^K[I(i, j)]                  b^Q_ij = r^Q[I(j, i)]      (Eq. 14, *unscaled*)
    a_ij = dropout(softmax_j(e_ij))
    z_i  = Σ_j a_ij v_j + Σ_j a_ij r^V[I(i, j)]                                  (Eq. 17)

NOTE: the query-side term uses the *reversed* offset ``I(j, i)`` (key minus query). That is Eq. 16 up to a
relabelling of buckets, and it is what the released checkpoints were trained with. Cross has two id
components whose lookups are summed (Eq. 22–24); every function below sums over components.

Efficient forms (the cost that matters is per layer, L tokens, K buckets, d = head_dim):

* contextual q/k (Eq. 26–28): ``z = x @ r`` for every bucket (O(L·K·d)), then gather ``z[i, I(i, j)]``
  (O(L²)) with a flat index, whose backward is a scatter-add — no advanced-indexing accumulation (the
  official code's slow backward).
* v: ``Σ_j a_ij r[I(i, j)] = Σ_t (Σ_{j: I(i,j)=t} a_ij) r[t]``: scatter-add the attention weights into
  per-bucket sums (O(L²)), then one matmul with the table (O(L·K·d)) — instead of the official code's
  O(L²·d) gather of an (L, L, d) tensor.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Union

import torch
from torch import nn

from .config import RPEConfig


def bucket_index(ids: torch.Tensor, num_buckets: int, transpose: bool = False) -> torch.Tensor:
    """(C, L, L) bucket ids → (C, L·L) flat positions into a (…, L, K) per-bucket tensor viewed as (…, L·K);
    the index of :func:`gather_buckets` and :func:`scatter_buckets`.

    ``transpose=False``: entry (i, j) reads ``z[i, I(i, j)]``; ``transpose=True``: it reads ``z[j, I(j, i)]``,
    the query-side term already in (query, key) layout. :class:`~irpe_bench.models.RPEAttention` keeps both
    forms for its grid in non-persistent buffers; the functions below build one from ``ids`` when not given it.
    """
    L = ids.shape[-1]
    rows = torch.arange(L, device=ids.device) * num_buckets
    flat = ids.transpose(-1, -2) + rows.view(1, 1, L) if transpose else ids + rows.view(1, L, 1)
    return flat.reshape(ids.shape[0], L * L)


def _scatter_flat(x2: torch.Tensor, index: torch.Tensor, width: int) -> torch.Tensor:
    """The adjoint of ``gather(z2, 1, index)``: (N, L·L) → (N, width), entries summed per target position."""
    return x2.new_zeros((x2.shape[0], width)).scatter_add_(1, index, x2)


class GatherFlat(torch.autograd.Function):
    """``torch.gather(z, 1, index)`` whose backward keeps only the index.

    NOTE: ``gather`` is faster than ``index_select`` along dim 1 on the CPU (``benchmarks/bench_lookup.py``),
    but autograd's own gather saves its input for the backward — z (B, H, L, K), a quarter of an L×L tensor
    per layer at K=50, L=197. The gradient needs only z's shape and the index (an
    expanded view: no memory), so this keeps those: the scatter-add backward is the same as gather's own.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.z_shape = z.shape
        return torch.gather(z, 1, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        return _scatter_flat(grad, index, ctx.z_shape[1]), None


def gather_buckets(z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out[..., i, j] = Σ_c z[..., i, I_c(i, j)]`` (or ``z[..., j, I_c(j, i)]`` for a transposed index):
    z (B, H, L, K), index (C, L·L) from :func:`bucket_index` → (B, H, L, L), contiguous.

    NOTE: one gather per component on z viewed as (B·H, L·K) with the flat index broadcast over B·H (a
    stride-0 view): no materialised (B, H, L, L) index, the query-side term is produced in place of a
    transposed copy, and the backward is a scatter-add that keeps only the index (:class:`GatherFlat`).
    """
    B, H, L, K = z.shape
    z2 = z.reshape(B * H, L * K)
    out = GatherFlat.apply(z2, index[0].expand(B * H, -1))
    for c in range(1, index.shape[0]):
        out.add_(GatherFlat.apply(z2, index[c].expand(B * H, -1)))  # fresh output; its backward keeps no copy
    return out.view(B, H, L, L)


def scatter_buckets(x: torch.Tensor, index: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """The adjoint of :func:`gather_buckets`: ``out[..., i, t] = Σ_c Σ_{j: I_c(i, j) = t} x[..., i, j]``,
    x (B, H, L, L) → (B, H, L, K). Per-bucket sums of attention weights (Eq. 17's efficient form) and the
    gradient of a gathered term are both this."""
    B, H, L, _ = x.shape
    x2 = x.reshape(B * H, L * L)
    out = _scatter_flat(x2, index[0].expand(B * H, -1), L * num_buckets)
    for c in range(1, index.shape[0]):
        out.scatter_add_(1, index[c].expand(B * H, -1), x2)  # NOTE: in place: no copy of the sums
    return out.view(B, H, L, num_buckets)


class BucketTerm(NamedTuple):
    """A contextual logits term before any work: ``gather_buckets(contextual_products(x, table, scale), index)``.

    Kept unexpanded by paths that recompute the term in the backward pass instead of storing the L×L term or
    even the (B, H, L, K) products (:mod:`irpe_bench.models.attention_core`)."""

    x: torch.Tensor
    table: torch.Tensor
    scale: float
    index: torch.Tensor

    def products(self) -> torch.Tensor:
        return contextual_products(self.x, self.table, self.scale)

    def expand(self) -> torch.Tensor:
        return gather_buckets(self.products(), self.index)


#: A logits term: dense (bias mode, an attention mask) or a contextual :class:`BucketTerm`.
LogitsTerm = Union[torch.Tensor, BucketTerm]


def contextual_products(x: torch.Tensor, table: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Eq. 26–28's first step: ``z[..., i, t] = scale · x_i · r[t]`` for every bucket t, (B, H, L, K).

    The scale multiplies the (H, d, K) table rather than x or the (B, H, L, K) product: the official
    ``rpe_k(q * s)`` up to float rounding, at no cost proportional to the batch."""
    if scale != 1.0:
        table = table * scale
    return torch.matmul(x, as_matrix(table).to(x.dtype))  # NOTE: x's dtype, as autocast's matmul would


def contextual_logits(x: torch.Tensor, table: torch.Tensor, ids: torch.Tensor, scale: float = 1.0,
                      transpose: bool = False, index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Eq. 15 / 26–28: ``scale · x_i · r[I(i, j)]``; with ``transpose``, its transpose ``scale · x_j · r[I(j, i)]``
    (the query-side term b^Q of the module docstring, computed directly in (query, key) layout).

    Args:
        x: (B, H, L, d) queries (for r^K) or keys (for r^Q).
        table: (H or 1, d, K) lookup table.
        ids: (C, L, L) int64 bucket ids.
        index: ``bucket_index(ids, K, transpose)`` if already built (C, L·L).
    Returns:
        (B, H, L, L).
    """
    if index is None:
        index = bucket_index(ids, table.shape[-1], transpose)
    return gather_buckets(contextual_products(x, table, scale), index)


def as_matrix(table: torch.Tensor) -> torch.Tensor:
    """A shared (1, m, n) table as (m, n). NOTE: ``matmul`` folds (B, H, L, m) @ (m, n) into one matrix
    product (and its table gradient into another), where a (1, m, n) operand makes it expand the table to
    B·H small batched products."""
    return table[0] if table.shape[0] == 1 else table


#: NOTE: the name earlier revisions' ``models/attention_core.py`` imports: ``benchmarks/bench_core_ab.py`` loads
#: such a core beside the current package (``--scope core``)
_as_matrix = as_matrix


def bias_logits(table: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Eq. 14: ``r[I(i, j)]``; table (H or 1, K), ids (C, L, L) → (1, H or 1, L, L)."""
    L = ids.shape[-1]
    out = table.index_select(1, ids[0].flatten())  # NOTE: backward is an index_add, not an index_put sort
    for c in range(1, ids.shape[0]):
        out = out + table.index_select(1, ids[c].flatten())
    return out.view(1, table.shape[0], -1, L)


def contextual_values(attn: torch.Tensor, table: torch.Tensor, ids: torch.Tensor,
                      index: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Eq. 17's position term ``Σ_j a_ij r[I(i, j)]``, efficiently: per-bucket sums of ``a``, then ``@ r``.

    Args:
        attn: (B, H, L, L) attention weights after softmax and dropout.
        table: (H or 1, K, d) lookup table.
        ids: (C, L, L) int64 bucket ids.
        index: ``bucket_index(ids, K)`` if already built (C, L·L).
    Returns:
        (B, H, L, d).
    """
    K = table.shape[-2]
    per_bucket = scatter_buckets(attn, bucket_index(ids, K) if index is None else index, K)  # B, H, L, K
    return torch.matmul(per_bucket, as_matrix(table).to(per_bucket.dtype))


class RelativePositionEncoding(nn.Module):
    """The learned table of one attachment (q, k or v) of one attention layer.

    Parameter names and shapes follow the official implementation so that its checkpoints map directly:
    ``lookup_table_weight`` (H, d, K) on q/k and (H, K, d) on v in contextual mode, ``lookup_table_bias``
    (H, K) in bias mode, with H = 1 when heads share the table. Cross's row and column tables are
    concatenated along K (rows first). All tables start at zero (paper Supp. §2), so a fresh model computes
    exactly the attention without iRPE.
    """

    def __init__(self, config: RPEConfig, attach: str, num_heads: int, head_dim: int, num_prefix_tokens: int):
        super().__init__()
        if attach not in ("q", "k", "v"):
            raise ValueError(f"attach={attach!r}: must be one of 'q', 'k', 'v'")
        self.config, self.attach = config, attach
        self.mode = config.mode
        self.num_heads = 1 if config.shared_head else num_heads
        self.num_buckets = sum(config.num_buckets(num_prefix_tokens))
        h, d, k = self.num_heads, head_dim, self.num_buckets
        if config.mode == "bias":
            if attach == "v":
                raise ValueError("mode='bias' on v does not exist (paper Eq. 17 needs a vector per bucket)")
            self.lookup_table_bias = nn.Parameter(torch.zeros(h, k))
        else:
            self.lookup_table_weight = nn.Parameter(torch.zeros(h, k, d) if attach == "v" else torch.zeros(h, d, k))

    @property
    def table(self) -> torch.Tensor:
        return self.lookup_table_bias if self.mode == "bias" else self.lookup_table_weight

    def forward(self, x: torch.Tensor, ids: torch.Tensor, scale: float = 1.0, transpose: bool = False,
                index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """q/k: ``x`` (B, H, L, d) → logits term (B or 1, H, L, L), ``scale`` applied in contextual mode only
        (the official code adds bias-mode terms unscaled), transposed with ``transpose``; v: ``x`` = attention
        (B, H, L, L) → (B, H, L, d). ``index``: ``bucket_index(ids, K, transpose)`` if already built."""
        if self.attach == "v":
            return contextual_values(x, self.lookup_table_weight, ids, index)
        term = self.logits_term(x, ids, scale, transpose, index)
        return term.expand() if isinstance(term, BucketTerm) else term

    def logits_term(self, x: torch.Tensor, ids: torch.Tensor, scale: float = 1.0, transpose: bool = False,
                    index: Optional[torch.Tensor] = None) -> LogitsTerm:
        """q/k only: :meth:`forward`'s logits term, a contextual one left unexpanded (:class:`BucketTerm`)."""
        if self.mode == "bias":
            out = bias_logits(self.lookup_table_bias, ids)
            return out.transpose(-1, -2) if transpose else out
        table = self.lookup_table_weight
        if index is None:
            index = bucket_index(ids, table.shape[-1], transpose)
        return BucketTerm(x, table, scale, index)

    def extra_repr(self) -> str:
        c = self.config
        return (f"attach={self.attach}, method={c.method}, mode={c.mode}, index={c.index}, "
                f"alpha={c.alpha:g}, beta={c.beta:g}, gamma={c.gamma:g}, heads={self.num_heads}, "
                f"buckets={self.num_buckets}")


def attention_logits_terms(
    rpe_q: Optional[RelativePositionEncoding],
    rpe_k: Optional[RelativePositionEncoding],
    q: torch.Tensor,
    k: torch.Tensor,
    scale: float,
    ids: torch.Tensor,
    expand: bool = True,
    index: Optional[torch.Tensor] = None,
    index_t: Optional[torch.Tensor] = None,
) -> List[LogitsTerm]:
    """``[b^K, b^Q]`` of the module docstring (those present), each (B|1, H|1, L, L) in (query, key) layout;
    with ``expand=False`` contextual terms stay :class:`BucketTerm` (z and its index, no L×L tensor).
    ``index`` / ``index_t``: ``bucket_index(ids, K)`` and its transposed form, if already built."""
    terms: List[LogitsTerm] = []
    if rpe_k is not None:
        terms.append(rpe_k.logits_term(q, ids, scale, index=index))
    if rpe_q is not None:  # NOTE: reversed offset I(j, i), as official
        terms.append(rpe_q.logits_term(k, ids, scale, transpose=True, index=index_t))
    if expand:
        terms = [t.expand() if isinstance(t, BucketTerm) else t for t in terms]
    return terms
