"""Index functions (paper Eq. 9 and 18): properties and the worked values of reference §2.2."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from irpe_bench.bench.reference import official_piecewise_index
from irpe_bench.rpe import INDEX_FUNCTIONS, get_index
from irpe_bench.rpe.index import clip, piecewise, register_index

# (alpha, beta, gamma) with alpha <= beta < gamma, beta >= 1: paper ratios and the shapes users sweep
coefficients = st.one_of(
    st.floats(0.5, 12.0).map(lambda r: (r, 2 * r, 8 * r)),
    st.sampled_from([(2.5, 5.0, 20.0), (4.0, 5.0, 20.0), (2.5, 5.0, 10.0), (1.0, 1.0, 2.0)]),
    st.tuples(st.floats(0.2, 10), st.floats(0, 10), st.floats(0.1, 40)).map(
        lambda t: (t[0], max(1.0, t[0] + t[1]), max(1.0, t[0] + t[1]) + t[2])
    ),
)
offsets = st.lists(st.integers(-400, 400), min_size=1, max_size=64).map(lambda v: torch.tensor(v))


def _g(name, x, c):
    return get_index(name)(x, *c)


@pytest.mark.parametrize("r, expected", [
    (1.9, [0, 1, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3]),
    (2.0, [0, 1, 2, 2, 3, 3, 3, 3, 3, 3, 4, 4, 4, 4]),
    (3.5, [0, 1, 2, 3, 4, 4, 4, 5, 5, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7]),
])
def test_piecewise_worked_values(r, expected):
    """Reference §2.2, computed from the official integer path."""
    x = torch.arange(len(expected))
    assert piecewise(x, r, 2 * r, 8 * r).tolist() == expected
    assert piecewise(-x, r, 2 * r, 8 * r).tolist() == [-e for e in expected]


def test_clip_differs_from_piecewise_only_at_three_for_default_ratio():
    x = torch.arange(-13, 14)
    p, c = piecewise(x, 1.9, 3.8, 15.2), clip(x, 1.9, 3.8, 15.2)
    assert c.tolist() == x.clamp(-3, 3).tolist()
    assert sorted(x[p != c].abs().unique().tolist()) == [3]


@settings(max_examples=200, deadline=None)
@given(coefficients, offsets)
def test_piecewise_matches_the_official_algorithm(c, x):
    b = int(c[1])  # where float32(beta) rounds up past int(beta) the official ids overflow their table; we clamp
    assert torch.equal(piecewise(x, *c), official_piecewise_index(x, *c).clamp(-b, b))
    xf = x.float() / 3  # float inputs (Euclidean distances) are rounded first
    assert torch.equal(piecewise(xf, *c), official_piecewise_index(xf, *c).clamp(-b, b))


def test_float32_beta_rounding_cannot_overflow_the_table():
    r = 1.9999999999999982  # beta = 3.9999999999999964 becomes 4.0 in float32
    assert official_piecewise_index(torch.tensor([10]), r, 2 * r, 8 * r).item() == 4  # the official quirk
    assert piecewise(torch.tensor([10, -10]), r, 2 * r, 8 * r).tolist() == [3, -3]


@pytest.mark.parametrize("name", sorted(INDEX_FUNCTIONS))
@settings(max_examples=100, deadline=None)
@given(c=coefficients, x=offsets)
def test_index_function_properties(name, c, x):
    alpha, beta, gamma = c
    y = _g(name, x, c)
    assert y.dtype == torch.long and y.shape == x.shape
    assert torch.equal(_g(name, -x, c), -y), "odd symmetry"
    assert int(y.abs().max()) <= int(beta), "bounded by int(beta)"
    order = x.argsort()
    assert bool((y[order].diff() >= 0).all()), "monotone non-decreasing"
    near = x.abs() <= (alpha if name == "piecewise" else int(beta))
    assert torch.equal(y[near], x[near]), "identity near zero"


@settings(max_examples=100, deadline=None)
@given(coefficients)
def test_piecewise_reaches_int_beta_by_gamma(c):
    alpha, beta, gamma = c
    far = torch.tensor([math.ceil(gamma) + 1, 10 * math.ceil(gamma)])
    assert piecewise(far, *c).tolist() == [int(beta), int(beta)]


def test_unknown_index_function_names_choices():
    with pytest.raises(ValueError, match=r"unknown index function 'tanh'; choices: \['clip', 'piecewise'\]"):
        get_index("tanh")


def test_register_index_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_index("piecewise")(piecewise)
