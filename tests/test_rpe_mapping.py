"""2D mappings (paper Eq. 19–25): golden tables of reference §4.3, bucket counts, properties."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from irpe_bench.bench.reference import official_bucket_ids
from irpe_bench.rpe import MAPPINGS, RPEConfig, bucket_ids, get_mapping, num_buckets, offset_ids, offset_slots

OFFICIAL = {"euclidean": "euc", "quant": "quant", "product": "product"}


def ids_for(method, ratio=1.9, h=14, w=14, prefix=1, index="piecewise"):
    return bucket_ids(method, index, ratio, 2 * ratio, 8 * ratio, h, w, prefix)


def test_product_golden_table_14x14():
    """Reference §4.3: the checkpoint sanity values of the official product mapping at r = 1.9."""
    ids = ids_for("product")[0]
    pos = lambda r, c: 1 + 14 * r + c  # noqa: E731  (token index after the class token)
    assert ids.shape == (197, 197)
    assert ids[pos(5, 5), pos(5, 5)] == 24
    assert ids[pos(1, 0), pos(0, 0)] == 31
    assert ids[pos(0, 0), pos(1, 0)] == 17
    assert ids[pos(0, 13), pos(13, 0)] == 6
    assert (ids[0] == 49).all() and (ids[:, 0] == 49).all()
    assert int(ids.sum()) == 941_241
    assert int((ids == 24).sum()) == 196
    assert [int((ids == c).sum()) for c in (0, 6, 42, 48)] == [3025] * 4


@pytest.mark.parametrize("method, ratio, used, table", [
    ("euclidean", 20, 20, [82]),
    ("quant", 33, 51, [134]),
    ("cross", 20, 56, [82, 82]),
    ("product", 1.9, 50, [50]),
    ("quant_rank", 33, 51, [134]),
])
def test_official_model_names_count_used_buckets(method, ratio, used, table):
    """euc_20 / quant_51 / cross_56 / product_50 count the buckets used on 14×14, skip included (§2.3)."""
    ids = ids_for(method, ratio)
    assert ids.unique().numel() == used
    assert list(num_buckets(method, 2 * ratio, 1)) == table
    assert int(ids.min()) >= 0 and int(ids.max()) < sum(table)


@pytest.mark.parametrize("method", ["euclidean", "quant", "product"])
@pytest.mark.parametrize("ratio", [1.9, 2.0, 3.5, 20.0])
def test_ids_equal_the_official_algorithm(method, ratio):
    ref, nb = official_bucket_ids(OFFICIAL[method], 14, 14, 1, ratio, 2 * ratio, 8 * ratio)
    assert torch.equal(ids_for(method, ratio)[0], ref)
    assert num_buckets(method, 2 * ratio, 1) == (nb,)


def test_cross_components_equal_the_official_rows_and_cols():
    rows, nb = official_bucket_ids("cross_rows", 14, 14, 1, 20, 40, 160)
    cols, _ = official_bucket_ids("cross_cols", 14, 14, 1, 20, 40, 160)
    ids = ids_for("cross", 20)
    assert torch.equal(ids[0], rows) and torch.equal(ids[1], cols + nb)  # cols index the second table


grids = st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(0, 3))
ratios = st.sampled_from([0.5, 1.0, 1.9, 2.5, 3.5, 20.0])


@settings(max_examples=60, deadline=None)
@given(method=st.sampled_from(sorted(MAPPINGS)), grid=grids, ratio=ratios, index=st.sampled_from(["piecewise", "clip"]))
def test_mapping_properties(method, grid, ratio, index):
    h, w, p = grid
    ids = ids_for(method, ratio, h, w, p, index)
    sizes = num_buckets(method, 2 * ratio, p)
    mapping = get_mapping(method)
    L = p + h * w
    assert ids.shape == (mapping.num_components, L, L) and ids.dtype == torch.long
    start = 0
    for c, size in enumerate(sizes):  # each component indexes its own slice of the concatenated table
        assert int(ids[c].min()) >= start and int(ids[c].max()) < start + size
        if p:
            assert (ids[c, :p] == start + size - 1).all() and (ids[c, :, :p] == start + size - 1).all()
            assert int((ids[c, p:, p:] == start + size - 1).sum()) == 0, "prefix bucket is reserved"
        start += size
    patch = ids[:, p:, p:].reshape(-1, h, w, h, w)
    # translation invariance: ids depend only on the offset, so shifting both positions keeps the id
    if h > 1:
        assert torch.equal(patch[:, 1:, :, 1:, :], patch[:, :-1, :, :-1, :])
    if w > 1:
        assert torch.equal(patch[:, :, 1:, :, 1:], patch[:, :, :-1, :, :-1])
    if not mapping.directed:
        assert torch.equal(ids, ids.transpose(-1, -2)), "undirected methods are symmetric"


def test_directed_methods_distinguish_opposite_offsets():
    for method in ("cross", "product"):
        ids = ids_for(method, 1.9, 4, 4, 0)
        assert not torch.equal(ids, ids.transpose(-1, -2))


def test_non_square_grid_uses_true_rows_and_cols():
    """3×5: token 4 is (0, 4) and token 5 is (1, 0); a √L guess would put both on row 1 of a 3×3 grid."""
    ids = ids_for("product", 1.9, 3, 5, 1)[0]
    g = {0: 0, 1: 1, 2: 2, 3: 2, 4: 3}  # piecewise at r = 1.9 (reference §2.2), odd
    for i in range(15):
        for j in range(15):
            (ri, ci), (rj, cj) = divmod(i, 5), divmod(j, 5)
            dr, dc = ri - rj, ci - cj
            gr, gc = g[abs(dr)] * (1 if dr >= 0 else -1), g[abs(dc)] * (1 if dc >= 0 else -1)
            assert ids[1 + i, 1 + j] == 24 + 7 * gr + gc


def test_bucket_count_follows_ratio():
    """Reference §1.4: product bucket count (2·int(2r)+1)² + 1."""
    assert [RPEConfig(ratio=r).num_buckets()[0] for r in (1.0, 1.5, 1.9, 2.0, 2.5, 3.0)] == [26, 50, 50, 82, 122, 170]


def test_unknown_mapping_names_choices():
    with pytest.raises(ValueError, match=r"unknown mapping 'polar'; choices: \['cross', 'euclidean', "):
        get_mapping("polar")


@pytest.fixture
def rows_only():
    """A user-defined mapping, registered for one test and removed after it."""
    from irpe_bench.rpe import Mapping, register_mapping

    @register_mapping("rows_only")
    class RowsOnly(Mapping):
        directed = True

        def ids(self, diff, g, beta):
            return (g(diff[..., 0]) + int(beta)).unsqueeze(0)

    yield "rows_only"
    del MAPPINGS["rows_only"]


def test_a_registered_mapping_plugs_into_config_and_model(rows_only):
    from irpe_bench.models import create_model

    cfg = RPEConfig(method=rows_only, ratio=1.9)
    assert cfg.num_buckets() == (8,) and cfg.slug() == "ctx_rows_only_8_shared_k"
    ids = ids_for(rows_only, 1.9, 3, 4, 1)[0]
    assert ids[1 + 0, 1 + 4].item() == 3 - 1  # query row 0, key row 1: g(-1) + 3
    model = create_model("deit_tiny_patch16_224", img_size=12, patch_size=4, embed_dim=16, depth=1, num_heads=2,
                         num_classes=2, rpe=cfg)
    assert model.blocks[0].attn.rpe_k.table.shape == (1, 16 // 2, 8)
    assert model(torch.randn(1, 3, 12, 12)).shape == (1, 2)


def _slot(h, w, prefix):
    """(L, L) slot of every token pair, written out: prefix rows/cols → last slot; patches → their offset's."""
    n = torch.arange(h * w)
    r, c = n // w, n % w
    slot = torch.full((prefix + h * w,) * 2, (2 * h - 1) * (2 * w - 1))
    slot[prefix:, prefix:] = (r[:, None] - r[None, :] + h - 1) * (2 * w - 1) + c[:, None] - c[None, :] + w - 1
    return slot


@pytest.mark.parametrize("method", sorted(MAPPINGS))
@pytest.mark.parametrize("h, w, prefix", [(5, 7, 1), (4, 4, 0), (3, 6, 2), (1, 5, 1)])
def test_offset_ids_reproduce_every_bucket_id(method, h, w, prefix):
    """The per-offset table (what the fused kernel reads) gives I(i, j) of every pair, prefix bucket included,
    and its patch slots reversed give I(j, i)."""
    ids = ids_for(method, 1.9, h, w, prefix)
    off = offset_ids(ids, h, w, prefix)
    assert off.dtype == torch.int32 and off.shape == (ids.shape[0], offset_slots(h, w))
    slot = _slot(h, w, prefix)
    assert torch.equal(off[:, slot].long(), ids)
    reversed_ = torch.cat([off[:, :-1].flip(-1), off[:, -1:]], dim=1)
    assert torch.equal(reversed_[:, slot].long(), ids.transpose(-1, -2))
