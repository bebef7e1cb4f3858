"""Fused iRPE attention in Triton: the bias and contextual terms gathered inside the kernel, forward and backward,
with no L×L tensor in memory (paper Eq. 13–17 in the efficient form of Eq. 26–28).

Why it exists: :mod:`.triton_attention` (and SDPA's memory-efficient kernel) take the iRPE logits term as a
materialised (B|1, H|1, L, L) bias, written by a gather and read back, plus an L×L bias gradient scattered back
to the tables by autograd. Here the kernel builds the term tile by tile from O(L·K) data and reduces its gradient
to O(L·K) on chip, so attention with iRPE moves the same L×L traffic as flash attention without it: none.

Notation of :mod:`irpe_bench.rpe.encoding` (``s`` the attention scale, ``I`` the bucket ids, K buckets padded to
``KP``, a power of two; cross sums its two id components everywhere)::

    Zk = s · q r^K  (contextual, BLOCK_M × KP, in the query block's prologue)  or  r^K broadcast per row (bias)
    Zq = s · k r^Q  (per key tile)                                             or  r^Q broadcast (bias)
    S_ij = s · q_i·k_j + Zk[i, I(i, j)] + Zq[j, I(j, i)]
    O_i  = Σ_j P_ij v_j + Σ_t Pb[i, t] r^V[t],   Pb[i, t] = Σ_{j: I(i, j) = t} P_ij   (online, rescaled like O)

* forward, one program per (query block, batch·head), online softmax over key blocks as FlashAttention-2; the
  per-bucket weight sums ``Pb`` are kept normalised (B·H, L, KP) for the value table's gradient;
* backward (``dP_ij = dO_i·v_j + W[i, I(i, j)]`` with ``W = dO r^Vᵀ``, ``dS = P ⊙ (dP − δ)``): one program per
  query block accumulates ``dq`` and ``dZk[i, t] = Σ_{j: I(i, j) = t} dS_ij`` on chip, then adds ``dZk r^Kᵀ`` to
  dq in its epilogue; one program per key block accumulates ``dk``, ``dv`` and ``dZq`` (by ``I(j, i)``) and adds
  ``dZq r^Qᵀ`` to dk. No global atomics: each program owns its rows of dZ.
* table gradients, in PyTorch from the (B, H, L, KP) dZ and Pb (O(L·K·d) matmuls, :func:`table_grad`):
  ``dr^K = s · Σ_{b,i} q_iᵀ dZk_i``, ``dr^Q`` likewise with k, bias ``Σ_{b,i} dZ``, ``dr^V = Σ_{b,i} Pbᵀ dO``
  (summed over heads for a shared table).

Decisions (``NOTE``):

* bucket ids come from the token coordinates and a per-offset table (:func:`irpe_bench.rpe.offset_ids`,
  (C, (2h−1)(2w−1)+1) int32, ~4·L entries, shared by every program) rather than a (C, L, L) table read per tile:
  the same ids, read from a table small enough to stay in L1; the query-side ids ``I(j, i)`` are the same
  table with its patch slots reversed;
* the gather ``Z[i, I(i, j)]`` is ``tl.gather`` on the on-chip Z; its adjoint (the per-bucket sums) compares
  each tile's ids with the buckets, :data:`BUCKET_CHUNK` at a time, in registers: exact and free of atomics, but
  O(BLOCK_M·BLOCK_N·KP) work on the CUDA cores per tile, and register-heavy, hence the tiles of :data:`CONFIGS`;
* bias mode uses the same code with Z a broadcast table row, so both modes share one gather and one reduction.

Exact against the eager form in float64 (``tests/test_triton_irpe.py``, on the CPU under ``TRITON_INTERPRET=1``
and compiled on CUDA). Its speed has not been measured yet (docs/performance.md), so models use it only when
asked (``RPEAttention.kernel = "triton_fused"``).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from ..rpe import offset_slots
from .attention_core import table_grad
from .triton_attention import DTYPES, HEAD_DIMS, launch, triton, tuned_kernel

#: q/k table modes as the kernels' constexprs (0: no table)
MODES = {"contextual": 1, "bias": 2}
#: (BLOCK_M, BLOCK_N, num_warps, num_stages) tried by the autotuner: smaller tiles and more warps than the bias
#: kernel's, because the per-bucket reduction and the gathers hold (rows, KP) and (rows, cols, chunk) tensors in
#: registers; these compile for sm_90 with few or no spills at KP = 64 (``benchmarks/triton_resources.py``). The
#: interpreter takes the first: 32 rows, so that CI's short sequences still cross a block edge.
CONFIGS = [(32, 32, 8, 2), (32, 32, 4, 2), (64, 32, 8, 2), (16, 32, 4, 2)]
#: Buckets per step of the per-bucket reduction (``_bucket_sums``); KP is a multiple (KP ≥ 16).
BUCKET_CHUNK = 8
#: Everything that changes the compiled program besides the tiles: the autotuner keeps one choice per value.
TUNE_KEY = ("L", "D", "KP", "C", "K_MODE", "Q_MODE", "HAS_V")


def problem(q: torch.Tensor, dense_terms: int = 0) -> Optional[str]:
    """Why :func:`irpe_attention` cannot run on q (device, dtype, head_dim, a dense term such as an attention
    mask), None where it can."""
    why = []
    if triton is None:
        why.append("triton is not installed")
    if not q.is_cuda:
        why.append(f"device {q.device}")
    if q.dtype not in DTYPES:
        why.append(f"dtype {q.dtype}")
    if q.shape[-1] not in HEAD_DIMS:
        why.append(f"head_dim {q.shape[-1]}")
    if dense_terms:
        why.append("an attention mask (the fused kernel gathers only the iRPE tables)")
    return ", ".join(why) or None


if triton is not None:
    import triton.language as tl

    from .triton_attention import (
        LOG2E,
        key_tile,
        online_softmax,
        program_block,
        query_tile,
        row_stats,
        tile,
    )

    BUCKET_CHUNK = tl.constexpr(BUCKET_CHUNK)

    @triton.jit
    def _slots(m, n, ok, P, GH, GW, NS):
        """The :func:`~irpe_bench.rpe.offset_ids` slot of every (query ``m``, key ``n``) pair: the patch offset's,
        the last one where either token is a prefix token or the pair is masked."""
        pm, pn = m - P, n - P
        dr = pm[:, None] // GW - pn[None, :] // GW
        dc = pm[:, None] % GW - pn[None, :] % GW
        slot = (dr + GH - 1) * (2 * GW - 1) + dc + GW - 1
        return tl.where(ok & (pm[:, None] >= 0) & (pn[None, :] >= 0), slot, NS - 1)

    @triton.jit
    def _gathered(z, Off, slot, NS, C: tl.constexpr, BY_ROW: tl.constexpr):
        """``Σ_c z[i, I_c]`` (BY_ROW: z holds the tile's query rows) or ``Σ_c z[j, I_c]`` (z holds its key rows),
        with ``I_c`` the ids of component c read from ``Off`` at ``slot``."""
        out = tl.zeros(slot.shape, tl.float32)
        for c in tl.static_range(C):
            ids = tl.load(Off + c * NS + slot)
            out += tl.gather(z, ids, 1) if BY_ROW else tl.gather(tl.trans(z), ids, 0)
        return out

    @triton.jit
    def _bucket_sums(x, Off, slot, NS, C: tl.constexpr, KP: tl.constexpr, BY_ROW: tl.constexpr):
        """The adjoint of :func:`_gathered`: ``out[i, t] = Σ_c Σ_{j: I_c = t} x_ij`` (BY_ROW, (BLOCK_M, KP)) or
        ``out[j, t] = Σ_c Σ_{i: I_c = t} x_ij`` ((BLOCK_N, KP)).

        NOTE: a one-hot reduction in registers, BUCKET_CHUNK buckets at a time: the (BLOCK_M, BLOCK_N, KP)
        comparison in one piece spills registers (ptxas, sm_90); each chunk's sums land in their slice of a
        (rows, KP / chunk, chunk) tensor by a select, which is then read as (rows, KP)."""
        ids = tl.load(Off + slot)
        ids2 = tl.load(Off + (C - 1) * NS + slot)  # NOTE: C ≤ 2 (cross); a second load of component 0 otherwise
        rows: tl.constexpr = x.shape[0] if BY_ROW else x.shape[1]
        chunks: tl.constexpr = KP // BUCKET_CHUNK
        out = tl.zeros([rows, chunks, BUCKET_CHUNK], tl.float32)
        for c in tl.static_range(chunks):
            buckets = c * BUCKET_CHUNK + tl.arange(0, BUCKET_CHUNK)[None, None, :]
            hit = (ids[:, :, None] == buckets) | ((ids2[:, :, None] == buckets) & (C > 1))
            part = tl.sum(tl.where(hit, x[:, :, None], 0.0), 1 if BY_ROW else 0)
            out += tl.where((tl.arange(0, chunks) == c)[None, :, None], part[:, None, :], 0.0)
        return tl.reshape(out, [rows, KP])

    @triton.jit
    def _side(x, T, h, sth, MODE: tl.constexpr, ROWS: tl.constexpr, KP: tl.constexpr, D: tl.constexpr):
        """Z of a q/k table for the rows of x (ROWS, D): contextual ``x Tᵀ`` with T the (H|1, KP, D) table (scaled
        and transposed by the wrapper), bias the (H|1, KP) table's row h broadcast to every row; fp32."""
        offs_t = tl.arange(0, KP)
        if MODE == 1:
            r = tile(T, 0, h, 0, sth, D, offs_t, tl.arange(0, D), offs_t < KP)
            z = tl.dot(x, tl.trans(r))
        else:
            z = tl.broadcast_to(tl.load(T + h * sth + offs_t).to(tl.float32)[None, :], (ROWS, KP))
        return z

    @triton.jit
    def _scores(q, k, zk, zq, OffK, OffQ, slot, NS, scale, C: tl.constexpr, K_MODE: tl.constexpr,
                Q_MODE: tl.constexpr):
        """``S = s · q kᵀ + Zk[i, I(i, j)] + Zq[j, I(j, i)]`` (fp32) of one tile."""
        s = tl.dot(q, tl.trans(k)) * scale
        if K_MODE != 0:
            s += _gathered(zk, OffK, slot, NS, C, True)
        if Q_MODE != 0:
            s += _gathered(zq, OffQ, slot, NS, C, False)
        return s

    @triton.jit
    def _probs_and_ds(q, k, v, do, lse, delta, zk, zq, wv, OffK, OffQ, slot, ok, NS, scale, C: tl.constexpr,
                      K_MODE: tl.constexpr, Q_MODE: tl.constexpr, HAS_V: tl.constexpr):
        """The backward's recomputed ``P = exp(S − lse)`` and ``dS = P ⊙ (dO vᵀ + W[i, I(i, j)] − δ)``, 0 outside
        ``ok``; ``W = dO r^Vᵀ`` for the tile's query rows."""
        s = _scores(q, k, zk, zq, OffK, OffQ, slot, NS, scale, C, K_MODE, Q_MODE)
        p = tl.where(ok, tl.exp2((s - lse[:, None]) * LOG2E), 0.0)
        dp = tl.dot(do, tl.trans(v))
        if HAS_V:
            dp += _gathered(wv, OffK, slot, NS, C, True)
        return p, p * (dp - delta[:, None])

    @tuned_kernel(configs=CONFIGS, key=TUNE_KEY)
    def _fwd(Q, K, V, TK, TQ, TV, OffK, OffQ, Out, LSE, PB, sqb, sqh, sql, skb, skh, skl, svb, svh, svl,
             stk, stq, stv, H, L, P, GH, GW, NS, scale, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
             D: tl.constexpr, KP: tl.constexpr, C: tl.constexpr, K_MODE: tl.constexpr, Q_MODE: tl.constexpr,
             HAS_V: tl.constexpr):
        bh, b, h, offs_m, offs_d, row_ok, q = program_block(Q, sqb, sqh, sql, H, L, BLOCK_M, D)
        offs_n = tl.arange(0, BLOCK_N)
        zk = _side(q, TK, h, stk, K_MODE, BLOCK_M, KP, D) if K_MODE != 0 else 0.0
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        pb = tl.zeros([BLOCK_M, KP], tl.float32)
        for start in range(0, L, BLOCK_N):
            n = start + offs_n
            col_ok = n < L
            k = tile(K, b, h, skb, skh, skl, n, offs_d, col_ok)
            slot = _slots(offs_m, n, row_ok[:, None] & col_ok[None, :], P, GH, GW, NS)
            zq = _side(k, TQ, h, stq, Q_MODE, BLOCK_N, KP, D) if Q_MODE != 0 else 0.0
            s = _scores(q, k, zk, zq, OffK, OffQ, slot, NS, scale, C, K_MODE, Q_MODE)
            p, alpha, m_i, l_i = online_softmax(tl.where(col_ok[None, :], s, float("-inf")), m_i, l_i)
            v = tile(V, b, h, svb, svh, svl, n, offs_d, col_ok)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            if HAS_V:
                pb = pb * alpha[:, None] + _bucket_sums(p, OffK, slot, NS, C, KP, True)
        acc = acc / l_i[:, None]
        if HAS_V:
            offs_t = tl.arange(0, KP)
            pb = pb / l_i[:, None]
            tl.store(PB + (bh * L + offs_m[:, None]) * KP + offs_t[None, :], pb, mask=row_ok[:, None])
            rv = tile(TV, 0, h, 0, stv, D, offs_t, offs_d, offs_t < KP)
            acc += tl.dot(pb.to(rv.dtype), rv)
        tl.store(Out + bh * L * D + offs_m[:, None] * D + offs_d[None, :], acc.to(Out.dtype.element_ty),
                 mask=row_ok[:, None])
        tl.store(LSE + bh * L + offs_m, m_i + tl.log(l_i), mask=row_ok)

    @tuned_kernel(configs=CONFIGS, key=TUNE_KEY)
    def _bwd_dkdv(Q, K, V, TK, TQ, TV, OffK, OffQ, DO, LSE, Delta, DK, DV, DZQ, sqb, sqh, sql, skb, skh, skl,
                  svb, svh, svl, stk, stq, stv, H, L, P, GH, GW, NS, scale, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, D: tl.constexpr, KP: tl.constexpr, C: tl.constexpr, K_MODE: tl.constexpr,
                  Q_MODE: tl.constexpr, HAS_V: tl.constexpr):
        bh, b, h, offs_n, offs_d, col_ok, k = program_block(K, skb, skh, skl, H, L, BLOCK_N, D)
        offs_m = tl.arange(0, BLOCK_M)
        offs_t = tl.arange(0, KP)
        v = tile(V, b, h, svb, svh, svl, offs_n, offs_d, col_ok)
        zq = _side(k, TQ, h, stq, Q_MODE, BLOCK_N, KP, D) if Q_MODE != 0 else 0.0
        rv = tile(TV, 0, h, 0, stv, D, offs_t, offs_d, offs_t < KP) if HAS_V else 0.0
        dk = tl.zeros([BLOCK_N, D], tl.float32)
        dv = tl.zeros([BLOCK_N, D], tl.float32)
        dzq = tl.zeros([BLOCK_N, KP], tl.float32)
        for start in range(0, L, BLOCK_M):
            m = start + offs_m
            ok, q, do, lse, delta = query_tile(Q, DO, LSE, Delta, b, h, bh, sqb, sqh, sql, H, L, m, offs_d, col_ok, D)
            slot = _slots(m, offs_n, ok, P, GH, GW, NS)
            zk = _side(q, TK, h, stk, K_MODE, BLOCK_M, KP, D) if K_MODE != 0 else 0.0
            wv = tl.dot(do, tl.trans(rv)) if HAS_V else 0.0
            p, ds = _probs_and_ds(q, k, v, do, lse, delta, zk, zq, wv, OffK, OffQ, slot, ok, NS, scale, C, K_MODE,
                                  Q_MODE, HAS_V)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
            if Q_MODE != 0:
                dzq += _bucket_sums(ds, OffQ, slot, NS, C, KP, False)
        dk = dk * scale
        if Q_MODE == 1:
            dk += tl.dot(dzq.to(k.dtype), tile(TQ, 0, h, 0, stq, D, offs_t, offs_d, offs_t < KP))
        base = bh * L * D + offs_n[:, None] * D + offs_d[None, :]
        tl.store(DK + base, dk.to(DK.dtype.element_ty), mask=col_ok[:, None])
        tl.store(DV + base, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])
        if Q_MODE != 0:
            tl.store(DZQ + (bh * L + offs_n[:, None]) * KP + offs_t[None, :], dzq, mask=col_ok[:, None])

    @tuned_kernel(configs=CONFIGS, key=TUNE_KEY)
    def _bwd_dq(Q, K, V, TK, TQ, TV, OffK, OffQ, DO, LSE, Delta, DQ, DZK, sqb, sqh, sql, skb, skh, skl,
                svb, svh, svl, stk, stq, stv, H, L, P, GH, GW, NS, scale, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, D: tl.constexpr, KP: tl.constexpr, C: tl.constexpr, K_MODE: tl.constexpr,
                Q_MODE: tl.constexpr, HAS_V: tl.constexpr):
        bh, b, h, offs_m, offs_d, row_ok, q = program_block(Q, sqb, sqh, sql, H, L, BLOCK_M, D)
        offs_n = tl.arange(0, BLOCK_N)
        offs_t = tl.arange(0, KP)
        do, lse, delta = row_stats(DO, LSE, Delta, b, h, bh, H, L, offs_m, offs_d, row_ok, D)
        zk = _side(q, TK, h, stk, K_MODE, BLOCK_M, KP, D) if K_MODE != 0 else 0.0
        wv = tl.dot(do, tl.trans(tile(TV, 0, h, 0, stv, D, offs_t, offs_d, offs_t < KP))) if HAS_V else 0.0
        dq = tl.zeros([BLOCK_M, D], tl.float32)
        dzk = tl.zeros([BLOCK_M, KP], tl.float32)
        for start in range(0, L, BLOCK_N):
            n = start + offs_n
            ok, k, v = key_tile(K, V, b, h, skb, skh, skl, svb, svh, svl, L, n, offs_d, row_ok)
            slot = _slots(offs_m, n, ok, P, GH, GW, NS)
            zq = _side(k, TQ, h, stq, Q_MODE, BLOCK_N, KP, D) if Q_MODE != 0 else 0.0
            _, ds = _probs_and_ds(q, k, v, do, lse, delta, zk, zq, wv, OffK, OffQ, slot, ok, NS, scale, C, K_MODE,
                                  Q_MODE, HAS_V)
            dq += tl.dot(ds.to(k.dtype), k)
            if K_MODE != 0:
                dzk += _bucket_sums(ds, OffK, slot, NS, C, KP, True)
        dq = dq * scale
        if K_MODE == 1:
            dq += tl.dot(dzk.to(q.dtype), tile(TK, 0, h, 0, stk, D, offs_t, offs_d, offs_t < KP))
        tl.store(DQ + bh * L * D + offs_m[:, None] * D + offs_d[None, :], dq.to(DQ.dtype.element_ty),
                 mask=row_ok[:, None])
        if K_MODE != 0:
            tl.store(DZK + (bh * L + offs_m[:, None]) * KP + offs_t[None, :], dzk, mask=row_ok[:, None])


