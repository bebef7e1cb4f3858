"""Each fast path of iRPE against a plain O(L²·d) form of the same equation: values and gradients.

The plain forms below materialise the (L, L, d) per-pair table ``r[I(i, j)]`` and sum over d — the naive
cost the efficient forms (paper Eq. 26–28, per-bucket value sums) avoid. The attention paths (fused SDPA
with a float mask, eager scores with an in-place iRPE term) are checked against each other and against the
official-algorithm reference in ``irpe_bench/bench/reference.py``.
"""
import copy

import pytest
import torch
from timm.layers import Attention

from irpe_bench.bench.reference import ReferenceRPEAttention
from irpe_bench.models import RPEAttention
from irpe_bench.models.attention import attention_scores
from irpe_bench.rpe import (
    RPEConfig,
    attention_logits_terms,
    bias_logits,
    bucket_ids,
    contextual_logits,
    contextual_values,
)


@pytest.fixture(autouse=True)
def _float64():
    """The maths, not float rounding, is under test here; restored after each test (other modules use fp32)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)

GRID = (3, 4)
PREFIX = 1
L = PREFIX + GRID[0] * GRID[1]


def _ids(method):
    c = RPEConfig(method=method)
    return bucket_ids(method, "piecewise", c.alpha, c.beta, c.gamma, *GRID, PREFIX), sum(c.num_buckets(PREFIX))


def _per_pair(table_kd, ids):
    """(H, K, d) table → (H, L, L, d) per-pair vectors Σ_c r[I_c(i, j)]: the naive O(L²·d) tensor."""
    return sum(table_kd[:, ids[c]] for c in range(ids.shape[0]))


def _grads(fn, *tensors):
    out = fn(*tensors)
    g = torch.randn_like(out)
    return out.detach(), torch.autograd.grad(out, tensors, g)


def _grads_with(fn, g, *tensors):
    out = fn(*tensors)
    return out.detach(), torch.autograd.grad(out, tensors, g)


@pytest.mark.parametrize("method", ["product", "cross", "euclidean", "quant"])
@pytest.mark.parametrize("heads", [1, 3])
def test_contextual_logits_match_naive(method, heads):
    ids, K = _ids(method)
    x = torch.randn(2, 3, L, 5, requires_grad=True)
    table = torch.randn(heads, 5, K, requires_grad=True)
    g = torch.randn(2, 3, L, L)
    fast = _grads_with(lambda x, t: contextual_logits(x, t, ids, 0.3), g, x, table)
    naive = _grads_with(lambda x, t: 0.3 * torch.einsum("bhid,hijd->bhij", x, _per_pair(t.transpose(1, 2), ids)),
                        g, x, table)
    torch.testing.assert_close(fast[0], naive[0])
    for a, b in zip(fast[1], naive[1]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("method", ["product", "cross"])
def test_bias_logits_match_naive(method):
    ids, K = _ids(method)
    table = torch.randn(3, K, requires_grad=True)
    g = torch.randn(1, 3, L, L)
    fast = _grads_with(lambda t: bias_logits(t, ids), g, table)
    naive = _grads_with(lambda t: _per_pair(t.unsqueeze(-1), ids).squeeze(-1).unsqueeze(0), g, table)
    torch.testing.assert_close(fast[0], naive[0])
    torch.testing.assert_close(fast[1][0], naive[1][0])


@pytest.mark.parametrize("method", ["product", "cross", "quant"])
@pytest.mark.parametrize("heads", [1, 3])
def test_contextual_values_match_naive(method, heads):
    ids, K = _ids(method)
    attn = torch.rand(2, 3, L, L).softmax(-1).requires_grad_()
    table = torch.randn(heads, K, 5, requires_grad=True)
    g = torch.randn(2, 3, L, 5)
    fast = _grads_with(lambda a, t: contextual_values(a, t, ids), g, attn, table)
    naive = _grads_with(lambda a, t: torch.einsum("bhij,hijd->bhid", a, _per_pair(t, ids)), g, attn, table)
    torch.testing.assert_close(fast[0], naive[0])
    for a, b in zip(fast[1], naive[1]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("shape", [(2, 3), (1, 1), (1, 3)])
def test_attention_scores_in_place_bias(shape):
    q, k = torch.randn(2, 3, L, 4, requires_grad=True), torch.randn(2, 3, L, 4, requires_grad=True)
    bias = torch.randn(*shape, L, L, requires_grad=True)
    g = torch.randn(2, 3, L, L)
    fast = _grads_with(lambda q, k, b: attention_scores(q, k, [b], 0.5), g, q, k, bias)
    naive = _grads_with(lambda q, k, b: 0.5 * q @ k.transpose(-1, -2) + b, g, q, k, bias)
    torch.testing.assert_close(fast[0], naive[0])
    for a, b in zip(fast[1], naive[1]):
        torch.testing.assert_close(a, b)


SQUARE = (3, 3)  # the reference guesses the grid from sqrt(L), as the official DeiT code
LS = PREFIX + SQUARE[0] * SQUARE[1]
MODES = [dict(mode="contextual", on="k"), dict(mode="contextual", on="qk"), dict(mode="contextual", on="qkv"),
         dict(mode="bias", on="k"), dict(mode="bias", on="qk"), dict(mode="contextual", on="q", method="quant"),
         dict(mode="contextual", on="kv", shared_head=False)]


def _layers(mode, dim=8):
    torch.manual_seed(0)
    base = Attention(dim, num_heads=2, qkv_bias=True)
    cfg = RPEConfig(**{"method": "product", **mode})
    ours = RPEAttention(copy.deepcopy(base), cfg, SQUARE, PREFIX)
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "lookup_table" in name:
                p.normal_(0, 0.5)
    ref = ReferenceRPEAttention(copy.deepcopy(base), cfg.method, cfg.mode,
                                cfg.ratio, cfg.shared_head, cfg.on, skip=PREFIX)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(map(str, m.values())))
def test_attention_paths_match_reference(mode):
    """The path the model takes in training on CPU (eager), and the fused path, both equal the reference."""
    ours, ref = _layers(mode)
    x = torch.randn(2, LS, 8)
    g = torch.randn(2, LS, 8)

    def run(m, **kw):
        xi = x.clone().requires_grad_()
        out = m(xi)
        params = [p for p in m.parameters()]
        grads = torch.autograd.grad(out, [xi, *params], g)
        return out.detach(), grads

    want = run(ref)
    got_default = run(ours)
    ours.recompute_weights = not ours.recompute_weights  # v tables: weights kept vs recomputed in backward
    got_other = run(ours)
    ours.fused_attn = False
    got_eager = run(ours)
    for got in (got_default, got_other, got_eager):
        torch.testing.assert_close(got[0], want[0])
        for a, b in zip(got[1], want[1]):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("mode", MODES[:4], ids=lambda m: "-".join(map(str, m.values())))
def test_fused_inference_path_matches_reference(mode):
    ours, ref = _layers(mode)
    x = torch.randn(2, LS, 8)
    with torch.no_grad():
        fused = ours.kernel_for(torch.zeros(1), [torch.zeros(1, requires_grad=True)]) == "sdpa"
        assert fused == ("v" not in mode["on"])
        torch.testing.assert_close(ours(x), ref(x))


def test_kernel_choice_per_device():
    ours, _ = _layers(dict(mode="contextual", on="k"))
    q = torch.zeros(1, 2, LS, 4)
    grad_bias = [torch.zeros(1, requires_grad=True)]
    assert ours.kernel_for(q, grad_bias) == "core"  # CPU: the fused kernel has no mask gradient
    assert ours.kernel_for(q, [torch.zeros(1)]) == "sdpa"  # no gradient needed: fused
    with torch.no_grad():
        assert ours.kernel_for(q, grad_bias) == "sdpa"
    qkv, _ = _layers(dict(mode="contextual", on="qkv"))
    assert qkv.kernel_for(q, []) == "core"  # a v table needs the weights; CPU training: the hand-written backward
    qkv.core_backward = False  # what CUDA takes by default (autograd's backward measured faster there)
    assert qkv.kernel_for(q, []) == "eager"
    qkv.recompute_weights = True
    assert qkv.kernel_for(q, []) == "recompute"  # recomputing: the core on every device (faster than checkpointing)
    qkv.attn_drop.p = 0.1  # the core has no dropout: autograd's eager, checkpointed to recompute
    assert qkv.kernel_for(q, []) == "checkpoint"
    qkv.eval()
    assert qkv.kernel_for(q, []) == "eager"  # nothing to keep for a backward pass
    qkv.core_backward = "yes"
    with pytest.raises(ValueError, match=r"core_backward='yes'; allowed: None \(by device\), True, False"):
        qkv.kernel_for(q, [])
    ours.kernel = "sdpa"
    assert ours.kernel_for(q, grad_bias) == "sdpa"  # forced: SDPA's math fallback computes the gradient
    ours.kernel = "triton"
    with pytest.raises(ValueError, match=r"kernel='triton' cannot run here \(device cpu.*needs CUDA"):
        ours.kernel_for(q, grad_bias)
    ours.kernel = "flash"
    with pytest.raises(ValueError, match="kernel='flash'; allowed: auto, triton, sdpa, eager"):
        ours.kernel_for(q, grad_bias)


def test_forced_kernels_match_reference_on_cpu():
    """``kernel="sdpa"`` in training (SDPA's math fallback computes the mask gradient) equals the reference."""
    ours, ref = _layers(dict(mode="contextual", on="qk"))
    ours.kernel = "sdpa"
    x = torch.randn(2, LS, 8, requires_grad=True)
    got, want = ours(x), ref(x)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(got)
    for a, b in zip(torch.autograd.grad(got, [x, *ours.parameters()], g),
                    torch.autograd.grad(want, [x, *ref.parameters()], g)):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES[:4], ids=lambda m: "-".join(map(str, m.values())))
