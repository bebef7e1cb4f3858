"""The fused iRPE Triton kernel (:mod:`irpe_bench.models.triton_irpe`) against RPEAttention's eager form in
float64: the output and every gradient (q, k, v and each table), bias and contextual, on k, q, qk and qkv, shared
and per-head tables, with and without a class token, on sequences that cross a block edge.

Without a GPU the kernel runs under Triton's interpreter (``TRITON_INTERPRET=1``, fp16: the interpreter's bf16
matmul is broken in triton 3.8), in a subprocess because the switch is read when the kernels are defined; the
shapes are small (32-row blocks, 36–37 tokens) to keep each test within seconds. On CUDA (``gpu`` marker) it runs
compiled, in bf16, at DeiT's shapes, and inside a model layer under autocast.
"""
from __future__ import annotations

import copy

import pytest
import torch

from irpe_bench.models import RPEAttention
from irpe_bench.models import triton_irpe as ti
from irpe_bench.rpe import RPEConfig, offset_ids
from tests.test_triton_attention import _interpreted

pytestmark = pytest.mark.skipif(ti.triton is None, reason="triton is not installed")

#: (B, H, head_dim, grid, prefix tokens, RPEConfig fields). 6×6 + 1 = 37, 5×7 + 1 = 36 and 5×7 + 2 = 37 tokens
#: cross the interpreter's 32-row blocks; product has 50 buckets (KP 64), cross two components of 8 (KP 16).
BIAS = [(2, 2, 16, (6, 6), 1, dict(mode="bias", on="k", shared_head=False)),
        (1, 3, 32, (5, 7), 1, dict(mode="bias", on="qk", shared_head=True, method="cross"))]
CONTEXTUAL = [(2, 2, 16, (6, 6), 1, dict(on="k", shared_head=True)),
              (1, 2, 32, (5, 7), 1, dict(on="q", shared_head=False)),
              (1, 2, 16, (6, 6), 0, dict(on="qk", shared_head=False, method="cross"))]
VALUE = [(2, 2, 16, (6, 6), 1, dict(on="qkv", shared_head=True)),
         (1, 2, 16, (5, 7), 2, dict(on="v", shared_head=False, method="cross"))]  # class + distillation token
TABLE_STD = 0.5  # large enough that a wrong bucket moves the output well beyond fp16 rounding


def layer(H: int, D: int, grid, prefix: int, fields) -> RPEAttention:
    """An RPEAttention (product mapping, ratio 1.9 unless given) with random tables."""
    from timm.layers import Attention

    attn = RPEAttention(Attention(H * D, num_heads=H), RPEConfig(ratio=1.9, **fields), grid, prefix)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in attn.named_parameters():
            if "lookup_table" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * TABLE_STD)
    return attn


def compare(device: str, dtype: torch.dtype, cases) -> dict:
    """Max relative error (‖got − want‖ / ‖want‖) of o, dq, dk, dv and each table's gradient over the cases, the
    fused kernel in ``dtype`` against the eager form in float64 (same inputs, same tables)."""
    worst: dict = {}
    gen = torch.Generator().manual_seed(0)
    for B, H, D, grid, prefix, fields in cases:
        attn = layer(H, D, grid, prefix, fields).to(device)
        L = prefix + grid[0] * grid[1]
        q, k, v = (torch.randn(B, H, L, D, generator=gen).to(device, dtype).requires_grad_() for _ in range(3))
        go = torch.randn(B, H, L, D, generator=gen).to(device, dtype)
        tables = [n for n, _ in attn.named_parameters() if "lookup_table" in n]
        out = attn.attend_fused(q, k, v, attn.buckets(L, q.device))
        params = dict(attn.named_parameters())
        got = [out, *torch.autograd.grad(out, [q, k, v] + [params[n] for n in tables], go)]
        ref_attn = copy.deepcopy(attn).double().eval()  # eval: eager attention through autograd
        x64 = [t.detach().double().requires_grad_() for t in (q, k, v)]
        ref = ref_attn.attend(*x64, ref_attn.buckets(L, q.device))
        ref_params = dict(ref_attn.named_parameters())
        want = [ref, *torch.autograd.grad(ref, x64 + [ref_params[n] for n in tables], go.double())]
        for name, a, b in zip(["o", "dq", "dk", "dv", *tables], got, want):
            assert a.shape == b.shape and torch.isfinite(a).all(), name
            key = name.split(".")[0] if "lookup" in name else name
            err = float((a.detach().double() - b.detach()).norm() / b.detach().norm())
            worst[key] = max(worst.get(key, 0.0), err)
    return worst