class _Spec(NamedTuple):
    """What the kernels need besides tensors: the attention scale, the q/k tables' mode, the patch grid and the
    number of prefix tokens (they take the prefix bucket, the offset table's last slot)."""

    scale: float
    mode: str
    grid: Tuple[int, int]
    num_prefix_tokens: int


def _kernel_table(table: Optional[torch.Tensor], kind: str, KP: int, dtype: torch.dtype,
                  scale: float) -> Tuple[Optional[torch.Tensor], int]:
    """A table as the kernels read it, zero-padded to KP buckets, and its head stride (0: shared by the heads).

    ``kind``: ``contextual`` (H|1, d, K) → ``(s · r)ᵀ`` (H|1, KP, d) in q's dtype (as
    :func:`~irpe_bench.rpe.contextual_products` casts it); ``bias`` (H|1, K) → fp32 (H|1, KP); ``value``
    (H|1, K, d) → (H|1, KP, d) in q's dtype.
    """
    if table is None:
        return None, 0
    if kind == "bias":
        t = F.pad(table.detach().float(), (0, KP - table.shape[-1]))
    else:
        t = (table.detach() * scale).transpose(-1, -2) if kind == "contextual" else table.detach()
        t = F.pad(t.to(dtype), (0, 0, 0, KP - t.shape[-2]))
    return t.contiguous(), 0 if t.shape[0] == 1 else t[0].numel()


