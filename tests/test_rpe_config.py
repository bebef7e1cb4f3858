"""RPEConfig: every bad configuration fails at construction with a message naming field, value and choices."""
import pytest
from pydantic import ValidationError

from irpe_bench.rpe import RPEConfig


def test_defaults_are_the_papers():
    c = RPEConfig()
    assert (c.method, c.mode, c.index, c.on, c.shared_head, c.layers) == ("product", "contextual", "piecewise", "k",
                                                                          True, "all")
    assert (c.ratio, c.alpha, c.beta, c.gamma) == (1.9, 1.9, 3.8, 15.2)
    assert c.num_buckets() == (50,) and c.slug() == "ctx_product_50_shared_k"


def test_explicit_coefficients_and_round_trip():
    c = RPEConfig(alpha=2.5, beta=5, gamma=21, on="vkq", layers=[3, 1])
    assert (c.ratio, c.alpha, c.beta, c.gamma, c.on, c.layers) == (None, 2.5, 5.0, 21.0, "qkv", (1, 3))
    assert RPEConfig(**c.model_dump()) == c
    assert RPEConfig(**RPEConfig(ratio=2.5).model_dump()) == RPEConfig(ratio=2.5)
    assert c.slug() == "ctx_product_122_a2.5b5g21_shared_qkv_L1-3"
    assert RPEConfig(method="cross", ratio=20, index="clip", shared_head=False, mode="bias").slug() == \
        "bias_cross_164_r20_clip_unshared_k"


def test_with_updates_switches_between_ratio_and_coefficients():
    c = RPEConfig(alpha=2.5, beta=5, gamma=21)
    assert c.with_updates(ratio=3.0).beta == 6.0
    assert RPEConfig().with_updates(alpha=4, beta=5, gamma=20).ratio is None
    assert RPEConfig().with_updates(alpha=3, beta=6, gamma=24) == RPEConfig(ratio=3)


@pytest.mark.parametrize("ratio, abg", [(1.9, (1.9, 3.8, 15.2)), (2.5, (2.5, 5, 20)), (0.7 * 3, (2.1, 4.2, 16.8)),
                                        (1.3, (1.3, 2.6, 10.4 + 1e-12))])
def test_explicit_coefficients_in_ratio_proportions_are_that_ratio(ratio, abg):
    """``ratio=r`` and the explicit ``r:2r:8r`` are one model: equal configs, dumps, slugs and config keys (they
    once named two leaderboard rows). Equal up to float rounding (0.7 * 3 = 2.0999999999999996)."""
    from irpe_bench.sweep.objective import config_key
    from irpe_bench.train.config import build_config, flatten

    a, b = RPEConfig(ratio=ratio), RPEConfig(**dict(zip(("alpha", "beta", "gamma"), abg)))
    assert b.ratio == pytest.approx(ratio) and (b.beta, b.gamma) == (2 * b.ratio, 8 * b.ratio)
    assert b.slug() == RPEConfig(ratio=abg[0]).slug()
    if ratio == abg[0]:
        assert a == b and a.model_dump() == b.model_dump() and a.slug() == b.slug()
    keys = [config_key(flatten(build_config({"model": {"rpe": rpe}}).model_dump(mode="json")))
            for rpe in ({"ratio": abg[0]}, dict(zip(("alpha", "beta", "gamma"), abg)))]
    assert keys[0] == keys[1]
    assert RPEConfig(ratio=1.9).slug() == "ctx_product_50_shared_k"  # the default ratio names nothing
    assert RPEConfig(alpha=1.9, beta=3.8, gamma=15.3).ratio is None  # not in proportion: stays explicit


def test_frozen():
    with pytest.raises(ValidationError):
        RPEConfig().mode = "bias"


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(mode="bias", on="kv"), r"mode='bias' with on='kv'.*only on q and k"),
    (dict(alpha=6, beta=5, gamma=20), r"alpha=6 > beta=5"),
    (dict(alpha=2, beta=5, gamma=2), r"gamma=2: must be > alpha=2"),
    (dict(alpha=2, beta=5, gamma=5), r"gamma=5: must be > alpha=2 and > beta=5"),
    (dict(alpha=0.2, beta=0.5, gamma=4), r"beta=0.5: must be >= 1"),
    (dict(ratio=0.4), r"beta=0.8: must be >= 1"),
    (dict(ratio=-1), r"ratio=-1: must be a number > 0"),
    (dict(alpha=0, beta=2, gamma=8), r"alpha=0: must be > 0"),
    (dict(method="polar"), r"unknown mapping 'polar'; choices: \['cross', 'euclidean', 'product', 'quant', "),
    (dict(index="tanh"), r"unknown index function 'tanh'; choices: \['clip', 'piecewise'\]"),
    (dict(mode="ctx"), r"mode\n.*Input should be 'bias' or 'contextual'.*input_value='ctx'"),
    (dict(on=""), r"on='': must be a non-empty subset of 'qkv'"),
    (dict(on="kx"), r"on='kx': must be a non-empty subset of 'qkv'"),
    (dict(on="kk"), r"on='kk': must be a non-empty subset of 'qkv' without repeats"),
    (dict(layers=[]), r"layers=\[\]: must be 'all' or a non-empty list"),
    (dict(layers=[1, 1]), r"layers=\[1, 1\]: block indices must not repeat"),
    (dict(layers=[-1]), r"layers=\[-1\]: block indices must be integers >= 0"),
    (dict(layers="some"), r"layers='some': must be 'all'"),
    (dict(ratio=2.0, beta=4), r"give either ratio=2.0 or alpha/beta/gamma \(beta given\), not both"),
    (dict(alpha=2.0, beta=4), r"alpha, beta and gamma must be given together; missing: gamma"),
    (dict(heads=3), r"heads\n.*Extra inputs are not permitted"),
    (dict(shared_head="maybe"), r"shared_head\n.*valid boolean"),
])
def test_bad_config_fails_fast_with_a_clear_message(kwargs, pattern):
    with pytest.raises(ValidationError, match=pattern):
        RPEConfig(**kwargs)


def test_layer_index_beyond_depth():
    with pytest.raises(ValueError, match=r"layers=\[2, 14\]: index 14 is out of range for a model with depth=12 "
                                         r"\(allowed: 0..11\)"):
        RPEConfig(layers=[2, 14]).layer_indices(12)
    assert RPEConfig(layers=[0, 11]).layer_indices(12) == (0, 11)
    assert RPEConfig().layer_indices(3) == (0, 1, 2)
