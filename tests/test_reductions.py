"""The reductions in a defined order (uniopt._math.sum_pairwise, norm, trust_ratio).

Expected values come from Python: exact integer sums, the pairing order written out by hand and
evaluated in NumPy float32 scalars, math.fsum in float64, and each framework's documented trust-ratio
rule. The backends' agreement is checked in the conformance matrix (every Lamb cell bitwise) and in
each adapter's bitwise tests; here NumPy and array_api_strict must agree bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from namespaces import NAMESPACES, to_namespace, to_numpy

from uniopt._math import norm, squared, sum_pairwise, trust_ratio
from uniopt._spec import namespace_of


def _numpy(value) -> np.ndarray:
    """A 0-d result as a NumPy array (NumPy's ufuncs return scalars for 0-d inputs)."""
    return np.asarray(value) if isinstance(value, (np.ndarray, np.generic)) else to_numpy(value)


def _xp(name: str, array: np.ndarray):
    x = to_namespace(name, array)
    return x, namespace_of(x)


@pytest.mark.parametrize("ns", NAMESPACES)
@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 17, 100, 1000, 1023, 1025])
def test_a_sum_of_integers_is_exact_for_every_length(ns, n):
    x, xp = _xp(ns, np.arange(1, n + 1, dtype=np.float64))
    total = _numpy(sum_pairwise(x, xp))
    assert total.shape == ()
    assert float(total) == n * (n + 1) // 2


def test_the_pairing_order_is_the_documented_one():
    """Five float32 values where every order gives other bits: h = 4 pairs x0 with x4, then h = 2
    pairs (x0+x4) with x2 and x1 with x3, then the two."""
    f = np.float32
    x = np.array([1.0, 3e-8, 1e8, -1e8, 7e-8], dtype=np.float32)
    a, b, c, d, e = (f(v) for v in x)
    expected = f(f(f(a + e) + c) + f(b + d))
    assert expected != f(np.sum(x)) or expected != f(sum(x.tolist()))  # order matters here
    got = sum_pairwise(x, namespace_of(x))
    assert got.dtype == np.float32
    assert got.tobytes() == np.asarray(expected).tobytes()


@pytest.mark.parametrize("shape", [(7, 5), (2, 3, 4), (1,), ()])
def test_a_sum_reads_every_element_of_any_shape(shape):
    x = np.arange(math.prod(shape), dtype=np.float64).reshape(shape) + 0.5
    assert float(sum_pairwise(x, namespace_of(x))) == math.fsum(x.ravel().tolist())


def test_a_single_negative_zero_is_kept_and_an_empty_sum_is_positive_zero():
    one = sum_pairwise(np.array([-0.0], np.float32), namespace_of(np.zeros(1)))
    assert np.signbit(one)
    empty = sum_pairwise(np.zeros((0, 3), np.float32), namespace_of(np.zeros(1)))
    assert empty == 0 and not np.signbit(empty) and empty.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # array_api_strict has no float16
def test_numpy_and_array_api_strict_give_the_same_bits(dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(3001) * 10.0 ** rng.uniform(-3, 3, 3001)).astype(dtype)
    results = []
    for ns in NAMESPACES:
        a, xp = _xp(ns, x)
        results.append(_numpy(norm(a, xp)).tobytes())
    assert results[0] == results[1]


def test_the_norm_is_within_pairwise_rounding_of_the_exact_one():
    rng = np.random.default_rng(1)
    for n in (10, 1000, 100_000):
        x = rng.standard_normal(n).astype(np.float32)
        exact = math.sqrt(math.fsum((x.astype(np.float64) ** 2).tolist()))
        got = float(norm(x, namespace_of(x)))
        # pairwise: at most ceil(log2 n) + 2 roundings of 2**-24 each, relative
        assert abs(got - exact) <= (math.ceil(math.log2(n)) + 2) * 2.0**-24 * exact