def test_cuda_bf16_autocast_close_to_fp32_reference(mode):
    """On CUDA under bf16 autocast SDPA (k, q: trainable mask) or eager (v) runs, close to the fp32 reference."""
    torch.set_default_dtype(torch.float32)  # the autouse fixture restores the default afterwards
    ours, ref = _layers(mode, dim=64)  # head_dim 32: a width the Triton kernel takes
    ours, ref = ours.cuda(), ref.cuda()
    x = torch.randn(4, LS, 64, device="cuda")
    bf16 = torch.zeros(1, 2, LS, 32, device="cuda", dtype=torch.bfloat16)
    bias = [torch.zeros(1, 1, LS, LS, device="cuda", dtype=torch.bfloat16, requires_grad=True)]
    assert ours.kernel_for(bf16, bias) == ("sdpa" if "v" not in mode["on"] else "eager")
    want = ref(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = ours(x)
    got.float().sum().backward()
    torch.testing.assert_close(got.float(), want, atol=5e-2, rtol=5e-2)
    for name, p in ours.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.gpu
@pytest.mark.parametrize("mode", [MODES[0], MODES[1], MODES[3]], ids=lambda m: "-".join(map(str, m.values())))
def test_cuda_triton_kernel_gradients_match_fp32_reference(mode):
    """The opt-in Triton path under bf16 autocast: output and every gradient (input, qkv, proj, tables) within
    bf16 rounding of the fp32 reference, by relative norm."""
    torch.set_default_dtype(torch.float32)
    ours, ref = _layers(mode, dim=128)  # head_dim 64, DeiT's
    ours, ref = ours.cuda(), ref.cuda()
    ours.kernel = "triton"
    x, g = torch.randn(8, LS, 128, device="cuda"), torch.randn(8, LS, 128, device="cuda")
    seen = []
    ours.kernel_for = (lambda f: lambda *a: seen.append(f(*a)) or seen[-1])(ours.kernel_for)

    def run(m, amp):
        xi = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = m(xi)
        return [out.float(), *torch.autograd.grad(out.float(), [xi, *m.parameters()], g)]

    got, want = run(ours, True), run(ref, False)
    assert seen == ["triton"]
    for a, b in zip(got, want):
        assert float((a - b).norm() / b.norm()) < 3e-2


@pytest.mark.parametrize("method", ["product", "cross"])
def test_query_side_term_is_the_transposed_key_side_term(method):
    """``transpose=True`` gives ``x_j · r[I(j, i)]`` directly in (query, key) layout, with its gradients."""
    ids, K = _ids(method)
    x = torch.randn(2, 3, L, 5, requires_grad=True)
    table = torch.randn(1, 5, K, requires_grad=True)
    g = torch.randn(2, 3, L, L)
    fast = _grads_with(lambda x, t: contextual_logits(x, t, ids, 0.3, transpose=True), g, x, table)
    naive = _grads_with(lambda x, t: 0.3 * torch.einsum("bhjd,hjid->bhij", x, _per_pair(t.transpose(1, 2), ids)),
                        g, x, table)
    assert fast[0].is_contiguous()
    torch.testing.assert_close(fast[0], naive[0])
    for a, b in zip(fast[1], naive[1]):
        torch.testing.assert_close(a, b)


@pytest.mark.gpu
@pytest.mark.parametrize("on", ["k", "qkv"])
def test_cuda_bf16_model_training_step(on):
    """A whole DeiT with iRPE trains one step on CUDA under bf16 autocast, close to the fp32 reference."""
    from irpe_bench.bench.reference import build_reference_model
    from irpe_bench.models import create_model

    torch.set_default_dtype(torch.float32)
    kw = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=10)
    ours = create_model("deit_tiny_patch16_224", rpe=RPEConfig(on=on), **kw).cuda()
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "lookup_table" in name:
                p.normal_(0, 0.5)
    ref = build_reference_model("deit_tiny_patch16_224", "product", rpe_on=on, **kw).cuda()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(4, 3, 16, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = ours(x)
    logits.float().sum().backward()
    torch.testing.assert_close(logits.float(), ref(x), atol=1e-1, rtol=1e-1)
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters() if p.grad is not None)
    assert ours.blocks[0].attn.rpe_k.lookup_table_weight.grad.abs().sum() > 0