@pytest.mark.slow
def test_interpreted_kernels_match_float64():
    """One interpreter process (its start-up, torch and Triton imported with the switch on, costs more than the
    cases) for the attention-with-bias kernel (tests/test_triton_attention.py: with and without the bias's
    gradient) and the three families of iRPE cases: each reports its worst error per output and gradient."""
    out = _interpreted("import torch; from tests.test_triton_irpe import compare, BIAS, CONTEXTUAL, VALUE; "
                       "import tests.test_triton_attention as ta; "
                       "print(ta.compare('cpu', torch.float16)); "
                       "print(ta.compare('cpu', torch.float16, ta.CASES[:1], bias_grad=False)); "
                       "[print(compare('cpu', torch.float16, cases)) for cases in (BIAS, CONTEXTUAL, VALUE)]")
    lines = out.strip().splitlines()[-5:]
    with_grad, without, bias, contextual, value = (eval(line) for line in lines)  # noqa: S307 - our own dicts
    assert set(with_grad) == {"o", "dq", "dk", "dv", "dbias"} and set(without) == {"o", "dq", "dk", "dv"}
    for name, err in {**with_grad, **without}.items():
        assert err < 2e-3, ("attention", name, err)  # fp16 operands, fp32 accumulation: measured ~3e-4
    assert set(bias) == set(contextual) == {"o", "dq", "dk", "dv", "rpe_k", "rpe_q"}
    assert set(value) == {"o", "dq", "dk", "dv", "rpe_k", "rpe_q", "rpe_v"}
    for family, worst in (("bias", bias), ("contextual", contextual), ("value", value)):
        for name, err in worst.items():
            assert err < 2e-3, (family, name, err)  # fp16 operands, fp32 accumulation


def test_refuses_what_it_cannot_compute_with_the_reason():
    q = torch.zeros(1, 2, 37, 16)
    off = offset_ids(torch.zeros(1, 37, 37, dtype=torch.long), 6, 6, 1)
    with pytest.raises(ValueError, match=r"L = 1 \+ 5·6"):
        ti.irpe_attention(q, q, q, off, (5, 6), 1, table_k=torch.zeros(1, 16, 50))
    with pytest.raises(ValueError, match="at least one table"):
        ti.irpe_attention(q, q, q, off, (6, 6), 1)
    with pytest.raises(ValueError, match=r"disagree on the number of buckets: \[49, 50\]"):
        ti.irpe_attention(q, q, q, off, (6, 6), 1, table_k=torch.zeros(1, 16, 50), table_v=torch.zeros(1, 49, 16))
    with pytest.raises(ValueError, match=r"offsets must be offset_ids\(ids, 6, 6, 1\)"):
        ti.irpe_attention(q, q, q, off.long(), (6, 6), 1, table_k=torch.zeros(1, 16, 50))
    assert ti.problem(q) == "device cpu, dtype torch.float32"
    assert ti.problem(q.half(), dense_terms=1) == "device cpu, an attention mask (the fused kernel gathers only " \
                                                   "the iRPE tables)"


def test_the_offset_table_is_cached_per_bucket_buffer():
    """Read once per ids buffer; a new grid (a new buffer) gives a new table, of the new grid."""
    attn = layer(2, 16, (6, 6), 1, dict(on="k"))
    first = attn._offset_ids(attn.buckets(37, torch.device("cpu")).ids)
    assert attn._offset_ids(attn.buckets(37, torch.device("cpu")).ids) is first
    attn.grid_size = (5, 7)
    ids = attn.buckets(36, torch.device("cpu")).ids
    assert torch.equal(attn._offset_ids(ids), offset_ids(ids, 5, 7, 1))


def test_rpe_attention_refuses_the_fused_kernel_where_it_cannot_run():
    """Forced on the CPU (or with a mask) the layer raises with the reason instead of falling back."""
    attn = layer(2, 16, (6, 6), 1, dict(on="qkv"))
    attn.kernel = "triton_fused"
    x = torch.randn(1, 37, 32)
    with pytest.raises(ValueError, match=r"kernel='triton_fused' cannot run here \(device cpu, dtype torch.float32\)"):
        attn(x)
    with pytest.raises(ValueError, match=r"\(device cpu, dtype torch.float32, an attention mask"):
        attn(x, attn_mask=torch.zeros(1, 1, 37, 37))
    attn.kernel = "auto"  # the fused kernel is opt-in: auto keeps its rules (CPU training: the core's backward)
    assert attn.kernel_for(x.view(1, 37, 2, 16).transpose(1, 2), []) == "core"


@pytest.mark.gpu
@pytest.mark.parametrize("fields", [dict(on="k"), dict(on="qkv", shared_head=False), dict(mode="bias", on="qk")],
                         ids=["k", "qkv-per-head", "bias-qk"])
def test_cuda_layer_on_the_fused_kernel_matches_fp32_under_autocast(fields):
    """RPEAttention with ``kernel="triton_fused"`` under bf16 autocast, DeiT's shapes: output and every gradient
    (input, qkv, proj, tables) within bf16 rounding of the same layer in fp32 on its default kernel."""
    ours = layer(3, 64, (14, 14), 1, fields).cuda()
    ref = copy.deepcopy(ours)
    ours.kernel = "triton_fused"
    x, g = torch.randn(8, 197, 192, device="cuda"), torch.randn(8, 197, 192, device="cuda")

    def run(m, amp):
        xi = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = m(xi)
        return [out.float(), *torch.autograd.grad(out.float(), [xi, *m.parameters()], g)]

    for a, b in zip(run(ours, True), run(ref, False)):
        assert float((a - b).norm() / b.norm()) < 3e-2


@pytest.mark.gpu
def test_cuda_bf16_kernel_matches_float64_at_deit_shapes():
    deit = [(4, 3, 64, (14, 14), 1, dict(on=on, mode=mode, shared_head=shared))
            for on, mode, shared in [("k", "contextual", True), ("qkv", "contextual", False), ("qk", "bias", False)]]
    worst = compare("cuda", torch.bfloat16, BIAS + CONTEXTUAL + VALUE + deit)
    for name, err in worst.items():
        assert err < 2e-2, (name, err)  # bf16 operands
