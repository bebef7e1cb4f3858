"""Fused attention with a trainable additive bias, in Triton: an opt-in GPU kernel for the iRPE logits terms.

Why it exists: the iRPE-K/Q terms (and bias mode) enter attention as an additive (B|1, H|1, L, L) bias that
needs a gradient. PyTorch's flash kernel takes no bias at all, so ``scaled_dot_product_attention`` with a float
mask falls back to the memory-efficient kernel, well behind the flash baseline
(``benchmarks/bench_attention_kernels.py``; FlexAttention's compiled ``score_mod`` gather was slower still at
197 tokens). This kernel is FlashAttention-2's algorithm (Dao, 2023) with one extra tile load. It is exact but
not faster than the memory-efficient kernel on the GPUs measured (docs/performance.md), so models use it only
when asked (``RPEAttention.kernel = "triton"``). :mod:`.triton_irpe` builds on its tiles and online softmax
(the helpers below are shared) to gather the iRPE term inside instead of reading a materialised L×L bias:

* forward, one program per (query block, batch·head): for each key block,
  ``s = scale · q kᵀ + bias``, online softmax (running max ``m`` and sum ``l``), ``acc += p v``; stores
  ``o = acc / l`` and the log-sum-exp ``m + log l`` for the backward;
* backward, with ``delta_i = Σ_d dO_id · O_id``: ``p = exp(s − lse)``, ``dp = dO vᵀ``,
  ``ds = p ⊙ (dp − delta)``; one program per key block accumulates ``dv = pᵀ dO`` and ``dk = scale · dsᵀ q``
  and writes ``ds`` — the bias gradient, which autograd then routes to the bucket tables by the lookup's own
  scatter; one program per query block accumulates ``dq = scale · ds k``.

Rows and columns past the sequence length are masked (L = 197 is not a multiple of any block). fp32
accumulation throughout; ``q, k, v`` and the bias in bf16 or fp16 (what autocast gives). The same code runs
on the CPU under ``TRITON_INTERPRET=1``, which is how CI checks it against the plain formula.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import torch

try:  # NOTE: triton ships with CUDA builds of torch; without it the model keeps SDPA's path
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only on builds without triton
    triton = None

DTYPES = (torch.bfloat16, torch.float16)
HEAD_DIMS = (16, 32, 64, 128)


def available(q: torch.Tensor, bias: torch.Tensor) -> bool:
    """Whether :func:`attention_with_bias` can run on these inputs (else the caller keeps SDPA)."""
    return (triton is not None and q.is_cuda and q.dtype in DTYPES and bias.dtype == q.dtype and q.dim() == 4
            and bias.dim() == 4 and tuple(bias.shape[-2:]) == (q.shape[2], q.shape[2]) and q.shape[-1] in HEAD_DIMS)


#: Tile shapes tried per (L, D) by Triton's autotuner the first time a shape runs (compiled GPU runs only; the
#: interpreter, which CI uses, takes the first): (BLOCK_M, BLOCK_N, num_warps, num_stages).
CONFIGS = [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 3), (128, 32, 4, 3), (64, 32, 4, 3), (32, 64, 4, 3)]
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")


def tuned_kernel(fn=None, *, configs=CONFIGS, key=("L", "D")):
    """``triton.jit``, plus autotuning over ``configs`` (:data:`CONFIGS`) keyed by the arguments named in ``key``
    (sequence length and head width)."""
    if fn is None:
        return lambda f: tuned_kernel(f, configs=configs, key=key)
    jitted = triton.jit(fn)
    if INTERPRETED:
        return jitted
    tried = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=st) for m, n, w, st in configs]
    return triton.autotune(tried, key=list(key))(jitted)


def launch(kernel, rows_of: str, L: int, BH: int, *args, configs=CONFIGS, **constexprs):
    """Launch over (blocks of ``rows_of`` = BLOCK_M or BLOCK_N, batch·head), tuned or with the first of
    ``configs`` (the list ``kernel`` was tuned over)."""
    if INTERPRETED:
        m, n, w, _ = configs[0]
        blocks = dict(BLOCK_M=m, BLOCK_N=n)
        return kernel[(triton.cdiv(L, blocks[rows_of]), BH)](*args, **blocks, **constexprs, num_warps=w)
    return kernel[lambda meta: (triton.cdiv(L, meta[rows_of]), BH)](*args, **constexprs)


if triton is not None:
    LOG2E = tl.constexpr(1.4426950408889634)  # exp(x) = 2^(x·log2 e): exp2 is the fast unit

    @triton.jit
    def tile(Ptr, b, h, sb, sh, sl, rows, offs_d, ok):
        """The (rows, D) tile of a (B, H, L, D) tensor; rows past L read as 0."""
        return tl.load(Ptr + b * sb + h * sh + rows[:, None] * sl + offs_d[None, :], mask=ok[:, None], other=0.0)

    @triton.jit
    def program_block(X, sxb, sxh, sxl, H, L, BLOCK: tl.constexpr, D: tl.constexpr):
        """This program's (batch·head, batch, head) and its BLOCK rows of X (queries or keys, by the grid's first
        axis): row offsets, head-dim offsets, the row mask and the (BLOCK, D) tile."""
        pid, bh = tl.program_id(0), tl.program_id(1)
        b, h = bh // H, bh % H
        rows = pid * BLOCK + tl.arange(0, BLOCK)
        offs_d = tl.arange(0, D)
        ok = rows < L
        return bh, b, h, rows, offs_d, ok, tile(X, b, h, sxb, sxh, sxl, rows, offs_d, ok)

    @triton.jit
    def row_stats(DO, LSE, Delta, b, h, bh, H, L, m, offs_d, ok, D: tl.constexpr):
        """dO (rows, D), lse and δ of the query rows ``m`` (dO contiguous (B, H, L, D), the stats (B·H, L))."""
        do = tile(DO, b, h, H * L * D, L * D, D, m, offs_d, ok)
        return do, tl.load(LSE + bh * L + m, mask=ok, other=0.0), tl.load(Delta + bh * L + m, mask=ok, other=0.0)

    @triton.jit
    def query_tile(Q, DO, LSE, Delta, b, h, bh, sqb, sqh, sql, H, L, m, offs_d, col_ok, D: tl.constexpr):
        """A key-block program's view of the query rows ``m``: the (rows, cols) mask, q, dO, lse and δ."""
        row_ok = m < L
        q = tile(Q, b, h, sqb, sqh, sql, m, offs_d, row_ok)
        do, lse, delta = row_stats(DO, LSE, Delta, b, h, bh, H, L, m, offs_d, row_ok, D)
        return row_ok[:, None] & col_ok[None, :], q, do, lse, delta

    @triton.jit
    def key_tile(K, V, b, h, skb, skh, skl, svb, svh, svl, L, n, offs_d, row_ok):
        """A query-block program's view of the key rows ``n``: the (rows, cols) mask, k and v."""
        col_ok = n < L
        k = tile(K, b, h, skb, skh, skl, n, offs_d, col_ok)
        return row_ok[:, None] & col_ok[None, :], k, tile(V, b, h, svb, svh, svl, n, offs_d, col_ok)

    @triton.jit
    def online_softmax(s, m_i, l_i):
        """One key tile of the online softmax: the tile's weights ``p`` relative to the new running max, the
        factor ``alpha`` that rescales what earlier tiles accumulated, the new running max and the new sum."""
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2((s - m_new[:, None]) * LOG2E)
        alpha = tl.exp2((m_i - m_new) * LOG2E)
        return p, alpha, m_new, l_i * alpha + tl.sum(p, 1)

    @triton.jit
    def _scores(q, k, Bias, b, h, sbb, sbh, sbm, sbn, m, n, ok, scale):
        """``scale · q kᵀ + bias`` (fp32) for query rows ``m`` and key rows ``n``."""
        bias = tl.load(Bias + b * sbb + h * sbh + m[:, None] * sbm + n[None, :] * sbn, mask=ok, other=0.0)
        return tl.dot(q, tl.trans(k)) * scale + bias.to(tl.float32)

    @triton.jit
    def _probs_and_ds(q, k, v, do, lse, delta, Bias, b, h, sbb, sbh, sbm, sbn, m, n, ok, scale):
        """The backward's recomputed ``p = exp(s − lse)`` and ``ds = p ⊙ (dO vᵀ − delta)``, 0 outside ``ok``."""
        s = _scores(q, k, Bias, b, h, sbb, sbh, sbm, sbn, m, n, ok, scale)
        p = tl.where(ok, tl.exp2((s - lse[:, None]) * LOG2E), 0.0)
        return p, p * (tl.dot(do, tl.trans(v)) - delta[:, None])

    @tuned_kernel
    def _fwd(Q, K, V, Bias, Out, LSE, sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sbb, sbh, sbm, sbn,
             sob, soh, sol, H, L, scale, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
        bh, b, h, offs_m, offs_d, row_ok, q = program_block(Q, sqb, sqh, sql, H, L, BLOCK_M, D)
        offs_n = tl.arange(0, BLOCK_N)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        for start in range(0, L, BLOCK_N):
            n = start + offs_n
            col_ok = n < L
            k = tile(K, b, h, skb, skh, skl, n, offs_d, col_ok)
            s = _scores(q, k, Bias, b, h, sbb, sbh, sbm, sbn, offs_m, n, row_ok[:, None] & col_ok[None, :], scale)
            p, alpha, m_i, l_i = online_softmax(tl.where(col_ok[None, :], s, float("-inf")), m_i, l_i)
            v = tile(V, b, h, svb, svh, svl, n, offs_d, col_ok)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        acc = acc / l_i[:, None]
        tl.store(Out + b * sob + h * soh + offs_m[:, None] * sol + offs_d[None, :], acc.to(Out.dtype.element_ty),
                 mask=row_ok[:, None])
        tl.store(LSE + bh * L + offs_m, m_i + tl.log(l_i), mask=row_ok)

    @tuned_kernel
    def _bwd_dkdv(Q, K, V, Bias, DO, LSE, Delta, DK, DV, DS, sqb, sqh, sql, skb, skh, skl, svb, svh, svl,
                  sbb, sbh, sbm, sbn, H, L, scale, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
                  WRITE_DS: tl.constexpr):
        # NOTE: dO, dq, dk, dv, ds are contiguous (B, H, L, D) / (B, H, L, L) here (the wrapper makes them so).
        bh, b, h, offs_n, offs_d, col_ok, k = program_block(K, skb, skh, skl, H, L, BLOCK_N, D)
        offs_m = tl.arange(0, BLOCK_M)
        v = tile(V, b, h, svb, svh, svl, offs_n, offs_d, col_ok)
        dk = tl.zeros([BLOCK_N, D], tl.float32)
        dv = tl.zeros([BLOCK_N, D], tl.float32)
        for start in range(0, L, BLOCK_M):
            m = start + offs_m
            ok, q, do, lse, delta = query_tile(Q, DO, LSE, Delta, b, h, bh, sqb, sqh, sql, H, L, m, offs_d, col_ok, D)
            p, ds = _probs_and_ds(q, k, v, do, lse, delta, Bias, b, h, sbb, sbh, sbm, sbn, m, offs_n, ok, scale)
            dv += tl.dot(tl.trans(p.to(do.dtype)), do)
            if WRITE_DS:
                tl.store(DS + bh * L * L + m[:, None] * L + offs_n[None, :], ds.to(DS.dtype.element_ty), mask=ok)
            dk += tl.dot(tl.trans(ds.to(q.dtype)), q)
        base = bh * L * D + offs_n[:, None] * D + offs_d[None, :]
        tl.store(DK + base, (dk * scale).to(DK.dtype.element_ty), mask=col_ok[:, None])
        tl.store(DV + base, dv.to(DV.dtype.element_ty), mask=col_ok[:, None])

    @tuned_kernel
    def _bwd_dq(Q, K, V, Bias, DO, LSE, Delta, DQ, sqb, sqh, sql, skb, skh, skl, svb, svh, svl,
                sbb, sbh, sbm, sbn, H, L, scale, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
        bh, b, h, offs_m, offs_d, row_ok, q = program_block(Q, sqb, sqh, sql, H, L, BLOCK_M, D)
        offs_n = tl.arange(0, BLOCK_N)
        do, lse, delta = row_stats(DO, LSE, Delta, b, h, bh, H, L, offs_m, offs_d, row_ok, D)
        dq = tl.zeros([BLOCK_M, D], tl.float32)
        for start in range(0, L, BLOCK_N):
            n = start + offs_n
            ok, k, v = key_tile(K, V, b, h, skb, skh, skl, svb, svh, svl, L, n, offs_d, row_ok)
            _, ds = _probs_and_ds(q, k, v, do, lse, delta, Bias, b, h, sbb, sbh, sbm, sbn, offs_m, n, ok, scale)
            dq += tl.dot(ds.to(k.dtype), k)
        tl.store(DQ + bh * L * D + offs_m[:, None] * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
                 mask=row_ok[:, None])


def _bias_strides(bias: torch.Tensor) -> Tuple[int, int, int, int]:
    """Strides of a (B|1, H|1, L, L) bias with 0 on broadcast dimensions, so one kernel serves every shape."""
    return tuple(0 if bias.shape[i] == 1 else bias.stride(i) for i in range(4))  # type: ignore[return-value]


class _AttentionWithBias(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, scale):
        B, H, L, D = q.shape
        o = torch.empty((B, H, L, D), device=q.device, dtype=q.dtype)
        lse = torch.empty((B * H, L), device=q.device, dtype=torch.float32)
        launch(_fwd, "BLOCK_M", L, B * H, q, k, v, bias, o, lse, *q.stride()[:3], *k.stride()[:3],
                *v.stride()[:3], *_bias_strides(bias), *o.stride()[:3], H, L, scale, D=D)
        ctx.save_for_backward(q, k, v, bias, o, lse)
        ctx.scale = scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, bias, o, lse = ctx.saved_tensors
        B, H, L, D = q.shape
        do = do.contiguous()
        delta = (do.float() * o.float()).sum(-1).reshape(B * H, L)
        dq, dk, dv = (torch.empty((B, H, L, D), device=q.device, dtype=q.dtype) for _ in range(3))
        need_ds = ctx.needs_input_grad[3]
        ds = torch.empty((B, H, L, L), device=q.device, dtype=bias.dtype) if need_ds else dq  # dq: a dummy
        args = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *_bias_strides(bias), H, L, ctx.scale)
        launch(_bwd_dkdv, "BLOCK_N", L, B * H, q, k, v, bias, do, lse, delta, dk, dv, ds, *args, D=D,
                WRITE_DS=need_ds)
        launch(_bwd_dq, "BLOCK_M", L, B * H, q, k, v, bias, do, lse, delta, dq, *args, D=D)
        dbias = ds.sum_to_size(bias.shape) if need_ds else None  # broadcast dims of the bias summed
        return dq, dk, dv, dbias, None


def attention_with_bias(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                        scale: Optional[float] = None) -> torch.Tensor:
    """``softmax(scale · q kᵀ + bias) v`` for (B, H, L, D) q, k, v and a (B|1, H|1, L, L) bias, fused.

    Same contract as ``F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)`` (no dropout),
    with gradients to q, k, v and the bias.
    """
    if triton is None:
        raise RuntimeError("attention_with_bias needs triton (it ships with CUDA builds of torch)")
    if q.dim() != 4 or bias.dim() != 4 or bias.shape[-2:] != (q.shape[2], k.shape[2]) or q.shape != k.shape:
        raise ValueError(f"need (B, H, L, D) q, k, v and a (B|1, H|1, L, L) bias; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, bias {tuple(bias.shape)}")
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"head_dim {q.shape[-1]} is not supported by the Triton kernel; allowed: {HEAD_DIMS}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    bias = bias if bias.stride(-1) == 1 else bias.contiguous()
    return _AttentionWithBias.apply(q, k, v, bias, scale)