def _table_grads(spec: _Spec, K: int, tables, q, k, do, dzk, dzq, pb, needs):
    """Gradients of (table_k, table_q, table_v) from the kernels' (B, H, L, KP) dZk, dZq and Pb (module
    docstring); None where a table is absent or needs none."""
    table_k, table_q, table_v = tables

    def qk_grad(table, x, dz):
        dz = dz[..., :K]
        if spec.mode == "bias":
            return dz.sum((0, 2)).sum_to_size(table.shape).to(table.dtype)
        return table_grad(x.to(dz.dtype), dz, table, spec.scale)

    return (qk_grad(table_k, q, dzk) if needs[0] else None, qk_grad(table_q, k, dzq) if needs[1] else None,
            table_grad(pb[..., :K], do.to(pb.dtype), table_v) if needs[2] else None)


def _num_buckets(table_k, table_q, table_v) -> int:
    """K of the tables (the tables of one layer share its bucket ids, so one K); fails on a mismatch."""
    sizes = {t.shape[-1] for t in (table_k, table_q) if t is not None} | (
        {table_v.shape[-2]} if table_v is not None else set())
    if len(sizes) != 1:
        raise ValueError(f"the tables disagree on the number of buckets: {sorted(sizes)}")
    return sizes.pop()


class _FusedIRPE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, table_k, table_q, table_v, offsets, spec: _Spec):
        B, H, L, D = q.shape
        K = _num_buckets(table_k, table_q, table_v)
        KP = max(16, triton.next_power_of_2(K))  # NOTE: tl.dot needs ≥ 16 along each dimension
        kinds = (spec.mode, spec.mode, "value")
        prepared = [_kernel_table(t, kind, KP, q.dtype, spec.scale if kind == "contextual" else 1.0)
                    for t, kind in zip((table_k, table_q, table_v), kinds)]
        reversed_ = torch.cat([offsets[:, :-1].flip(-1), offsets[:, -1:]], dim=1)  # I(j, i): offset ↦ −offset
        o = torch.empty((B, H, L, D), device=q.device, dtype=q.dtype)
        lse = torch.empty((B * H, L), device=q.device, dtype=torch.float32)
        pb = torch.empty((B, H, L, KP), device=q.device, dtype=torch.float32) if table_v is not None else lse
        # NOTE: an absent table's pointer is q's: its mode constexpr is 0, so the kernels never read it
        kernel_tables = [t if t is not None else q for t, _ in prepared]
        ctx.scalars = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *(st for _, st in prepared), H, L,
                       spec.num_prefix_tokens, *spec.grid, offsets.shape[1], spec.scale)
        ctx.constexprs = dict(D=D, KP=KP, C=offsets.shape[0], HAS_V=table_v is not None,
                              K_MODE=MODES[spec.mode] if table_k is not None else 0,
                              Q_MODE=MODES[spec.mode] if table_q is not None else 0)
        launch(_fwd, "BLOCK_M", L, B * H, q, k, v, *kernel_tables, offsets, reversed_, o, lse, pb, *ctx.scalars,
                configs=CONFIGS, **ctx.constexprs)
        ctx.save_for_backward(q, k, v, table_k, table_q, table_v, o, lse, pb, *kernel_tables, offsets, reversed_)
        ctx.spec, ctx.num_buckets = spec, K
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, table_k, table_q, table_v, o, lse, pb, *kernel_inputs = ctx.saved_tensors
        B, H, L, D = q.shape
        do = do.contiguous()
        delta = (do.float() * o.float()).sum(-1).reshape(B * H, L)
        dq, dk, dv = (torch.empty((B, H, L, D), device=q.device, dtype=q.dtype) for _ in range(3))
        dzk, dzq = (torch.empty((B, H, L, ctx.constexprs["KP"]), device=q.device, dtype=torch.float32)
                    if t is not None else lse for t in (table_k, table_q))
        inputs = (q, k, v, *kernel_inputs, do, lse, delta)
        launch(_bwd_dkdv, "BLOCK_N", L, B * H, *inputs, dk, dv, dzq, *ctx.scalars, configs=CONFIGS,
                **ctx.constexprs)
        launch(_bwd_dq, "BLOCK_M", L, B * H, *inputs, dq, dzk, *ctx.scalars, configs=CONFIGS, **ctx.constexprs)
        grads = _table_grads(ctx.spec, ctx.num_buckets, (table_k, table_q, table_v), q, k, do, dzk, dzq, pb,
                             ctx.needs_input_grad[3:6])
        return dq, dk, dv, *grads, None, None


