"""uniopt.jax's integer float32 division (the one its rules use on GPUs) against NumPy's correctly
rounded division: random bit patterns (every class of float32), every exponent pair, exact
quotients, ties, a/a, subnormal quotients, overflow and the special values. The integer code is
the same on every platform, so proving it here proves the GPU's bits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from uniopt.jax import _divide

DIVIDE = jax.jit(_divide.divide)
RNG_SEED = 20261204


def assert_numpy_bits(a: np.ndarray, b: np.ndarray) -> None:
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    with np.errstate(all="ignore"):
        want = a / b
    got = np.asarray(DIVIDE(a, b))
    both_nan = np.isnan(want) & np.isnan(got)
    bad = (want.view(np.uint32) != got.view(np.uint32)) & ~both_nan
    if bad.any():
        i = np.flatnonzero(bad)[:5]
        rows = [
            f"{a.ravel()[k].view(np.uint32):#010x} / {b.ravel()[k].view(np.uint32):#010x}: NumPy "
            f"{want.ravel()[k].view(np.uint32):#010x}, divide {got.ravel()[k].view(np.uint32):#010x}"
            for k in i
        ]
        pytest.fail(f"{bad.sum()} of {a.size} quotients differ, e.g. " + "; ".join(rows))


def test_random_bit_patterns() -> None:
    rng = np.random.default_rng(RNG_SEED)
    for _ in range(4):
        a, b = rng.integers(0, 2**32, (2, 1 << 21), dtype=np.uint64).astype(np.uint32).view(np.float32)
        assert_numpy_bits(a, b)


def test_every_exponent_pair() -> None:
    rng = np.random.default_rng(RNG_SEED + 1)
    ea, eb = (x.ravel().astype(np.uint64) for x in np.meshgrid(np.arange(256), np.arange(256)))
    for _ in range(8):
        ma, mb = rng.integers(0, 2**23, (2, ea.size), dtype=np.uint64)
        sa, sb = rng.integers(0, 2, (2, ea.size), dtype=np.uint64)
        a = ((sa << 31) | (ea << 23) | ma).astype(np.uint32).view(np.float32)
        b = ((sb << 31) | (eb << 23) | mb).astype(np.uint32).view(np.float32)
        assert_numpy_bits(a, b)


def test_exact_quotients_ties_and_self_division() -> None:
    rng = np.random.default_rng(RNG_SEED + 2)
    n = 1 << 20
    scale = lambda: np.float32(2.0) ** rng.integers(-30, 30, n).astype(np.float32)  # noqa: E731
    q = rng.integers(1, 2**12, n).astype(np.float32) * scale()
    b = rng.integers(1, 2**12, n).astype(np.float32) * scale()
    assert_numpy_bits(q * b, b)  # q*b exact (24 bits): the quotient is q
    odd = rng.integers(2**24, 2**25, n) | 1  # 25 significant bits: halfway between two floats
    power = (2.0 ** rng.integers(-60, 60, n)).astype(np.float32)
    assert_numpy_bits((odd * power.astype(np.float64) / 2**24).astype(np.float32), power)
    a = rng.standard_normal(n).astype(np.float32)
    assert_numpy_bits(a, a)
    got = np.asarray(DIVIDE(a, a))
    assert (got == 1).all()  # the identity XLA:GPU's div.full.f32 breaks for 16% of a


def test_subnormal_quotients_and_overflow() -> None:
    rng = np.random.default_rng(RNG_SEED + 3)
    n = 1 << 20
    tiny, big = rng.standard_normal((2, n)).astype(np.float32)
    assert_numpy_bits(tiny * np.float32(1e-30), big * np.float32(1e15))
    assert_numpy_bits(tiny * np.float32(1e30), big * np.float32(1e-15))
    sub = rng.integers(1, 2**23, n).astype(np.uint32).view(np.float32)  # subnormal dividends
    assert_numpy_bits(sub, big)
    assert_numpy_bits(big, sub)


def test_special_values() -> None:
    special = np.array(
        [0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 1e-45, -3e-39, 3.4e38, 1.1754944e-38], np.float32
    )
    a, b = np.meshgrid(special, special)
    assert_numpy_bits(a.ravel(), b.ravel())


def test_broadcasting_and_refusals() -> None:
    out = DIVIDE(np.float32([[1.0], [3.0]]), np.float32([3.0, 7.0]))
    assert out.shape == (2, 2)
    np.testing.assert_array_equal(out, np.float32([[1.0], [3.0]]) / np.float32([3.0, 7.0]))
    with pytest.raises(TypeError, match="float32 operands"):
        _divide.divide(np.float16(1.0), np.float16(3.0))


def test_derivative_is_the_quotients() -> None:
    da, db = jax.grad(lambda x, y: _divide.divide(x, y).sum(), argnums=(0, 1))(jnp.ones(3), jnp.full(3, 2.0))
    np.testing.assert_array_equal(da, np.full(3, 0.5, np.float32))
    np.testing.assert_array_equal(db, np.full(3, -0.25, np.float32))


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16], ids=["float16", "bfloat16"])
def test_narrow_floats_through_float32_round_once_more(dtype: type) -> None:
    """The GPU branch for float16 and bfloat16 (run here directly): NumPy's quotient of each pair
    (ml_dtypes and NumPy divide in float32 and round, correctly rounded since 24 >= 2p + 2)."""
    rng = np.random.default_rng(RNG_SEED + 4)
    bits = rng.integers(0, 2**16, (2, 1 << 18), dtype=np.uint64).astype(np.uint16)
    a, b = bits.view(dtype)
    with np.errstate(all="ignore"):
        want = (a.astype(np.float64) / b.astype(np.float64)).astype(dtype)
    got = np.asarray(jax.jit(_divide._on_gpu)(a, b))
    both_nan = np.isnan(want.astype(np.float32)) & np.isnan(got.astype(np.float32))
    assert ((want.view(np.uint16) == got.view(np.uint16)) | both_nan).all()


def test_cpu_lowering_is_xla_division() -> None:
    """On the CPU the namespaces' division stays XLA's own (correctly rounded there): no integer
    code in the compiled step."""
    hlo = jax.jit(_divide.divide_on_gpu).lower(jnp.ones(4), jnp.ones(4)).compile().as_text()
    assert "divide(" in hlo
    assert "count-leading-zeros" not in hlo and "shift-right-logical" not in hlo
