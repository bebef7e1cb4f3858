"""``RPEAttention``: timm's ``Attention`` with iRPE, a drop-in that keeps timm's qkv/proj parameters.

The maths is in :mod:`irpe_bench.rpe.encoding`; this module wires it into multi-head attention and picks, per
call, the fastest exact kernel for the iRPE logits terms (:func:`select_kernel`, a pure function of the
module's options and the call's device and autograd state):

* ``sdpa`` — the iRPE term as ``F.scaled_dot_product_attention``'s float mask: on CUDA (the memory-efficient
  kernel computes the mask's gradient itself) and wherever no gradient of the term is needed (the fused CPU
  kernel). Not on the CPU when the term needs a gradient: the fused CPU kernel has none, and SDPA would fall
  back to its math path, which adds extra passes over the L×L scores;
* ``eager`` — a matmul, an in-place add of the iRPE term, a softmax and a matmul, through autograd: wherever
  the attention weights themselves are needed (a value-side table, for the efficient value term; timm's
  ``fused_attn=False``; CPU training) and the hand-written backward is not used (inference, CUDA training,
  attention dropout);
* ``core`` — eager's forward with :mod:`.attention_core`'s hand-written backward: how eager trains on the CPU,
  where it is faster than autograd's. On CUDA autograd's backward is faster (though it keeps more memory), so
  ``core_backward=None`` (by device) leaves it off there; with attention dropout it is always off (the core has
  no dropout);
* ``recompute`` — where eager would train and ``recompute_weights`` is set: :mod:`.attention_core` keeping one
  log-sum-exp per row instead of the (B, H, L, L) weights and recomputing them in the backward pass, on every
  device (faster than checkpointing); ``checkpoint`` — activation checkpointing of the eager form, only with
  attention dropout (it replays the dropout mask);
* ``triton`` — opt-in only: :mod:`.triton_attention`, FlashAttention-2 with the iRPE term as a bias tile. Exact,
  but not faster than SDPA's memory-efficient kernel on the GPUs measured (docs/performance.md), so ``auto``
  never picks it;
* ``triton_fused`` — opt-in only: :mod:`.triton_irpe`, FlashAttention-2 that gathers the iRPE tables itself
  (bias and contextual on q/k, the contextual value term), forward and backward, with no L×L tensor in memory.
  Exact, but its speed is not measured yet (docs/performance.md), so ``auto`` never picks it.

``attn.kernel`` (default ``"auto"``) forces ``triton``, ``triton_fused``, ``sdpa`` or the ``eager`` family (eager, core,
recompute or checkpoint by the rules above), and ``attn.core_backward`` the hand-written backward on or off,
for benchmarks and tests. A forced kernel that cannot compute the layer raises with the reason instead of
falling back (:func:`select_kernel`).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..rpe import (
    BucketTerm,
    LogitsTerm,
    RelativePositionEncoding,
    RPEConfig,
    attention_logits_terms,
    bucket_ids,
    bucket_index,
    offset_ids,
)
from .attention_core import attention_core


def _expanded(term: LogitsTerm) -> torch.Tensor:
    return term.expand() if isinstance(term, BucketTerm) else term


def _sources(term: LogitsTerm) -> Tuple[torch.Tensor, ...]:
    """The tensors a term is computed from (for ``requires_grad``), without computing it."""
    return (term.x, term.table) if isinstance(term, BucketTerm) else (term,)


class Buckets(NamedTuple):
    """One grid's bucket tensors, as :class:`RPEAttention` keeps them in its buffers."""

    ids: torch.Tensor  # C, L, L: bucket_ids
    index: Optional[torch.Tensor]  # C, L·L: bucket_index(ids, K), key- and value-side lookups
    index_t: Optional[torch.Tensor]  # C, L·L: bucket_index(ids, K, transpose=True), query-side lookups


def _triton_problem(q: torch.Tensor, terms: Sequence[LogitsTerm]) -> Optional[str]:
    """Why the Triton kernel cannot run on q and these terms (device, dtype, head_dim), None where it can."""
    from .triton_attention import available  # NOTE: opt-in; triton is imported only when asked for

    L = q.shape[2]
    biases = [torch.empty((*t.x.shape[:-2], L, L), dtype=q.dtype, device="meta")  # shape only: no lookup
              if isinstance(t, BucketTerm) else t.to(q.dtype) for t in terms]
    if all(available(q, b) for b in biases):
        return None
    return f"device {q.device}, dtype {q.dtype}, head_dim {q.shape[-1]}"