# --- the attention core's hand-written backward (irpe_bench/models/attention_core.py), weights kept or recomputed ---

RECOMPUTE_CASES = [  # (method, key-side, query-side, value table, dense bias, heads of the tables)
    ("product", True, False, False, False, 1), ("cross", True, True, False, False, 1),
    ("product", False, False, True, False, 3), ("cross", True, True, True, True, 1),
    ("quant", True, False, True, False, 3), ("product", False, False, False, True, 3),
]


@pytest.mark.parametrize("recompute", [False, True], ids=["kept", "recomputed"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", RECOMPUTE_CASES, ids=lambda c: "-".join(map(str, c)))
def test_attention_core_matches_eager(case, dtype, recompute):
    """The hand-written backward (weights kept or recomputed): values and every gradient (q, k, v, both
    contextual tables, the value table, a dense bias) equal autograd through the eager form — scores, in-place
    terms, softmax, weights @ v, per-bucket value term. In float32 on the CPU, recomputing without a value table
    takes the fused forward (PyTorch's flash kernel with the terms as its mask)."""
    from irpe_bench.models import attention_core as core
    from irpe_bench.rpe import BucketTerm, bucket_index

    torch.set_default_dtype(dtype)
    method, on_k, on_q, on_v, dense, heads = case
    ids, K = _ids(method)
    q, k, v = (torch.randn(2, 3, L, 4, requires_grad=True) for _ in range(3))
    tk, tq = torch.randn(heads, 4, K, requires_grad=True), torch.randn(heads, 4, K, requires_grad=True)
    tv = torch.randn(heads, K, 4, requires_grad=True) if on_v else None
    bias = torch.randn(1, 3, L, L, requires_grad=True) if dense else None
    s = 0.5

    def eager(q, k, v, *_):
        terms = ([contextual_logits(q, tk, ids, s)] if on_k else []) + \
                ([contextual_logits(k, tq, ids, s, transpose=True)] if on_q else []) + ([bias] if dense else [])
        attn = attention_scores(q, k, terms, s).softmax(-1)
        return attn @ v + (contextual_values(attn, tv, ids) if on_v else 0)

    def custom(q, k, v, *_):
        terms = ([BucketTerm(q, tk, s, bucket_index(ids, K))] if on_k else []) + \
                ([BucketTerm(k, tq, s, bucket_index(ids, K, True))] if on_q else []) + \
                ([bias] if dense else [])
        return core.attention_core(q, k, v, terms, s, tv, ids, recompute_weights=recompute)

    inputs = [q, k, v] + [t for t, used in ((tk, on_k), (tq, on_q), (tv, on_v), (bias, dense)) if used]
    assert core._fused_forward(q) == (dtype == torch.float32)
    g = torch.randn(2, 3, L, 4)
    want, got = _grads_with(eager, g, *inputs), _grads_with(custom, g, *inputs)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}
    torch.testing.assert_close(got[0], want[0], **tol)
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a, b, **tol)


