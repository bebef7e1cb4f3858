"""``RPEAttention``: timm's ``Attention`` with iRPE, a drop-in that keeps timm's qkv/proj parameters.

The maths is in :mod:`irpe_bench.rpe.encoding`; this module only wires it into multi-head attention and picks
the fastest exact kernel for the iRPE logits terms (:meth:`RPEAttention.kernel_for`), as measured by
``benchmarks/bench_attention_kernels.py`` and ``python run.py bench``:

* ``sdpa`` — the iRPE term as ``F.scaled_dot_product_attention``'s float mask: on CUDA (the memory-efficient
  kernel computes the mask's gradient itself) and for CPU inference (the fused CPU kernel);
* ``eager`` — a matmul, an in-place add of the iRPE term, a softmax and a matmul, through autograd: wherever
  the weights themselves are needed (a value-side table, then the efficient value term; timm's
  ``fused_attn=False``; CPU training, below) and the hand-written backward is not used (inference, CUDA
  training, attention dropout);
* ``core`` — eager's forward with :mod:`.attention_core`'s hand-written backward: how eager trains on the CPU.
  NOTE: CPU training of every mode takes it, since the fused CPU kernel has no mask gradient: SDPA would
  silently fall back to its math path (a "safe" softmax with extra ``isneginf``/``all``/``where`` passes over
  the L×L scores, ~25% of the layer). On CUDA autograd's own backward is faster, though it keeps more (H200,
  DeiT-Tiny, QKV: 1.97× vs 2.35× the baseline's training step, memory 1.61× vs 1.31×; README, Performance), so
  there ``core_backward`` (default: by device) leaves it off; with attention dropout it is always off (the core
  has no dropout);
* ``recompute`` — where eager would train and ``recompute_weights`` is set: :mod:`.attention_core` keeping one
  log-sum-exp per row instead of the L×L weights and recomputing them in the backward pass, on every device
  (faster than checkpointing on both: H200 QKV 2.69× vs 3.05×, CPU 1.30× vs 1.34×); ``checkpoint`` —
  activation checkpointing of the eager form, only with attention dropout (it replays the dropout mask);
* ``triton`` — opt-in only (``attn.kernel = "triton"``): :mod:`.triton_attention`, FlashAttention-2 with the
  iRPE term as a bias tile. Exact, but not faster than SDPA's memory-efficient kernel on an H100 or an H200
  (README, Performance), so ``auto`` never picks it.

``attn.kernel`` (default ``"auto"``) forces ``triton``, ``sdpa`` or ``eager``, and ``attn.core_backward`` the
hand-written backward on or off, for benchmarks and tests.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..rpe import BucketTerm, LogitsTerm, RelativePositionEncoding, RPEConfig, attention_logits_terms, bucket_ids
from .attention_core import attention_core


def _expanded(term: LogitsTerm) -> torch.Tensor:
    return term.expand() if isinstance(term, BucketTerm) else term


def _sources(term: LogitsTerm) -> Tuple[torch.Tensor, ...]:
    """The tensors a term is computed from (for ``requires_grad``), without computing it."""
    return (term.x, term.table) if isinstance(term, BucketTerm) else (term,)


def attention_scores(q: torch.Tensor, k: torch.Tensor, terms: Sequence[torch.Tensor], scale: float) -> torch.Tensor:
    """``(scale · q) kᵀ + Σ terms`` (B, H, L, L), as the official code orders it.

    NOTE: the terms are added in place into the fresh matmul output (the backward of neither needs it): no
    intermediate sum of the terms, one pass over the L×L scores per term; on CPU this beats ``baddbmm``,
    which copies its input first.
    """
    attn = (q * scale) @ k.transpose(-2, -1)
    for t in terms:
        attn.add_(t)
    return attn


#: Recompute the (B, H, L, L) attention weights in the backward pass instead of keeping them, wherever the eager
#: form would train (CPU training; any v table): :mod:`.attention_core` (checkpointing with attention dropout).
#: The no-RPE baseline's fused kernel keeps no L×L tensor; eager keeps one per layer, which is most of iRPE's
#: extra training memory (README, Performance).
#: The price is one more matmul, the gathers and an exponential per layer in the backward pass. Off by default
#: (sweeps pay for time, not memory); per module: ``attn.recompute_weights = True``, per model: the training
#: config's ``model.recompute_weights``.
RECOMPUTE_WEIGHTS = False
#: Train eager attention through :mod:`.attention_core`'s hand-written backward: None = where measured faster
#: than autograd's (the CPU); True / False force it (``attn.core_backward``, for benchmarks and tests).
CORE_BACKWARD: Optional[bool] = None
#: Kernels :meth:`RPEAttention.kernel_for` accepts; ``auto`` picks by device and by whether the iRPE term needs a
#: gradient.
KERNELS = ("auto", "triton", "sdpa", "eager")


class RPEAttention(nn.Module):
    """Multi-head self-attention with image relative position encoding (paper Eq. 13–17).

    Built from an existing timm ``Attention`` so that weights, init and options (qkv bias, qk-norm,
    dropout) are timm's own; only ``rpe_q``/``rpe_k``/``rpe_v`` (official parameter names) are added.

    Attributes:
        grid_size: (height, width) of the patch grid; set from the patch embedding, updated per input when
            the model has a dynamic image size. Never guessed from the sequence length.
        num_prefix_tokens: tokens before the patches (class, distillation, registers): they share one bucket.
    """

    def __init__(self, attn: nn.Module, config: RPEConfig, grid_size: Tuple[int, int], num_prefix_tokens: int):
        super().__init__()
        if getattr(attn, "gate", None) is not None:
            raise ValueError("RPEAttention does not support timm's gated attention (gated=True)")
        self.num_heads, self.head_dim, self.scale = attn.num_heads, attn.head_dim, attn.scale
        self.attn_dim = getattr(attn, "attn_dim", attn.num_heads * attn.head_dim)
        self.fused_attn = bool(getattr(attn, "fused_attn", True))
        self.qkv, self.q_norm, self.k_norm = attn.qkv, attn.q_norm, attn.k_norm
        self.attn_drop, self.proj, self.proj_drop = attn.attn_drop, attn.proj, attn.proj_drop
        self.norm = getattr(attn, "norm", nn.Identity())
        self.config = config
        self.grid_size = tuple(grid_size)
        self.num_prefix_tokens = num_prefix_tokens
        self.recompute_weights = RECOMPUTE_WEIGHTS
        self.kernel = "auto"
        self.core_backward: Optional[bool] = CORE_BACKWARD
        for a in "qkv":
            rpe = (RelativePositionEncoding(config, a, self.num_heads, self.head_dim, num_prefix_tokens)
                   if a in config.on else None)
            setattr(self, f"rpe_{a}", rpe)

    def bucket_ids(self, seq_len: int, device: torch.device) -> torch.Tensor:
        """(C, L, L) ids for the current grid; fails clearly if the sequence does not match the grid."""
        h, w = self.grid_size
        if seq_len != self.num_prefix_tokens + h * w:
            raise ValueError(
                f"sequence length {seq_len} does not match the patch grid {h}x{w} plus "
                f"{self.num_prefix_tokens} prefix token(s) = {self.num_prefix_tokens + h * w}"
            )
        c = self.config
        return bucket_ids(c.method, c.index, c.alpha, c.beta, c.gamma, h, w, self.num_prefix_tokens, device)

    def forward(
        self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        if is_causal:
            raise ValueError("RPEAttention is bidirectional image attention; is_causal=True is not supported")
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # B, H, L, d
        q, k = self.q_norm(q), self.k_norm(k)
        out = self.attend(q, k, v, self.bucket_ids(N, x.device), attn_mask)
        out = out.transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(out)))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ids: torch.Tensor,
               attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attention with iRPE on (B, H, L, d) q, k, v → (B, H, L, d), on the kernel :meth:`kernel_for` picks."""
        terms = attention_logits_terms(self.rpe_q, self.rpe_k, q, k, self.scale, ids, expand=False)
        if attn_mask is not None:
            terms.append(attn_mask)
        kernel = self.kernel_for(q, terms)
        if kernel in ("core", "recompute"):
            table_v = self.rpe_v.lookup_table_weight if self.rpe_v is not None else None
            return attention_core(q, k, v, terms, self.scale, table_v, ids, recompute_weights=kernel == "recompute")
        if kernel == "checkpoint":  # NOTE: replays the forward, and with it the same dropout mask
            return checkpoint(self._eager, q, k, v, terms, ids, use_reentrant=False)
        if kernel == "eager":
            return self._eager(q, k, v, terms, ids)
        dense = [_expanded(t).to(q.dtype) for t in terms]
        bias = dense[0] if len(dense) == 1 else sum(dense[1:], dense[0])  # never empty: no table → v table
        if kernel == "triton":
            from .triton_attention import attention_with_bias  # NOTE: opt-in; triton is imported only here

            return attention_with_bias(q, k, v, bias, self.scale)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0, scale=self.scale
        )

    def _eager(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, terms: Sequence[LogitsTerm],
               ids: torch.Tensor) -> torch.Tensor:
        terms = [_expanded(t).to(q.dtype) for t in terms]
        attn = self.attn_drop(attention_scores(q, k, terms, self.scale).softmax(dim=-1))
        out = attn @ v
        if self.rpe_v is not None:
            out = out + self.rpe_v(attn, ids)  # NOTE: after dropout, as the official code
        return out

    def kernel_for(self, q: torch.Tensor, terms: Sequence[LogitsTerm]) -> str:
        """The kernel for these logits terms (module docstring): ``triton``, ``sdpa``, ``eager``, ``core``,
        ``recompute`` or ``checkpoint``."""
        if self.kernel not in KERNELS:
            raise ValueError(f"RPEAttention.kernel={self.kernel!r}; allowed: {', '.join(KERNELS)}")
        if self.core_backward not in (None, True, False):
            raise ValueError(f"RPEAttention.core_backward={self.core_backward!r}; "
                             "allowed: None (by device), True, False")
        # NOTE: else the weights are needed: a v table needs them; fused_attn=False is timm's own switch to eager
        if self.rpe_v is None and self.fused_attn and self.kernel != "eager":
            if self.kernel != "auto":
                if self.kernel == "triton":
                    self._check_triton(q, terms)
                return self.kernel
            needs_grad = torch.is_grad_enabled() and any(r.requires_grad for t in terms for r in _sources(t))
            if not needs_grad or q.is_cuda:
                return "sdpa"
        if not (self.training and torch.is_grad_enabled()):
            return "eager"  # nothing to keep for a backward pass
        if self.attn_drop.p > 0:  # NOTE: attention_core has no dropout; checkpointing replays the dropout mask
            return "checkpoint" if self.recompute_weights else "eager"
        if self.recompute_weights:
            return "recompute"
        core = q.device.type == "cpu" if self.core_backward is None else self.core_backward
        return "core" if core else "eager"

    def _check_triton(self, q: torch.Tensor, terms: Sequence[LogitsTerm]) -> None:
        from .triton_attention import available

        L = q.shape[2]
        biases = [torch.empty((*t.x.shape[:-2], L, L), dtype=q.dtype, device="meta")  # shape only: no lookup
                  if isinstance(t, BucketTerm) else t.to(q.dtype) for t in terms]
        dropout = self.training and self.attn_drop.p > 0  # NOTE: the Triton kernel has no attention dropout
        if dropout or not all(available(q, b) for b in biases):
            raise ValueError(f"RPEAttention.kernel='triton' cannot run here (device {q.device}, dtype {q.dtype}, "
                             f"head_dim {q.shape[-1]}, attention dropout {self.attn_drop.p if self.training else 0}); "
                             "it needs CUDA, bf16/fp16, head_dim 16/32/64/128 and no attention dropout")

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, num_prefix_tokens={self.num_prefix_tokens}, fused_attn={self.fused_attn}"