def _fused_problem(q: torch.Tensor, terms: Sequence[LogitsTerm]) -> Optional[str]:
    """Why the fused iRPE kernel cannot run on q, None where it can; ``terms``: the dense terms (a mask) only."""
    from .triton_irpe import problem  # NOTE: opt-in; triton is imported only when asked for

    return problem(q, dense_terms=len(terms))


#: The forced kernels that can refuse particular inputs: why they cannot run on q and these terms, None if they can.
_PROBLEMS = {"triton": _triton_problem, "triton_fused": _fused_problem}


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
#: extra training memory (docs/performance.md).
#: The price is one more matmul, the gathers and an exponential per layer in the backward pass. Off by default
#: (sweeps pay for time, not memory); per module: ``attn.recompute_weights = True``, per model: the training
#: config's ``model.recompute_weights``.
RECOMPUTE_WEIGHTS = False
#: Train eager attention through :mod:`.attention_core`'s hand-written backward: None = where measured faster
#: than autograd's (the CPU); True / False force it (``attn.core_backward``, for benchmarks and tests).
CORE_BACKWARD: Optional[bool] = None
#: Kernels :func:`select_kernel` accepts (``RPEAttention.kernel``); ``auto`` picks by device and by whether the
#: iRPE term needs a gradient.
KERNELS = ("auto", "triton", "sdpa", "eager", "triton_fused")


def select_kernel(kernel: str = "auto", *, core_backward: Optional[bool] = None, has_v_table: bool = False,
                  fused_attn: bool = True, grad_enabled: bool = False, term_needs_grad: bool = False,
                  device_type: str = "cpu", training: bool = False, attn_dropout: float = 0.0,
                  recompute_weights: bool = False, triton_problem: Optional[str] = None) -> str:
    """The kernel for one attention call (module docstring): ``triton``, ``triton_fused``, ``sdpa``, ``eager``,
    ``core``, ``recompute`` or ``checkpoint``.

    Args:
        kernel: ``attn.kernel``: ``auto`` or a forced ``triton`` / ``triton_fused`` / ``sdpa`` / ``eager``.
        core_backward: ``attn.core_backward``: None (by device: on for the CPU), True or False.
        has_v_table: a value-side table, whose term needs the attention weights themselves.
        fused_attn: timm's ``fused_attn`` of the wrapped layer (False: timm's switch to eager attention).
        grad_enabled: ``torch.is_grad_enabled()``.
        term_needs_grad: some iRPE term (or a mask) is computed from a tensor that requires a gradient.
        device_type: q's device type (``cpu``, ``cuda``, …).
        training: the module is in training mode.
        attn_dropout: the attention dropout probability (applies in training only).
        recompute_weights: ``attn.recompute_weights``.
        triton_problem: why the forced Triton kernel cannot run on these inputs, None where it can (only read
            when ``kernel`` is ``triton`` or ``triton_fused``).

    Raises:
        ValueError: an unknown kernel or ``core_backward``, or a forced kernel that cannot compute this layer:
            ``sdpa`` or ``triton`` with a value table or timm's ``fused_attn=False`` (both need the weights),
            ``triton_fused`` with ``fused_attn=False``, either Triton kernel where it cannot run (no CUDA, dtype,
            head_dim, attention dropout; for ``triton_fused`` an attention mask). ``sdpa`` forced on
            the CPU while a term needs its gradient is allowed: SDPA's math fallback computes it exactly, only
            slower (what benchmarks of the forced kernel measure).
    """
    if kernel not in KERNELS:
        raise ValueError(f"RPEAttention.kernel={kernel!r}; allowed: {', '.join(KERNELS)}")
    if core_backward not in (None, True, False):
        raise ValueError(f"RPEAttention.core_backward={core_backward!r}; allowed: None (by device), True, False")
    dropout = training and attn_dropout > 0
    if kernel in ("sdpa", "triton", "triton_fused"):
        weights_needed = has_v_table and kernel != "triton_fused"  # NOTE: the fused kernel sums them per bucket
        if weights_needed or not fused_attn:
            why = "a value table needs the attention weights" if weights_needed else \
                "timm's fused_attn=False asks for eager attention"
            raise ValueError(f"RPEAttention.kernel={kernel!r} cannot run this layer: {why}; use 'auto' or 'eager'")
        if kernel != "sdpa":
            if dropout:
                triton_problem = f"attention dropout {attn_dropout} (the Triton kernel has none)"
            if triton_problem is not None:
                raise ValueError(f"RPEAttention.kernel={kernel!r} cannot run here ({triton_problem}); it needs CUDA, "
                                 "bf16/fp16, head_dim 16/32/64/128 and no attention dropout"
                                 + (" or mask" if kernel == "triton_fused" else ""))
        return kernel
    # NOTE: auto takes SDPA unless the weights are needed (a v table; fused_attn=False) or the CPU trains the term
    if kernel == "auto" and not has_v_table and fused_attn and (
            not (grad_enabled and term_needs_grad) or device_type == "cuda"):
        return "sdpa"
    if not (training and grad_enabled):
        return "eager"  # nothing to keep for a backward pass
    if dropout:  # NOTE: attention_core has no dropout; checkpointing replays the dropout mask
        return "checkpoint" if recompute_weights else "eager"
    if recompute_weights:
        return "recompute"
    core = device_type == "cpu" if core_backward is None else core_backward
    return "core" if core else "eager"