def test_attention_core_with_a_constant_mask_equals_eager():
    """An attention mask (a dense term without a gradient) beside a contextual term: same values and gradients
    as the eager form, and no gradient is formed for the mask."""
    from irpe_bench.models.attention_core import attention_core
    from irpe_bench.rpe import BucketTerm, bucket_index

    ids, K = _ids("product")
    q, k, v = (torch.randn(2, 3, L, 4, requires_grad=True) for _ in range(3))
    table = torch.randn(1, 4, K, requires_grad=True)
    mask = torch.randn(2, 1, L, L)
    g = torch.randn(2, 3, L, 4)
    want = _grads_with(lambda q, k, v, t: attention_scores(q, k, [contextual_logits(q, t, ids, 0.5), mask], 0.5)
                       .softmax(-1) @ v, g, q, k, v, table)
    for recompute in (False, True):
        def core(q, k, v, t):
            terms = [BucketTerm(q, t, 0.5, bucket_index(ids, K)), mask]
            return attention_core(q, k, v, terms, 0.5, recompute_weights=recompute)

        got = _grads_with(core, g, q, k, v, table)
        torch.testing.assert_close(got[0], want[0])
        for a, b in zip(got[1], want[1]):
            torch.testing.assert_close(a, b)


def _saved_shapes(fn):
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        fn()
    return shapes


