"""The attention core with iRPE terms, with a hand-written backward: how eager attention trains on the CPU, and
how recomputed weights (``recompute_weights``) train on every device. On CUDA, kept weights train through
autograd's backward, which is faster there (:mod:`.attention`; docs/performance.md).

``softmax(s·q kᵀ + iRPE terms) v + value term`` through autograd would keep the weights for two backward
nodes, run PyTorch's softmax backward (an extra L×L reduction pass) and store the per-bucket products z of each
contextual term. This function computes the same gradients from the weights and the output (``D`` below is
O(L·d), not an L×L pass), recomputes the small z, and gives the iRPE terms' gradients in the same pass. With
``recompute_weights`` it keeps, like the no-RPE baseline's fused kernel, one log-sum-exp per row instead of the
weights and recomputes them in the backward pass: no L×L tensor is kept at all. The
maths (notation of :mod:`irpe_bench.rpe.encoding`; ``G`` a bucket gather, ``G*`` its adjoint, a
scatter-add)::

    forward    z_c = s · x_c r_c (x_c = q for r^K, k for r^Q)
               S = s · q kᵀ + Σ_c G(z_c) + dense          ℓ_i = logsumexp_j S_ij        P = exp(S − ℓ)
               O = P v + G*(P) r^V                          saved: q, k, v, the tables, dense, O, and P (or ℓ)
    backward   P = exp(S − ℓ)                               (recompute_weights: z_c, one matmul, the gathers, an exp)
               dP = dO vᵀ + G(dO r^Vᵀ)                     (dP_ij = dO_i · (v_j + r^V[I(i, j)]))
               D_i = dO_i · O_i                             (= Σ_j P_ij dP_ij, from O: no L×L pass)
               dS = P ⊙ (dP − D)                            (softmax backward)
               dq = s · dS k    dk = s · dSᵀ q    dv = Pᵀ dO    d dense = dS (summed to its shape)
               dz_c = G*(dS)    dx_c += s · dz_c r_cᵀ    dr_c = s · Σ_{b, i} x_cᵀ dz_c
               dr^V = Σ_{b, i} G*(P)ᵀ dO                     (and over heads when the table is shared)

Compared with :func:`torch.utils.checkpoint.checkpoint` of the whole attention, recomputing re-runs one matmul,
the gathers and an exponential, not the whole forward (``benchmarks/bench_attention_kernels.py --train``
measures both). With ``recompute_weights`` and no value table, the
forward on the CPU in fp32 is PyTorch's fused attention kernel with the iRPE terms as its float mask, which
returns ℓ itself (``_CPU_FLASH``). There is no attention dropout here: with dropout
:class:`~irpe_bench.models.attention.RPEAttention` trains through autograd (and checkpoints to recompute).

Precision: the matmuls run in q's dtype (bf16 under autocast, as eager's), the L×L statistics in at least
fp32 (as autocast's softmax), so the result equals eager attention up to float rounding.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch

from ..rpe import BucketTerm, LogitsTerm, bucket_index, contextual_products, gather_buckets, scatter_buckets
from ..rpe.encoding import as_matrix


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _scores(q: torch.Tensor, k: torch.Tensor, scale: float, contextual: Sequence[torch.Tensor],
            terms: Sequence[Tuple[float, torch.Tensor]], dense: Optional[torch.Tensor],
            with_qk: bool = True) -> torch.Tensor:
    """S = s · q kᵀ + Σ G(z_c) + dense in the statistics dtype, built in place (one L×L tensor); without
    ``with_qk``, only the iRPE terms (the float mask of the fused forward).

    NOTE: where a gathered term already is a fresh L×L tensor of the statistics dtype (fp32, fp64), ``q kᵀ``
    is accumulated into it by the matmul itself (``baddbmm_``, the scale as its alpha): no scaled copy of q,
    no (B, H, L, L) matmul output, no pass adding it."""
    stats = _stats_dtype(q.dtype)
    parts = [gather_buckets(contextual_products(x, table, ts), index)
             for (x, table), (ts, index, _) in zip(_pairs(contextual), terms)]
    fused_qk = with_qk and bool(parts) and parts[0].dtype == stats
    if with_qk and not fused_qk:
        parts.insert(0, (q * scale) @ k.transpose(-2, -1))
    s = parts[0].to(stats)
    for part in parts[1:]:
        s.add_(part)
    if dense is not None:
        s.add_(dense)  # s is (B, H, L, L): a matmul or a gathered term; dense broadcasts into it
    if fused_qk:
        B, H, L, d = q.shape
        s.view(B * H, L, L).baddbmm_(q.reshape(B * H, L, d), k.reshape(B * H, L, d).transpose(1, 2), alpha=scale)
    return s


#: PyTorch's fused CPU attention returning the log-sum-exp (private ATen op; None where this torch lacks it).
_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _fused_forward(q: torch.Tensor) -> bool:
    return _CPU_FLASH is not None and q.device.type == "cpu" and q.dtype == torch.float32


def _pairs(flat: Sequence[torch.Tensor]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    return list(zip(flat[0::2], flat[1::2]))


def table_grad(x: torch.Tensor, dz: torch.Tensor, table: torch.Tensor, term_scale: float = 1.0) -> torch.Tensor:
    """``term_scale · Σ_{b, i} x_iᵀ dz_i`` per head: x (B, H, L, m), dz (B, H, L, n) → the table's (H or 1, m, n),
    in its dtype (summed over heads too when the table is shared).

    NOTE: a shared table's gradient is one (m, B·H·L) @ (B·H·L, n) matrix product of the contiguous operands;
    the per-head einsum would permute both into (H, m, B·L) copies first."""
    m, n = x.shape[-1], dz.shape[-1]
    if table.shape[0] == 1:
        grad = x.reshape(-1, m).transpose(0, 1) @ dz.reshape(-1, n)
        return grad.mul_(term_scale).unsqueeze(0).to(table.dtype)
    return (torch.einsum("bhim,bhin->hmn", x, dz) * term_scale).to(table.dtype)


class _AttentionCore(torch.autograd.Function):
    """The module docstring's forward and backward.

    Inputs: q, k, v, ``dense`` (or None), ``table_v`` (or None), ``meta`` = (scale, [(term scale, gather
    index, source)] per contextual term, value index, keep), then per contextual term its x and table
    (H|1, d, K); ``source`` is 0 or 1 where x is q or k itself (its gradient then accumulates into q's or k's).
    NOTE: not even the per-bucket products z are kept (a quarter of an L×L tensor each at K = 50, L = 197):
    the backward recomputes them from x and the table, one small matmul each.
    NOTE: q, k and v arrive as strided views of the qkv projection's output, and the incoming gradient as a
    view of the projection's layout; each batched matmul would copy such an operand again (seven copies of a
    (B, H, L, d) tensor per layer). Each is made contiguous once; the views' storage is then free, so nothing
    more is kept.
    """

    @staticmethod
    def forward(ctx, q, k, v, dense, table_v, meta, *contextual):
        scale, terms, index_v, keep = meta
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        contextual = _with_sources(contextual, terms, q, k)
        with torch.autocast(q.device.type, enabled=False):
            if not keep and table_v is None and contextual and _fused_forward(q):  # NOTE: module docstring
                mask = _scores(q, k, scale, contextual, terms, dense, with_qk=False)
                out, lse = _CPU_FLASH(q, k, v, 0.0, False, attn_mask=mask, scale=scale)
                kept = lse.unsqueeze(-1)
            else:
                s = _scores(q, k, scale, contextual, terms, dense)
                if keep:
                    p = kept = torch.softmax(s, dim=-1)
                else:
                    kept = torch.logsumexp(s, dim=-1, keepdim=True)
                    p = s.sub_(kept).exp_()
                out = p.to(v.dtype) @ v
                if table_v is not None:
                    per_bucket = scatter_buckets(p, index_v, table_v.shape[-2])
                    out = out + (per_bucket.to(v.dtype) @ as_matrix(table_v).to(v.dtype))
            # NOTE: stored as (B, L, H, d): the caller's transpose + reshape for the projection is then a view,
            # so the projection's saved input and this saved output are one tensor, not two.
            out = out.transpose(1, 2).contiguous().transpose(1, 2)
        # NOTE: an x that is q or k is saved as None and restored from them (_with_sources)
        own = [None if src is not None else t for t, src in zip(contextual, _sources_flat(terms))]
        ctx.save_for_backward(q, k, v, dense, table_v, kept, out, *own)  # kept: P, or ℓ to recompute it
        ctx.meta = meta
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, dense, table_v, kept, out, *own = ctx.saved_tensors
        scale, terms, index_v, keep = ctx.meta
        contextual = _with_sources(own, terms, q, k)
        with torch.autocast(q.device.type, enabled=False):
            p = kept if keep else _scores(q, k, scale, contextual, terms, dense).sub_(kept).exp_()
            go = grad_out.to(v.dtype).contiguous()  # NOTE: class docstring: one copy, not one per matmul
            grad_v = p.to(v.dtype).transpose(-2, -1) @ go
            dp = (go @ v.transpose(-2, -1)).to(p.dtype)
            grad_table_v = None
            if table_v is not None:
                t = as_matrix(table_v).to(v.dtype)  # (H,) K, d
                dp.add_(gather_buckets((go @ t.transpose(-2, -1)).to(p.dtype), index_v))
                per_bucket = scatter_buckets(p, index_v, table_v.shape[-2]).to(v.dtype)  # B, H, L, K
                grad_table_v = table_grad(per_bucket, go, table_v)
            delta = (go.to(p.dtype) * out.to(p.dtype)).sum(-1, keepdim=True)
            ds = dp.sub_(delta).mul_(p)  # NOTE: in place into dp: p may be the saved weights, never written
            grad_dense = None  # NOTE: an attention mask needs none; a bias-mode term does (one pass over dS)
            if dense is not None and ctx.needs_input_grad[3]:
                grad_dense = ds.sum_to_size(dense.shape).to(dense.dtype)
            dz = [scatter_buckets(ds, index, table.shape[-1]).to(x.dtype)  # B, H, L, K
                  for (x, table), (_, index, _) in zip(_pairs(contextual), terms)]
            ds = ds.to(q.dtype)
            grads_qk = [(ds @ k).mul_(scale), (ds.transpose(-2, -1) @ q).mul_(scale)]
            grad_contextual = []
            for (x, table), (term_scale, _, src), dz_c in zip(_pairs(contextual), terms, dz):
                t = (as_matrix(table) * term_scale).to(x.dtype)
                grad_x = dz_c @ t.transpose(-2, -1)
                if src is not None:  # NOTE: x is q or k: accumulated there, no separate gradient to sum
                    grads_qk[src].add_(grad_x)
                    grad_x = None
                grad_contextual += [grad_x, table_grad(x, dz_c, table, term_scale)]
        return (*grads_qk, grad_v, grad_dense, grad_table_v, None, *grad_contextual)


def _sources_flat(terms) -> List[Optional[int]]:
    """Per flat contextual input (x, table, x, table, …): the source of each x (0 = q, 1 = k, None), None for
    tables."""
    return [s for (_, _, src) in terms for s in (src, None)]


def _with_sources(flat: Sequence[Optional[torch.Tensor]], terms, q: torch.Tensor,
                  k: torch.Tensor) -> List[torch.Tensor]:
    """The flat contextual inputs with each x whose source is q or k replaced by (this) q or k: the contiguous
    copies in the forward pass, the saved ones in the backward pass."""
    return [t if src is None else (q, k)[src] for t, src in zip(flat, _sources_flat(terms))]


def attention_core(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, terms: Sequence[LogitsTerm], scale: float,
                   table_v: Optional[torch.Tensor] = None, ids: Optional[torch.Tensor] = None,
                   recompute_weights: bool = False, index_v: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``softmax(s·q kᵀ + Σ terms) v`` (+ the value term of ``table_v`` (H|1, K, d) over ``ids``), (B, H, L, d),
    with the module docstring's backward; ``recompute_weights`` keeps a log-sum-exp per row instead of the
    weights (no L×L tensor for the backward pass).

    Args:
        terms: logits terms from :func:`irpe_bench.rpe.attention_logits_terms` with ``expand=False``:
            :class:`BucketTerm` are recomputed in the backward pass, dense terms (bias mode, a mask) are summed
            and kept.
        ids: (C, L, L) bucket ids, for ``table_v``; or ``index_v`` = ``bucket_index(ids, K)`` (C, L·L) if
            already built.
    """
    contextual = [t for t in terms if isinstance(t, BucketTerm)]
    dense_terms = [t.to(_stats_dtype(q.dtype)) for t in terms if not isinstance(t, BucketTerm)]
    dense = sum(dense_terms[1:], dense_terms[0]) if dense_terms else None
    if table_v is not None and index_v is None:
        if ids is None:
            raise ValueError("attention_core: table_v needs the bucket ids (ids or index_v)")
        index_v = bucket_index(ids, table_v.shape[-2])
    sources = [0 if t.x is q else 1 if t.x is k else None for t in contextual]
    meta = (scale, [(t.scale, t.index, src) for t, src in zip(contextual, sources)], index_v, not recompute_weights)
    flat = [a for t in contextual for a in (t.x, t.table)]
    return _AttentionCore.apply(q, k, v, dense, table_v, meta, *flat)