def irpe_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, offsets: torch.Tensor,
                   grid_size: Tuple[int, int], num_prefix_tokens: int, *, scale: Optional[float] = None,
                   mode: str = "contextual", table_k: Optional[torch.Tensor] = None,
                   table_q: Optional[torch.Tensor] = None, table_v: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Attention with iRPE (paper Eq. 13–17, exactly :class:`~irpe_bench.models.RPEAttention`'s eager form
    without dropout), fused: (B, H, L, d) q, k, v → (B, H, L, d), with gradients to q, k, v and the tables.

    Args:
        offsets: ``offset_ids(ids, *grid_size, num_prefix_tokens)`` of the layer's bucket ids (C, S) int32.
        grid_size: (height, width) of the patch grid; L = num_prefix_tokens + height·width.
        mode: ``contextual`` or ``bias``, of ``table_k`` and ``table_q``.
        table_k, table_q: the k-side and q-side tables, (H|1, d, K) contextual or (H|1, K) bias, or None.
        table_v: the contextual value table (H|1, K, d), or None.
    """
    if triton is None:
        raise RuntimeError("irpe_attention needs triton (it ships with CUDA builds of torch)")
    h, w = grid_size
    if q.dim() != 4 or k.shape != q.shape or v.shape != q.shape or q.shape[2] != num_prefix_tokens + h * w:
        raise ValueError(f"need (B, H, L, d) q, k, v with L = {num_prefix_tokens} + {h}·{w}; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    D = q.shape[-1]
    if D not in HEAD_DIMS:
        raise ValueError(f"head_dim {D} is not supported by the Triton kernel; allowed: {HEAD_DIMS}")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}; allowed: {', '.join(MODES)}")
    if table_k is None and table_q is None and table_v is None:
        raise ValueError("irpe_attention needs at least one table (without any, use the flash kernel)")
    if offsets.dim() != 2 or offsets.shape[1] != offset_slots(h, w) or offsets.dtype != torch.int32:
        raise ValueError(f"offsets must be offset_ids(ids, {h}, {w}, {num_prefix_tokens}): (C, "
                         f"{offset_slots(h, w)}) int32; got {tuple(offsets.shape)} {offsets.dtype}")
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    spec = _Spec(scale, mode, (h, w), num_prefix_tokens)
    return _FusedIRPE.apply(q, k, v, table_k, table_q, table_v, offsets.contiguous(), spec)