class RPEAttention(nn.Module):
    """Multi-head self-attention with image relative position encoding (paper Eq. 13–17).

    Built from an existing timm ``Attention`` so that weights, init and options (qkv bias, qk-norm,
    dropout) are timm's own; only ``rpe_q``/``rpe_k``/``rpe_v`` (official parameter names) are added.

    Attributes:
        grid_size: (height, width) of the patch grid; set from the patch embedding, updated per input when
            the model has a dynamic image size. Never guessed from the sequence length.
        num_prefix_tokens: tokens before the patches (class, distillation, registers): they share one bucket.

    Buffers (non-persistent: a checkpoint holds only the learned tables), as timm keeps its
    ``relative_position_index``; rebuilt by the next forward pass when ``grid_size`` changes:
        bucket_ids: (C, L, L) int64 ids of the grid (:func:`irpe_bench.rpe.bucket_ids`).
        bucket_index: (C, L·L) int64 flat gather index of key- and value-side contextual tables, or None.
        bucket_index_t: (C, L·L) int64, its transposed form for a query-side contextual table, or None.
    On the meta device they are shape-only and rebuilt on the first forward pass on a real device.
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
        self._buckets_grid: Optional[Tuple[int, int]] = None  # the grid the buffers hold; None: to be built
        self._offsets: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # (bucket_ids it was read from, table)
        self._build_buckets(torch.empty(0).device)  # NOTE: the default device, meta under `with torch.device`

    def _build_buckets(self, device: torch.device) -> None:
        """(Re)builds the bucket buffers for ``grid_size`` on ``device``; shape-only on the meta device."""
        h, w = self.grid_size
        c, p = self.config, self.num_prefix_tokens
        sizes = c.num_buckets(p)
        if device.type == "meta":
            ids = torch.empty((len(sizes), p + h * w, p + h * w), dtype=torch.long, device=device)
        else:
            ids = bucket_ids(c.method, c.index, c.alpha, c.beta, c.gamma, h, w, p, device)
        contextual = {a for a in "qkv" if getattr(self, f"rpe_{a}") is not None and c.mode == "contextual"}
        K = sum(sizes)
        self.register_buffer("bucket_ids", ids, persistent=False)
        self.register_buffer("bucket_index", bucket_index(ids, K) if contextual & {"k", "v"} else None,
                             persistent=False)
        self.register_buffer("bucket_index_t", bucket_index(ids, K, transpose=True) if "q" in contextual else None,
                             persistent=False)
        self._buckets_grid = None if device.type == "meta" else tuple(self.grid_size)

    def buckets(self, seq_len: int, device: torch.device) -> Buckets:
        """The bucket buffers for the current grid on ``device`` (rebuilt if the grid changed, or after a
        meta-device build); fails clearly if the sequence does not match the grid."""
        h, w = self.grid_size
        if seq_len != self.num_prefix_tokens + h * w:
            raise ValueError(
                f"sequence length {seq_len} does not match the patch grid {h}x{w} plus "
                f"{self.num_prefix_tokens} prefix token(s) = {self.num_prefix_tokens + h * w}"
            )
        b = self._buffers  # NOTE: read once: each module attribute lookup of a buffer costs about a microsecond
        if self._buckets_grid != tuple(self.grid_size) or b["bucket_ids"].device != device:
            self._build_buckets(device)
        return Buckets(b["bucket_ids"], b["bucket_index"], b["bucket_index_t"])

    def forward(
        self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False
    ) -> torch.Tensor:
        if is_causal:
            raise ValueError("RPEAttention is bidirectional image attention; is_causal=True is not supported")
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # B, H, L, d
        q, k = self.q_norm(q), self.k_norm(k)
        out = self.attend(q, k, v, self.buckets(N, x.device), attn_mask)
        out = out.transpose(1, 2).reshape(B, N, self.attn_dim)
        return self.proj_drop(self.proj(self.norm(out)))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, buckets: Buckets,
               attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attention with iRPE on (B, H, L, d) q, k, v → (B, H, L, d), on the kernel :meth:`kernel_for` picks,
        over the grid's :meth:`buckets`."""
        if self.kernel == "triton_fused":  # NOTE: no logits term is built: the kernel gathers the tables itself
            self.kernel_for(q, [attn_mask] if attn_mask is not None else [])  # raises where it cannot run
            return self.attend_fused(q, k, v, buckets)
        ids = buckets.ids
        terms = attention_logits_terms(self.rpe_q, self.rpe_k, q, k, self.scale, ids, expand=False,
                                       index=buckets.index, index_t=buckets.index_t)
        if attn_mask is not None:
            terms.append(attn_mask)
        kernel = self.kernel_for(q, terms)
        if kernel in ("core", "recompute"):
            table_v = self.rpe_v.lookup_table_weight if self.rpe_v is not None else None
            return attention_core(q, k, v, terms, self.scale, table_v, ids, recompute_weights=kernel == "recompute",
                                  index_v=buckets.index if table_v is not None else None)
        if kernel == "checkpoint":  # NOTE: replays the forward, and with it the same dropout mask
            return checkpoint(self._eager, q, k, v, terms, buckets, use_reentrant=False)
        if kernel == "eager":
            return self._eager(q, k, v, terms, buckets)
        dense = [_expanded(t).to(q.dtype) for t in terms]
        bias = dense[0] if len(dense) == 1 else sum(dense[1:], dense[0])  # never empty: no table → v table
        if kernel == "triton":
            from .triton_attention import attention_with_bias  # NOTE: opt-in; triton is imported only here

            return attention_with_bias(q, k, v, bias, self.scale)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop.p if self.training else 0.0, scale=self.scale
        )

    def attend_fused(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, buckets: Buckets) -> torch.Tensor:
        """:meth:`attend` on the ``triton_fused`` kernel, without the kernel selection (which also checks the
        device: tests run this under Triton's interpreter on the CPU): the kernel gathers the tables itself."""
        from .triton_irpe import irpe_attention  # NOTE: opt-in; triton is imported only here

        tables = {f"table_{a}": getattr(self, f"rpe_{a}").table for a in "qkv" if getattr(self, f"rpe_{a}") is not None}
        return irpe_attention(q, k, v, self._offset_ids(buckets.ids), self.grid_size, self.num_prefix_tokens,
                              scale=self.scale, mode=self.config.mode, **tables)

    def _offset_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """:func:`~irpe_bench.rpe.offset_ids` of the grid's ids, cached per ids buffer (a new grid, device or
        dtype move replaces the buffer, and so the table). NOTE: a cache, not a buffer: only the fused kernel,
        chosen after construction, reads it."""
        if self._offsets is None or self._offsets[0] is not ids:
            self._offsets = (ids, offset_ids(ids, *self.grid_size, self.num_prefix_tokens))
        return self._offsets[1]

    def _eager(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, terms: Sequence[LogitsTerm],
               buckets: Buckets) -> torch.Tensor:
        terms = [_expanded(t).to(q.dtype) for t in terms]
        attn = self.attn_drop(attention_scores(q, k, terms, self.scale).softmax(dim=-1))
        out = attn @ v
        if self.rpe_v is not None:
            out = out + self.rpe_v(attn, buckets.ids, index=buckets.index)  # NOTE: after dropout, as the official code
        return out

    def kernel_for(self, q: torch.Tensor, terms: Sequence[LogitsTerm]) -> str:
        """:func:`select_kernel` for this module's options and this call's q and logits terms."""
        return select_kernel(
            self.kernel, core_backward=self.core_backward, has_v_table=self.rpe_v is not None,
            fused_attn=self.fused_attn, grad_enabled=torch.is_grad_enabled(),
            term_needs_grad=any(r.requires_grad for t in terms for r in _sources(t)), device_type=q.device.type,
            training=self.training, attn_dropout=self.attn_drop.p, recompute_weights=self.recompute_weights,
            triton_problem=_PROBLEMS[self.kernel](q, terms) if self.kernel in _PROBLEMS else None)

    def extra_repr(self) -> str:
        return f"grid_size={self.grid_size}, num_prefix_tokens={self.num_prefix_tokens}, fused_attn={self.fused_attn}"
