"""A plain, line-by-line form of the official iRPE algorithm (microsoft/Cream ``iRPE/DeiT-with-iRPE``).

Written from the algorithm's description (reference §2, §4), not copied: it keeps the official code's
structure and costs on purpose, because it is what irpe_bench is compared against, for values (tests) and
for speed (``irpe-bench bench``, :mod:`irpe_bench.bench.suites`). It ships inside the package so that the
installed ``bench`` command needs no checkout; nothing else in the package imports it:

* bucket ids built from the official formulae, with the class token's extra bucket, and the grid guessed as
  ``h = w = floor(sqrt(L))`` exactly as the official DeiT attention does;
* contextual q/k: matmul with the table, then *advanced indexing* of the flattened product (its backward is
  an index-put accumulation — the slow part the paper's CUDA op exists for);
* v: the *naive* O(L²·d) path that materialises an (H, L, L, d) table gather;
* parameters named and shaped as the official modules (``rpe_k.lookup_table_weight`` (H, d, K), cross as
  ``rp_rows`` / ``rp_cols``), so its ``state_dict()`` is an official-format checkpoint.

Only piecewise indexing exists here, as in the official code.
"""
from __future__ import annotations

import math
from typing import Optional

import timm
import torch
from torch import nn

OFFICIAL_METHODS = ("euc", "quant", "cross", "product")


@torch.no_grad()
def official_piecewise_index(relative_position: torch.Tensor, alpha: float, beta: float, gamma: float) -> torch.Tensor:
    """Eq. 18 as the official code evaluates it: masked assignment, float32 log, clip at float β, cast."""
    rp_abs = relative_position.abs()
    not_mask = rp_abs > alpha
    rp_out = relative_position[not_mask]
    y_out = torch.sign(rp_out) * (
        alpha + torch.log(rp_abs[not_mask] / alpha) / math.log(gamma / alpha) * (beta - alpha)
    ).round().clip(max=beta)
    idx = relative_position.clone()
    if idx.is_floating_point():
        idx = idx.round()
    idx = idx.long()
    idx[not_mask] = y_out.long()
    return idx


@torch.no_grad()
def official_bucket_ids(method: str, height: int, width: int, skip: int, alpha: float, beta: float, gamma: float):
    """Returns (ids (skip+L, skip+L) int64, num_buckets including the skip bucket);
    cross: method 'cross_rows' | 'cross_cols'."""
    rows = torch.arange(height).view(height, 1).repeat(1, width)
    cols = torch.arange(width).view(1, width).repeat(height, 1)
    pos = torch.stack([rows, cols], 2).view(height * width, 2)
    diff = pos.view(-1, 1, 2) - pos.view(1, -1, 2)  # L, L, 2
    beta_int = int(beta)
    g = lambda x: official_piecewise_index(x, alpha, beta, gamma)  # noqa: E731
    if method == "euc":
        ids = g(diff.square().sum(2).float().sqrt().round()) + beta_int
    elif method == "quant":
        ids = g(diff.square().sum(2)) + beta_int
    elif method == "cross_rows":
        ids = g(diff[:, :, 0]) + beta_int
    elif method == "cross_cols":
        ids = g(diff[:, :, 1]) + beta_int
    elif method == "product":
        ids = (g(diff[:, :, 0]) + beta_int) * (2 * beta_int + 1) + g(diff[:, :, 1]) + beta_int
    else:
        raise ValueError(method)
    num_buckets = (2 * beta_int + 1) ** 2 if method == "product" else 2 * beta_int + 1
    if skip > 0:
        L = height * width
        full = ids.new_full((skip + L, skip + L), num_buckets)
        full[skip:, skip:] = ids
        ids, num_buckets = full, num_buckets + 1
    return ids, num_buckets


