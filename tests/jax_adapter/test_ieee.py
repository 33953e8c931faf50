"""uniopt.jax's exact float32 division and square root (what its rules use on GPUs) against NumPy's
correctly rounded ones: random bit patterns (every class of float32), every exponent pair, exact
quotients, ties, a/a, subnormal quotients, overflow and the special values; every significand of
each exponent class for the root. Each corrects the platform's estimate in integer arithmetic; the
tests move the estimate (0 or 1 above the result on the CPU) by -8 to 7, to 8 either way (the
corrections' reach, where a GPU's estimate is within 4), so what passes here holds for any estimate
within that reach."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax import lax

from uniopt.jax import _ieee

DIVIDE = jax.jit(_ieee.divide)
RNG_SEED = 20261204
NUDGES = (-8, -7, -3, 0, 2, 7)  # the CPU's estimate is 0 or 1 above the result: -8 to 8 in all


@functools.cache
def _nudged_divide(nudge: int):
    def f(x1, x2):
        bits = _ieee._divide_bits(
            lax.bitcast_convert_type(x1, jnp.uint32), lax.bitcast_convert_type(x2, jnp.uint32), nudge
        )
        return lax.bitcast_convert_type(bits, jnp.float32)

    return jax.jit(f)


@functools.cache
def _nudged_sqrt(nudge: int):
    def f(x):
        return lax.bitcast_convert_type(
            _ieee._sqrt_bits(lax.bitcast_convert_type(x, jnp.uint32), nudge), jnp.float32
        )

    return jax.jit(f)


def assert_numpy_bits(a: np.ndarray, b: np.ndarray, nudges: tuple[int, ...] = NUDGES) -> None:
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    with np.errstate(all="ignore"):
        want = a / b
    _assert_bits(want, np.asarray(DIVIDE(a, b)), a, b)
    for nudge in nudges:
        _assert_bits(want, np.asarray(_nudged_divide(nudge)(a, b)), a, b, f" (estimate nudged by {nudge})")


def _assert_bits(want: np.ndarray, got: np.ndarray, a: np.ndarray, b: np.ndarray, note: str = "") -> None:
    both_nan = np.isnan(want) & np.isnan(got)
    bad = (want.view(np.uint32) != got.view(np.uint32)) & ~both_nan
    if bad.any():
        i = np.flatnonzero(bad)[:5]
        rows = [
            f"{a.ravel()[k].view(np.uint32):#010x} / {b.ravel()[k].view(np.uint32):#010x}: NumPy "
            f"{want.ravel()[k].view(np.uint32):#010x}, divide {got.ravel()[k].view(np.uint32):#010x}"
            for k in i
        ]
        pytest.fail(f"{bad.sum()} of {a.size} quotients differ{note}, e.g. " + "; ".join(rows))


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
        _ieee.divide(np.float16(1.0), np.float16(3.0))
    with pytest.raises(TypeError, match="float32 operands"):
        _ieee.sqrt(np.int32(4))


def test_derivative_is_the_quotients() -> None:
    da, db = jax.grad(lambda x, y: _ieee.divide(x, y).sum(), argnums=(0, 1))(jnp.ones(3), jnp.full(3, 2.0))
    np.testing.assert_array_equal(da, np.full(3, 0.5, np.float32))
    np.testing.assert_array_equal(db, np.full(3, -0.25, np.float32))
    dx = jax.grad(lambda x: _ieee.sqrt(x).sum())(jnp.full(3, 4.0))
    np.testing.assert_array_equal(dx, np.full(3, 0.25, np.float32))


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16], ids=["float16", "bfloat16"])
def test_narrow_floats_through_float32_round_once_more(dtype: type) -> None:
    """The GPU branch for float16 and bfloat16 (run here directly): NumPy's quotient of each pair
    (ml_dtypes and NumPy divide in float32 and round, correctly rounded since 24 >= 2p + 2)."""
    rng = np.random.default_rng(RNG_SEED + 4)
    bits = rng.integers(0, 2**16, (2, 1 << 18), dtype=np.uint64).astype(np.uint16)
    a, b = bits.view(dtype)
    with np.errstate(all="ignore"):
        want = (a.astype(np.float64) / b.astype(np.float64)).astype(dtype)
    got = np.asarray(jax.jit(_ieee._DIVIDE_ON_GPU)(a, b))
    both_nan = np.isnan(want.astype(np.float32)) & np.isnan(got.astype(np.float32))
    assert ((want.view(np.uint16) == got.view(np.uint16)) | both_nan).all()
    with np.errstate(all="ignore"):
        want = np.sqrt(a.astype(np.float64)).astype(dtype)
    got = np.asarray(jax.jit(_ieee._SQRT_ON_GPU)(a))
    both_nan = np.isnan(want.astype(np.float32)) & np.isnan(got.astype(np.float32))
    assert ((want.view(np.uint16) == got.view(np.uint16)) | both_nan).all()


def test_every_significand_root_in_the_exponent_classes() -> None:
    """Every float32 of the exponent fields the code tells apart: subnormals (0), the smallest
    normals (1), an odd and an even exponent (126, 127: 0.5 to 2), the largest (254); all 2**23
    significands of each, with the root's estimate as the platform gives it. (The whole positive
    range, 2**31 - 2**23 values, also passed: 18 s here.)"""
    exact = jax.jit(_ieee.sqrt)
    for field in (0, 1, 126, 127, 254):
        x = ((field << 23) + np.arange(2**23, dtype=np.uint32)).astype(np.uint32).view(np.float32)
        want, got = np.sqrt(x), np.asarray(exact(x))
        if not np.array_equal(want.view(np.uint32), got.view(np.uint32)):
            i = np.flatnonzero(want.view(np.uint32) != got.view(np.uint32))[0]
            bits = (x.view(np.uint32)[i], want.view(np.uint32)[i], got.view(np.uint32)[i])
            pytest.fail("sqrt({:#010x}): NumPy {:#010x}, sqrt {:#010x}".format(*bits))


def test_roots_with_nudged_estimates_and_special_values() -> None:
    rng = np.random.default_rng(RNG_SEED + 5)
    x = rng.integers(0, 2**32, 1 << 22, dtype=np.uint64).astype(np.uint32).view(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -1.0, 1e-45, 3.4e38, 4.0, 2.0], np.float32)
    x = np.concatenate([x, special])
    with np.errstate(invalid="ignore"):
        want = np.sqrt(x)
    for nudge in (0, *NUDGES):
        got = np.asarray(_nudged_sqrt(nudge)(x))
        both_nan = np.isnan(want) & np.isnan(got)
        bad = (want.view(np.uint32) != got.view(np.uint32)) & ~both_nan
        assert not bad.any(), f"{bad.sum()} roots differ with the estimate nudged by {nudge}"


def test_integer_operands_take_the_float_path() -> None:
    """An integer quotient or root is a float (float32 here): it goes through the platform choice
    (``platform_index``), so that on a GPU it takes the exact path too."""
    cases = ((_ieee.divide_on_gpu, (jnp.arange(1, 5), jnp.int32(3))), (_ieee.sqrt_on_gpu, (jnp.arange(5),)))
    for fn, args in cases:
        assert "platform_index" in str(jax.make_jaxpr(fn)(*args))
        assert jax.jit(fn)(*args).dtype == jnp.float32
    assert "platform_index" not in str(jax.make_jaxpr(_ieee.divide_on_gpu)(jnp.ones(2, jnp.complex64), 2.0))
    np.testing.assert_array_equal(
        _ieee.divide_on_gpu(jnp.arange(1, 5), 3), np.arange(1, 5, dtype=np.float32) / 3
    )
    np.testing.assert_array_equal(_ieee.sqrt_on_gpu(jnp.arange(5)), np.sqrt(np.arange(5, dtype=np.float32)))


def test_cpu_lowering_is_xla_division_and_root() -> None:
    """Lowered for the CPU, the namespaces' division and root stay XLA's own (correctly rounded
    there): no integer code in the compiled step. Lowered for a GPU, the integer code is there."""
    for fn, op in ((_ieee.divide_on_gpu, "divide("), (lambda x, y: _ieee.sqrt_on_gpu(x) + y, "sqrt(")):
        hlo = jax.jit(fn).lower(jnp.ones(4), jnp.ones(4)).compile().as_text()
        if jax.default_backend() == "cpu":
            assert op in hlo
            assert "count-leading-zeros" not in hlo and "shift-right-logical" not in hlo
        else:
            assert "count-leading-zeros" in hlo
