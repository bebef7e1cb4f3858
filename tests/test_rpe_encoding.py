"""Efficient iRPE terms (Eq. 26–28 and the per-bucket value path) against a plain O(L²·d) reference."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from irpe_bench.rpe import (
    RelativePositionEncoding,
    RPEConfig,
    bias_logits,
    bucket_ids,
    contextual_logits,
    contextual_values,
)


def plain_table(table, ids, bucket_dim):
    """r[I(i, j)] materialised for every pair, components summed: the O(L²·d) form of Eq. 15/17."""
    return sum(table.index_select(bucket_dim, ids[c].flatten()).unflatten(bucket_dim, ids.shape[1:])
               for c in range(ids.shape[0]))


def plain_contextual_logits(x, table, ids, scale=1.0):
    return scale * torch.einsum("bhid,hdij->bhij", x, plain_table(table, ids, 2).expand(x.shape[1], -1, -1, -1))


def plain_values(attn, table, ids):
    return torch.einsum("bhij,hijd->bhid", attn, plain_table(table, ids, 1).expand(attn.shape[1], -1, -1, -1))


cases = st.fixed_dictionaries({
    "method": st.sampled_from(["euclidean", "quant", "quant_rank", "cross", "product"]),
    "h": st.integers(1, 5), "w": st.integers(1, 5), "prefix": st.integers(0, 2),
    "batch": st.integers(1, 3), "heads": st.integers(1, 3), "dim": st.integers(1, 8),
    "shared": st.booleans(), "ratio": st.sampled_from([0.6, 1.0, 1.9, 3.0]),
})


def _setup(case, table_shape_fn):
    g = torch.Generator().manual_seed(0)
    ids = bucket_ids(case["method"], "piecewise", case["ratio"], 2 * case["ratio"], 8 * case["ratio"],
                     case["h"], case["w"], case["prefix"])
    K = sum(RPEConfig(method=case["method"], ratio=case["ratio"]).num_buckets(case["prefix"]))
    L = ids.shape[-1]
    hr = 1 if case["shared"] else case["heads"]
    table = torch.randn(table_shape_fn(hr, case["dim"], K), generator=g, dtype=torch.float64, requires_grad=True)
    return ids, L, table, g


@settings(max_examples=40, deadline=None)
@given(cases, st.sampled_from([1.0, 0.125]))
def test_contextual_logits_equal_plain_reference_with_gradients(case, scale):
    ids, L, table, g = _setup(case, lambda hr, d, k: (hr, d, k))
    x = torch.randn(case["batch"], case["heads"], L, case["dim"], generator=g, dtype=torch.float64, requires_grad=True)
    fast, plain = contextual_logits(x, table, ids, scale), plain_contextual_logits(x, table, ids, scale)
    torch.testing.assert_close(fast, plain)
    go = torch.randn_like(fast)
    assert_same_grads(fast, plain, go, (x, table))


@settings(max_examples=40, deadline=None)
@given(cases)
def test_contextual_values_equal_plain_reference_with_gradients(case):
    ids, L, table, g = _setup(case, lambda hr, d, k: (hr, k, d))
    attn = torch.randn(case["batch"], case["heads"], L, L, generator=g, dtype=torch.float64).softmax(-1)
    attn.requires_grad_(True)
    fast, plain = contextual_values(attn, table, ids), plain_values(attn, table, ids)
    torch.testing.assert_close(fast, plain)
    assert_same_grads(fast, plain, torch.randn_like(fast), (attn, table))


@settings(max_examples=30, deadline=None)
@given(cases)
def test_bias_logits_equal_plain_reference_with_gradients(case):
    ids, L, table, g = _setup(case, lambda hr, d, k: (hr, k))
    fast = bias_logits(table, ids)
    plain = sum(table[:, ids[c]] for c in range(ids.shape[0])).unsqueeze(0)
    torch.testing.assert_close(fast, plain)
    assert_same_grads(fast, plain, torch.randn_like(fast), (table,))


def assert_same_grads(fast, plain, grad_out, inputs):
    gf = torch.autograd.grad(fast, inputs, grad_out, retain_graph=True)
    gp = torch.autograd.grad(plain, inputs, grad_out)
    for a, b in zip(gf, gp):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("on, mode, shape", [
    ("k", "contextual", (1, 8, 50)), ("v", "contextual", (1, 50, 8)), ("q", "bias", (1, 50)),
])
def test_tables_are_zero_initialised_with_official_shapes(on, mode, shape):
    """Two prefix tokens (class + distillation) still share one extra bucket: 7×7 + 1."""
    rpe = RelativePositionEncoding(RPEConfig(on=on, mode=mode), on, 4, 8, num_prefix_tokens=2)
    assert tuple(rpe.table.shape) == shape
    assert not rpe.table.any()
    unshared = RelativePositionEncoding(RPEConfig(shared_head=False, mode=mode, on=on), on, 4, 8, 1)
    assert unshared.table.shape[0] == 4


def test_bias_mode_on_values_is_refused_by_the_module_too():
    with pytest.raises(ValueError, match="mode='bias' on v does not exist"):
        RelativePositionEncoding(RPEConfig(mode="bias"), "v", 4, 8, 1)


def test_gather_lookup_matches_torch_gather_and_keeps_only_the_index():
    """The custom lookup (``GatherFlat``) is torch.gather in value and gradient, and saves no copy of z."""
    from irpe_bench.rpe.encoding import GatherFlat

    g = torch.Generator().manual_seed(0)
    z = torch.randn(6, 40, generator=g, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 40, (25,), generator=g).expand(6, -1)
    assert torch.autograd.gradcheck(lambda t: GatherFlat.apply(t, index), (z,))
    assert torch.equal(GatherFlat.apply(z, index), torch.gather(z, 1, index))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        GatherFlat.apply(z * 1.0, index).sum().backward()
    assert [tuple(t.shape) for t in saved] == [(6, 25)] and saved[0].stride(0) == 0  # the expanded index only