class ReferenceIRPE(nn.Module):
    """One official ``iRPE`` module (not cross): ``transposed`` for q/k, not for v."""

    def __init__(self, method, mode, transposed, num_heads, head_dim, ratio, skip):
        super().__init__()
        self.method, self.mode, self.transposed = method, mode, transposed
        self.num_heads, self.head_dim = num_heads, head_dim
        self.alpha, self.beta, self.gamma = ratio, 2 * ratio, 8 * ratio
        beta_int = int(self.beta)
        base = (2 * beta_int + 1) ** 2 if method == "product" else 2 * beta_int + 1
        self.num_buckets = base + (1 if skip > 0 else 0)
        if mode == "bias":
            assert transposed, "bias mode on v does not exist"
            self.lookup_table_bias = nn.Parameter(torch.zeros(num_heads, self.num_buckets))
        elif transposed:
            self.lookup_table_weight = nn.Parameter(torch.zeros(num_heads, head_dim, self.num_buckets))
        else:
            self.lookup_table_weight = nn.Parameter(torch.zeros(num_heads, self.num_buckets, head_dim))

    def bucket_ids(self, L: int, device) -> torch.Tensor:
        side = int(math.sqrt(L))  # NOTE: the official DeiT guess; only right for square grids
        ids, nb = official_bucket_ids(self.method, side, side, L - side * side, self.alpha, self.beta, self.gamma)
        assert nb == self.num_buckets
        return ids.to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, L, _ = x.shape
        ids = self.bucket_ids(L, x.device)
        if not self.transposed:  # naive value path: gather an (H, L, L, d) tensor
            weight = self.lookup_table_weight[:, ids.flatten()].view(self.num_heads, L, L, self.head_dim)
            return torch.matmul(x.permute(1, 2, 0, 3), weight).permute(2, 0, 1, 3)
        if self.mode == "bias":
            return self.lookup_table_bias[:, ids.flatten()].view(1, self.num_heads, L, L)
        table = torch.matmul(x.transpose(0, 1).reshape(-1, B * L, self.head_dim), self.lookup_table_weight)
        table = table.view(-1, B, L, self.num_buckets).transpose(0, 1)
        offset = torch.arange(0, L * self.num_buckets, self.num_buckets, device=x.device).view(-1, 1)
        return table.flatten(2)[:, :, (ids + offset).flatten()].view(B, -1, L, L)


class ReferenceIRPECross(nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.rp_rows = ReferenceIRPE(method="cross_rows", **kwargs)
        self.rp_cols = ReferenceIRPE(method="cross_cols", **kwargs)

    def forward(self, x):
        return self.rp_rows(x) + self.rp_cols(x)


class ReferenceRPEAttention(nn.Module):
    """The official ``RPEAttention.forward``, over a timm attention's qkv/proj modules."""

    def __init__(self, attn: nn.Module, method: str, mode: str, ratio: float, shared_head: bool, rpe_on: str,
                 skip: int = 1):
        super().__init__()
        self.num_heads, self.scale = attn.num_heads, attn.head_dim ** -0.5
        self.qkv, self.attn_drop, self.proj, self.proj_drop = attn.qkv, attn.attn_drop, attn.proj, attn.proj_drop
        for a, transposed in (("q", True), ("k", True), ("v", False)):
            rpe = None
            if a in rpe_on:
                kw = dict(mode=mode, transposed=transposed, num_heads=1 if shared_head else attn.num_heads,
                          head_dim=attn.head_dim, ratio=ratio, skip=skip)
                rpe = ReferenceIRPECross(**kw) if method == "cross" else ReferenceIRPE(method=method, **kw)
            setattr(self, f"rpe_{a}", rpe)

    def forward(self, x, attn_mask=None, is_causal=False):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * self.scale
        attn = q @ k.transpose(-2, -1)
        if self.rpe_k is not None:
            attn = attn + self.rpe_k(q)
        if self.rpe_q is not None:
            attn = attn + self.rpe_q(k * self.scale).transpose(2, 3)
        attn = self.attn_drop(attn.softmax(dim=-1))
        out = attn @ v
        if self.rpe_v is not None:
            out = out + self.rpe_v(attn)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))


def build_reference_model(model_name: str, method: str, mode: str = "contextual", ratio: float = 1.9,
                          shared_head: bool = True, rpe_on: str = "k", init_tables: Optional[float] = None,
                          **timm_kwargs) -> nn.Module:
    """The official DeiT-with-iRPE model: timm's ViT (same parameter names as the official VisionTransformer)
    with every block's attention replaced by :class:`ReferenceRPEAttention`.

    ``init_tables``: if set, lookup tables are filled with ``N(0, init_tables²)`` so that iRPE matters.
    """
    model = timm.create_model(model_name, pretrained=False, **timm_kwargs)
    for block in model.blocks:
        block.attn = ReferenceRPEAttention(block.attn, method, mode, ratio, shared_head, rpe_on,
                                           skip=model.num_prefix_tokens)
    if init_tables is not None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lookup_table" in name:
                    p.normal_(0.0, init_tables)
    return model