@pytest.mark.parametrize("core", [None, False], ids=["core", "autograd"])
@pytest.mark.parametrize("on", ["k", "qkv"])
def test_recompute_weights_keeps_no_batch_sized_square_tensor(on, core):
    """What the memory saving rests on: with ``recompute_weights`` nothing (B, H, L, L) is saved for the
    backward pass (eager keeps the softmax output), so the peak no longer grows with B·H·L²; the same values
    and gradients as keeping the weights through the hand-written backward (CPU's default) or autograd's
    (CUDA's)."""
    ours, _ = _layers(dict(mode="contextual", on=on))
    ours.train()
    ours.core_backward = core
    x = torch.randn(5, LS, 8, requires_grad=True)
    square = (5, 2, LS, LS)
    assert square in _saved_shapes(lambda: ours(x))
    g = torch.randn(5, LS, 8)
    want = _grads_with(lambda x, *_: ours(x), g, x, *ours.parameters())
    ours.recompute_weights = True
    assert ours.kernel_for(x, [torch.zeros(1, requires_grad=True)]) == "recompute"
    assert square not in _saved_shapes(lambda: ours(x))
    got = _grads_with(lambda x, *_: ours(x), g, x, *ours.parameters())
    torch.testing.assert_close(got[0], want[0])
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a, b)


def test_recompute_weights_with_attention_dropout_checkpoints_the_same_mask():
    """With attention dropout the backward needs the forward's random mask: the layer checkpoints the eager
    form (RNG state restored), so outputs and gradients equal eager's under the same seed."""
    ours, _ = _layers(dict(mode="contextual", on="qkv"))
    ours.attn_drop.p = 0.3
    ours.train()
    x = torch.randn(2, LS, 8, requires_grad=True)
    results = []
    for recompute in (False, True):
        ours.recompute_weights = recompute
        torch.manual_seed(7)
        out = ours(x)
        results.append((out, torch.autograd.grad(out.square().sum(), [x, *ours.parameters()])))
    torch.testing.assert_close(results[1][0], results[0][0])
    for a, b in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_attention_core_under_bf16_autocast_close_to_autograd_eager(device):
    """Under bf16 autocast the matmuls run in bf16 and the softmax statistics in fp32, as eager's: the attention
    core (weights kept or recomputed) is close to autograd through the eager form under the same autocast,
    gradients included, and every gradient is in its parameter's dtype."""
    torch.set_default_dtype(torch.float32)
    ours, _ = _layers(dict(mode="contextual", on="qkv"), dim=32)
    ours = ours.to(device).train()
    x = torch.randn(4, LS, 32, device=device)
    seen = []

    def run(recompute=None):
        if recompute is None:  # autograd through the eager form, as with attention dropout
            ours.attend = lambda q, k, v, b, m=None: ours._eager(
                q, k, v, attention_logits_terms(ours.rpe_q, ours.rpe_k, q, k, ours.scale, b.ids), b)
        else:
            ours.__dict__.pop("attend", None)
            ours.recompute_weights = recompute
            ours.core_backward = True  # NOTE: CUDA's default is autograd's backward; this checks the core there too
            seen.append(ours.kernel_for(x, [torch.zeros(1, requires_grad=True)]))
        with torch.autocast(device, dtype=torch.bfloat16):
            out = ours(x)
        grads = torch.autograd.grad(out.float().square().sum(), list(ours.parameters()))
        assert all(gr.dtype == p.dtype for gr, p in zip(grads, ours.parameters()))
        return [out.float(), *grads]

    want = run()
    for recompute in (False, True):
        for a, b in zip(run(recompute), want):
            assert float((a - b).norm() / b.norm().clamp_min(1e-6)) < 2e-2
    assert seen == ["core", "recompute"]
