"""Correctly rounded float32 division and square root on GPUs, made exact in integer arithmetic.

XLA:GPU lowers a float32 division to PTX ``div.full.f32`` (up to 2 ulp off: measured on an H200,
29% of quotients of random normal pairs differ from the correctly rounded one, and ``a / a != 1``
for 15% of ``a``; openxla/xla#37181, the switch to ``div.rn.f32`` proposed in openxla/xla#46400)
and its float32 square root is not correctly rounded either (measured: the first step of
``uniopt.jax``'s Adagrad, which divides once by a root, 320 ulp from the spec after the division
was made exact), where NumPy, torch on CPU and CUDA, and XLA:CPU round both correctly.

:func:`divide` and :func:`sqrt` return the IEEE 754 results (round to nearest, ties to even) on
every platform. Each takes the platform's own float result as an estimate of the significand and
corrects it with exact integer arithmetic:

* division: the significands (subnormals normalised with ``clz``) are scaled so that the quotient
  ``Q = r / mb`` lies in ``[1, 2)``; the estimate ``q = floor(fl(r / mb) * 2**24)`` is within 4 of
  ``floor(Q * 2**24)`` for any division within 2 ulp, and the remainder ``r * 2**24 - q * mb``,
  whose magnitude stays under ``2**31``, is exact in wrapping 32-bit arithmetic; :data:`_STEPS`
  corrections each way make it ``0 <= rem < mb``. ``q`` then holds 24 significand bits and a guard
  bit, ``rem != 0`` is the sticky bit, and the quotient is shifted into the subnormal range where
  its exponent is below ``-126`` before it is rounded once;
* square root: ``M = m * 2**j`` (``j`` 25 or 26, making the exponent even) in ``[2**48, 2**50)``;
  the estimate ``s = floor(fl(sqrt(M)))`` is corrected until ``0 <= M - s*s <= 2*s`` (the
  remainder exact in wrapping 32-bit arithmetic); ``s`` holds 24 bits and a guard bit, the remainder
  the sticky bit. A root is never subnormal and never overflows.

Zeros, infinities and NaNs follow IEEE 754's tables in integers too (a NaN result is
``0x7FC00000``).

:func:`divide_on_gpu` and :func:`sqrt_on_gpu` are what the jax namespaces use: these functions
where the computation is lowered for a GPU (``lax.platform_dependent``), ``jax.numpy``'s elsewhere
(XLA:CPU rounds both correctly, and faster, except that it reads subnormal operands and writes
subnormal results as zeros, as its other ops do: there the GPU's bits are IEEE 754's and the CPU's
are not). float16 and bfloat16 go through float32 and are
rounded once more: a float32 quotient or root rounded to 11 or 8 bits is the correctly rounded one
(24 >= 2p + 2, the condition under which double rounding of a quotient or a root is innocuous).
float64 (``div.rn.f64``, ``sqrt.rn.f64`` on GPUs) and complex results are ``jax.numpy``'s.

The bits are proved against NumPy on the CPU, where this code runs too, with the estimates moved
by up to 8 either way (the CPU's own estimate is 0 or 1 above the result, nudged by -8 to 7;
tests/jax_adapter/test_ieee.py: the root of every significand of each exponent class the code
tells apart, and once of every positive float32; quotients of random bit patterns, every exponent
pair, ties, ``a/a``, subnormal quotients, overflow and the special values). The long-division form
of the quotient this replaced was checked on an H200 (docs/gpu.md); this form has not run on a GPU
yet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["divide", "divide_on_gpu", "sqrt", "sqrt_on_gpu"]

_U32 = jnp.uint32
_I32 = jnp.int32
_FRACTION = 0x007FFFFF
_HIDDEN = 0x00800000
_INFINITY = 0x7F800000
_MAGNITUDE = 0x7FFFFFFF
_QUIET_NAN = 0x7FC00000
_STEPS = 8
"""Corrections each way. The estimates are within 4 of the result where the platform's quotient or
root is within 2 ulp (PTX's ``div.full.f32`` and ``sqrt.approx.f32`` promise that); the rest is a
margin, proved by the tests with the estimates moved by up to 8 either way (a correctly rounded
estimate is 0 or 1 above the result, nudged by -8 to 7)."""


def _significand(magnitude: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(m, e)`` of a finite nonzero float32's magnitude bits: ``x = m * 2**(e - 23)`` with ``m``
    in ``[2**23, 2**24)`` (subnormals normalised)."""
    field = (magnitude >> 23).astype(_I32)
    fraction = magnitude & _U32(_FRACTION)
    # subnormal: shift the leading one up to bit 23 (clz of a 32-bit word; bit 23 has 8 zeros above)
    shift = jnp.where(field == 0, lax.clz(fraction).astype(_I32) - 8, 0)
    m = jnp.where(field == 0, fraction << shift.astype(_U32), fraction | _U32(_HIDDEN))
    e = jnp.where(field == 0, -126 - shift, field - 127)
    return m, e


def _as_int32(x: jax.Array) -> jax.Array:
    return lax.bitcast_convert_type(x, _I32)


def _round(q: jax.Array, sticky: jax.Array, e: jax.Array) -> jax.Array:
    """The magnitude bits of ``(q + rest) * 2**(e - 24)``, ``q`` in ``[2**24, 2**25)`` (uint32)
    and ``rest`` in ``[0, 1)`` nonzero where ``sticky``, rounded to nearest, ties to even."""
    # the significand in units of the result's ulp: q >> 1 where normal (e >= -126), shifted further
    # into the subnormal range (ulp 2**-149); 26 and more shifts leave only sticky bits
    shift = jnp.clip(1 + jnp.maximum(-126 - e, 0), 1, 26).astype(_U32)
    m = q >> shift
    guard = (q >> (shift - _U32(1))) & _U32(1)
    below = q & ((_U32(1) << (shift - _U32(1))) - _U32(1))
    sticky = sticky | (below != 0)
    m = m + (guard & (sticky | ((m & _U32(1)) != 0)).astype(_U32))
    # the exponent field plus the significand: a carry of the rounding (m == 2**24, or 2**23 from a
    # subnormal) moves into the exponent, up to infinity's bits exactly
    field = jnp.clip(e + 126, 0, 254).astype(_U32)
    magnitude = jnp.where(e > 127, _U32(_INFINITY), (field << _U32(23)) + m)
    return jnp.minimum(magnitude, _U32(_INFINITY))


def _quotient_magnitude(abs_a: jax.Array, abs_b: jax.Array, nudge: int = 0) -> jax.Array:
    """The correctly rounded quotient's magnitude bits of two finite nonzero magnitudes; ``nudge``
    (tests) moves the estimate."""
    ma, ea = _significand(abs_a)
    mb, eb = _significand(abs_b)
    low = ma < mb  # double ma there: Q = r / mb in [1, 2), r < 2**25 (even where doubled: exact)
    r = jnp.where(low, ma << _U32(1), ma)
    e = ea - eb - low.astype(_I32)  # a/b = Q * 2**e
    estimate = jnp.divide(r.astype(jnp.float32), mb.astype(jnp.float32))  # the platform's division
    q = (estimate * jnp.float32(2**24)).astype(_U32) + _U32(nudge % 2**32)
    rem = _as_int32((r << _U32(24)) - q * mb)  # r*2**24 - q*mb, exact: |rem| < 9*mb < 2**31
    mb_signed = mb.astype(_I32)
    for _ in range(_STEPS):
        under = rem < 0
        q = q - under.astype(_U32)
        rem = rem + jnp.where(under, mb_signed, 0)
    for _ in range(_STEPS):
        over = rem >= mb_signed
        q = q + over.astype(_U32)
        rem = rem - jnp.where(over, mb_signed, 0)
    return _round(q, rem != 0, e)


def _divide_bits(a: jax.Array, b: jax.Array, nudge: int = 0) -> jax.Array:
    """The quotient's bits of two float32 bit patterns (uint32), by IEEE 754's table where an
    operand is zero, infinite or NaN."""
    sign = (a ^ b) & _U32(0x80000000)
    abs_a, abs_b = a & _U32(_MAGNITUDE), b & _U32(_MAGNITUDE)
    nan = (abs_a > _U32(_INFINITY)) | (abs_b > _U32(_INFINITY))
    nan = nan | ((abs_a == 0) & (abs_b == 0)) | ((abs_a == _U32(_INFINITY)) & (abs_b == _U32(_INFINITY)))
    infinite = (abs_a == _U32(_INFINITY)) | (abs_b == 0)  # (not both: those are NaN)
    zero = (abs_a == 0) | (abs_b == _U32(_INFINITY))
    finite = sign | _quotient_magnitude(abs_a, abs_b, nudge)
    out = jnp.where(zero, sign, jnp.where(infinite, sign | _U32(_INFINITY), finite))
    return jnp.where(nan, _U32(_QUIET_NAN), out)


def _root_magnitude(magnitude: jax.Array, nudge: int = 0) -> jax.Array:
    """The correctly rounded root's bits of a finite positive magnitude; ``nudge`` (tests) moves
    the estimate."""
    m, e = _significand(magnitude)
    j = jnp.where((e - 23) % 2 == 0, 26, 25)  # x = (m * 2**j) * 2**(e - 23 - j), that exponent even
    # M = m * 2**j in [2**48, 2**50), exact in float32: a product by a power of two (jnp.ldexp goes
    # through pow, which a GPU's libdevice does not promise exact)
    big = m.astype(jnp.float32) * jnp.where(j == 26, jnp.float32(2.0**26), jnp.float32(2.0**25))
    s = jnp.sqrt(big).astype(_U32) + _U32(nudge % 2**32)  # the platform's root, truncated
    rem = _as_int32((m << j.astype(_U32)) - s * s)  # M - s*s, exact: |rem| < 2**31
    for _ in range(_STEPS):  # M - (s-1)**2 = rem + 2s - 1
        under = rem < 0
        rem = rem + jnp.where(under, 2 * s.astype(_I32) - 1, 0)
        s = s - under.astype(_U32)
    for _ in range(_STEPS):  # M - (s+1)**2 = rem - 2s - 1
        over = rem > 2 * s.astype(_I32)
        rem = rem - jnp.where(over, 2 * s.astype(_I32) + 1, 0)
        s = s + over.astype(_U32)
    # s in [2**24, 2**25): sqrt(x) = (s + rest) * 2**((e - 23 - j) / 2), that is e_root - 24
    return _round(s, rem != 0, (e - 23 - j) // 2 + 24)


def _sqrt_bits(x: jax.Array, nudge: int = 0) -> jax.Array:
    """The root's bits of float32 bit patterns (uint32): ``±0`` for ``±0``, ``inf`` for ``inf``,
    NaN for NaN and every negative number."""
    magnitude = x & _U32(_MAGNITUDE)
    negative = (x >> 31) == 1
    nan = (magnitude > _U32(_INFINITY)) | (negative & (magnitude != 0))
    exact = (magnitude == 0) | (magnitude == _U32(_INFINITY))  # ±0 and +inf are their own roots
    out = jnp.where(exact, x, _root_magnitude(magnitude, nudge))
    return jnp.where(nan, _U32(_QUIET_NAN), out)


def _float32_only(name: str, *xs: jax.Array) -> None:
    if any(x.dtype != jnp.float32 for x in xs):
        raise TypeError(f"{name}: float32 operands expected, got {', '.join(str(x.dtype) for x in xs)}")


@jax.custom_jvp
def divide(x1: jax.Array, x2: jax.Array) -> jax.Array:
    """``x1 / x2`` for float32 arrays (broadcast together), rounded to nearest (ties to even) as
    IEEE 754 prescribes, the platform's division corrected in integer arithmetic: the same bits on
    every platform.

    Zeros, infinities and NaNs give IEEE 754's quotients (NaN as ``0x7FC00000``). Raises
    ``TypeError`` for another dtype. Its derivative is ``jnp.divide``'s.
    """
    x1, x2 = jnp.broadcast_arrays(jnp.asarray(x1), jnp.asarray(x2))
    _float32_only("divide", x1, x2)
    bits = _divide_bits(lax.bitcast_convert_type(x1, _U32), lax.bitcast_convert_type(x2, _U32))
    return lax.bitcast_convert_type(bits, jnp.float32)


@divide.defjvp
def _divide_jvp(primals: tuple, tangents: tuple) -> tuple:
    x1, x2 = primals
    t1, t2 = tangents
    out = divide(x1, x2)
    return out, jnp.divide(t1 - out * t2, x2)


@jax.custom_jvp
def sqrt(x: jax.Array) -> jax.Array:
    """The square root of a float32 array, rounded to nearest as IEEE 754 prescribes, the
    platform's root corrected in integer arithmetic: the same bits on every platform.

    ``sqrt(-0.0)`` is ``-0.0``; negative numbers and NaN give NaN (``0x7FC00000``). Raises
    ``TypeError`` for another dtype. Its derivative is ``jnp.sqrt``'s.
    """
    x = jnp.asarray(x)
    _float32_only("sqrt", x)
    return lax.bitcast_convert_type(_sqrt_bits(lax.bitcast_convert_type(x, _U32)), jnp.float32)


@sqrt.defjvp
def _sqrt_jvp(primals: tuple, tangents: tuple) -> tuple:
    (x,), (t,) = primals, tangents
    out = sqrt(x)
    return out, jnp.divide(t, 2 * out)


_NARROW = (jnp.float16, jnp.bfloat16)


def _through_float32(exact: Callable[..., jax.Array], native: Callable[..., jax.Array]) -> Callable:
    """``exact`` for float32, and for float16 and bfloat16 through float32 rounded once more;
    ``native`` for any other dtype."""

    def on_gpu(*xs: jax.Array) -> jax.Array:
        dtype = xs[0].dtype
        if dtype == jnp.float32:
            return exact(*xs)
        if dtype in _NARROW:
            return exact(*(x.astype(jnp.float32) for x in xs)).astype(dtype)
        return native(*xs)

    return on_gpu


_DIVIDE_ON_GPU = _through_float32(divide, jnp.divide)
_SQRT_ON_GPU = _through_float32(sqrt, jnp.sqrt)


def _exact_dtype(dtype: Any) -> bool:
    return dtype == jnp.float32 or dtype in _NARROW


def divide_on_gpu(x1: Any, x2: Any) -> jax.Array:
    """``jnp.divide(x1, x2)``, except where XLA lowers it for a GPU (CUDA or ROCm) and the quotient
    is float32, float16 or bfloat16 (integer operands included: their quotient is a float): there
    :func:`divide` (float16 and bfloat16 through float32, rounded once more)."""
    x1, x2 = jnp.asarray(x1), jnp.asarray(x2)
    dtype = jax.eval_shape(jnp.divide, x1, x2).dtype
    if not _exact_dtype(dtype):
        return jnp.divide(x1, x2)
    x1, x2 = x1.astype(dtype), x2.astype(dtype)
    return lax.platform_dependent(x1, x2, cuda=_DIVIDE_ON_GPU, rocm=_DIVIDE_ON_GPU, default=jnp.divide)


def sqrt_on_gpu(x: Any) -> jax.Array:
    """``jnp.sqrt(x)``, except where XLA lowers it for a GPU (CUDA or ROCm) and ``x`` is float32,
    float16 or bfloat16: there :func:`sqrt` (float16 and bfloat16 through float32, rounded once
    more)."""
    x = jnp.asarray(x)
    dtype = jax.eval_shape(jnp.sqrt, x).dtype  # an integer array's root is a float
    if not _exact_dtype(dtype):
        return jnp.sqrt(x)
    x = x.astype(dtype)
    return lax.platform_dependent(x, cuda=_SQRT_ON_GPU, rocm=_SQRT_ON_GPU, default=jnp.sqrt)