@pytest.mark.parametrize(
    ("p_norm", "u_norm", "optax", "keras"),
    [
        (3.0, 1.5, 2.0, 2.0),
        (0.0, 1.5, 1.0, 1.0),  # a zero parameter: the ratio is 1 (both frameworks)
        (3.0, 0.0, 1.0, 1.0),  # a zero update
        (0.0, 0.0, 1.0, 1.0),
        (math.nan, 1.5, math.nan, 1.0),  # optax: NaN == 0 is false, the quotient is taken
        (3.0, math.nan, math.nan, 1.0),  # Keras: NaN > 0 is false, the ratio is 1
        (math.inf, 2.0, math.inf, math.inf),
    ],
)
def test_the_trust_ratio_follows_each_framework(p_norm, u_norm, optax, keras):
    xp = namespace_of(np.zeros(1))
    args = (np.float32(p_norm), np.float32(u_norm))
    for value, expected in ((trust_ratio(*args, xp), optax), (trust_ratio(*args, xp, keras=True), keras)):
        assert value.dtype == np.float32
        if math.isnan(expected):
            assert np.isnan(value)
        else:
            assert value == np.float32(expected)


def _halving_by_hand(values: list[np.floating]) -> np.floating:
    """The documented order written out on Python lists of NumPy scalars (no array op)."""
    while len(values) > 1:
        n = len(values)
        h = 1 << ((n - 1).bit_length() - 1)
        values = [values[i] + values[i + h] for i in range(n - h)] + values[n - h : h]
    return values[0]


@pytest.mark.parametrize("ns", NAMESPACES)
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9, 31, 33, 1000, 1025])
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_of_sums_the_function_values_in_the_documented_order(ns, n):
    """``of=`` (applied on the first halving's slices) gives the sum of ``of(x)`` in the order
    written out by hand: squares, and the identity on signed zeros, infinities, NaN, subnormals."""
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-20, 20, n)).astype(np.float32)
    special = np.array([-0.0, 0.0, 1e-45, -1e-45, np.inf, np.nan], np.float32)
    for values in (x, np.resize(special[:2], n), np.resize(special, n)):
        a, xp = _xp(ns, values)
        squares = _numpy(sum_pairwise(a, xp, of=squared(xp)))
        want = _halving_by_hand([v * v for v in values])
        assert squares.tobytes() == np.asarray(want, np.float32).tobytes(), (n, values[:6])
        same = _numpy(sum_pairwise(a, xp, of=lambda t: t))
        assert same.tobytes() == np.asarray(_halving_by_hand(list(values)), np.float32).tobytes()


def test_of_is_applied_to_each_element_once():
    seen = []

    def count(t):
        seen.append(int(t.shape[0]))
        return t

    for n in (1, 2, 7, 16, 100):
        seen.clear()
        sum_pairwise(np.ones(n, np.float32), namespace_of(np.zeros(1)), of=count)
        assert sum(seen) == n, (n, seen)


def test_a_float16_norm_accumulates_in_float32():
    """A float16 sum of squares overflows above 65,504 (76,800 squares of about 1 here): the norm is
    summed in float32 and rounded once, so it is NumPy's float64 norm rounded to float16."""
    import array_api_compat.numpy as xnp

    x = np.random.default_rng(5).standard_normal((256, 300)).astype(np.float16)
    got = norm(x, xnp)
    assert got.dtype == np.float16
    assert float(got) == float(np.float16(np.linalg.norm(x.astype(np.float64))))


@pytest.mark.parametrize("convention", ["uniopt", "keras", "optax"])
def test_lamb_in_float16_past_its_range_takes_the_step_by_hand(convention):
    """LAMB's first step on a constant float16 (256, 300) parameter 0.5 with gradient 1: Adam's
    direction u = 1/(1 + eps) = 1 in float16, ||u|| = sqrt(76800) (its sum of squares overflows
    float16), ||p|| = ||u||/2, so the trust ratio is 1/2 and p = 0.5 - lr/2, by hand."""
    import array_api_compat.numpy as xnp

    import uniopt

    spec = uniopt.Lamb(convention=convention, lr=1e-3, weight_decay=0.0)
    p = np.full((256, 300), 0.5, np.float16)
    g = np.ones((256, 300), np.float16)
    (new,), _ = spec.update([g], spec.init([p], xnp), [p], xnp)
    np.testing.assert_array_equal(new, np.full(p.shape, np.float16(0.5 - 1e-3 / 2), np.float16))
