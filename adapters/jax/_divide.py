"""Correctly rounded float32 division on GPUs, in integer arithmetic.

XLA:GPU lowers a float32 division to PTX ``div.full.f32`` (at most 2 ulp off, and in practice 1:
``a / a != 1`` for 16% of float32 ``a``; openxla/xla#37181, with the switch to ``div.rn.f32``
proposed in openxla/xla#46400), where NumPy, torch on CPU and CUDA, and XLA:CPU round the quotient
correctly. Over a trajectory that moved ``uniopt.jax``'s float32 Adam up to 409,600 ulp from the
spec on an H100 (docs/gpu.md). :func:`divide` is the IEEE 754 quotient, rounded to nearest, ties
to even, made of integer operations only, so that it gives the same bits on every platform and
under every compiler flag: the operands' significands (subnormals normalised with ``clz``) are
divided bit by bit, 25 quotient bits (24 and a guard bit) and a sticky bit for the remainder; the
quotient is shifted right into the subnormal range where its exponent is below ``-126`` and
rounded once. Zeros, infinities and NaNs follow IEEE 754's table, also in integers (XLA:CPU's own
division reads subnormal operands as zeros).

:func:`divide_on_gpu` is what the jax namespaces use: this division where the computation is
lowered for a GPU (``lax.platform_dependent``), ``jnp.divide`` elsewhere (XLA:CPU's division is
correctly rounded already, and faster). float16 and bfloat16 quotients go through it in float32
and are rounded once more: a float32 quotient rounded to 11 or 8 bits is the correctly rounded
one (24 >= 2*11 + 2, the condition under which double rounding of a quotient is innocuous).
float64 (``div.rn.f64`` on GPUs) and complex quotients are ``jnp.divide``'s.

The bits are proved against NumPy's division on the CPU, where this code runs too
(tests/jax_adapter/test_divide.py: every exponent pair over random significands, subnormal
operands and quotients, overflow, ties, and the special values), and on a GPU by the conformance
matrix (docs/gpu.md).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["divide", "divide_on_gpu"]

_U32 = jnp.uint32
_I32 = jnp.int32
_FRACTION = 0x007FFFFF
_HIDDEN = 0x00800000
_INFINITY = 0x7F800000
_QUOTIENT_BITS = 25  # 24 significand bits and the guard bit


def _significand(bits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(m, e)`` of a finite nonzero float32's magnitude bits: ``x = m * 2**(e - 23)`` with ``m``
    in ``[2**23, 2**24)`` (subnormals normalised)."""
    field = (bits >> 23).astype(_I32)
    fraction = bits & _U32(_FRACTION)
    # subnormal: shift the leading one up to bit 23 (clz of a 32-bit word; bit 23 has 8 zeros above)
    shift = jnp.where(field == 0, lax.clz(fraction).astype(_I32) - 8, 0)
    m = jnp.where(field == 0, fraction << shift.astype(_U32), fraction | _U32(_HIDDEN))
    e = jnp.where(field == 0, -126 - shift, field - 127)
    return m, e


def _quotient_bits(a: jax.Array, b: jax.Array) -> jax.Array:
    """The correctly rounded quotient's bits of two float32 bit patterns (uint32), both finite and
    nonzero."""
    sign = (a ^ b) & _U32(0x80000000)
    ma, ea = _significand(a & _U32(0x7FFFFFFF))
    mb, eb = _significand(b & _U32(0x7FFFFFFF))
    # ma/mb in [1, 2): double ma where it is below mb (ma < 2**25 then)
    low = ma < mb
    r = jnp.where(low, ma << _U32(1), ma)
    e = ea - eb - low.astype(_I32)  # a/b = (r/mb) * 2**e
    q = jnp.zeros_like(r)
    for _ in range(_QUOTIENT_BITS):  # restoring division: r < 2*mb < 2**25 throughout
        take = r >= mb
        q = (q << _U32(1)) | take.astype(_U32)
        r = jnp.where(take, r - mb, r) << _U32(1)
    # q in [2**24, 2**25): a/b = (q + rest) * 2**(e - 24) with rest = r / (2 * mb) in [0, 1)
    sticky = r != 0
    # the result's significand in units of its ulp: q >> 1 where normal (e >= -126); shifted further
    # into the subnormal range below (its ulp is 2**-149); 26 and more shifts leave only sticky bits
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
    return sign | jnp.minimum(magnitude, _U32(_INFINITY))


@jax.custom_jvp
def divide(x1: jax.Array, x2: jax.Array) -> jax.Array:
    """``x1 / x2`` for float32 arrays (broadcast together), rounded to nearest (ties to even) as
    IEEE 754 prescribes, computed in integer arithmetic: the same bits on every platform.

    Zeros, infinities and NaNs give IEEE 754's quotients (NaN as ``0x7FC00000``). Raises
    ``TypeError`` for another dtype. Its derivative is ``jnp.divide``'s.
    """
    x1, x2 = jnp.broadcast_arrays(jnp.asarray(x1), jnp.asarray(x2))
    if x1.dtype != jnp.float32 or x2.dtype != jnp.float32:
        raise TypeError(f"divide: float32 operands expected, got {x1.dtype} and {x2.dtype}")
    a = lax.bitcast_convert_type(x1, _U32)
    b = lax.bitcast_convert_type(x2, _U32)
    return lax.bitcast_convert_type(_bits(a, b), jnp.float32)


def _bits(a: jax.Array, b: jax.Array) -> jax.Array:
    """The quotient's bits of two float32 bit patterns; zeros, infinities and NaNs by IEEE 754's
    table (a NaN quotient is the quiet NaN ``0x7FC00000``)."""
    sign = (a ^ b) & _U32(0x80000000)
    abs_a, abs_b = a & _U32(0x7FFFFFFF), b & _U32(0x7FFFFFFF)
    nan = (abs_a > _U32(_INFINITY)) | (abs_b > _U32(_INFINITY))
    nan = nan | ((abs_a == 0) & (abs_b == 0)) | ((abs_a == _U32(_INFINITY)) & (abs_b == _U32(_INFINITY)))
    infinite = (abs_a == _U32(_INFINITY)) | (abs_b == 0)  # (not both: those are NaN)
    zero = (abs_a == 0) | (abs_b == _U32(_INFINITY))
    finite = _quotient_bits(a, b)
    out = jnp.where(zero, sign, jnp.where(infinite, sign | _U32(_INFINITY), finite))
    return jnp.where(nan, _U32(0x7FC00000), out)


@divide.defjvp
def _divide_jvp(primals: tuple, tangents: tuple) -> tuple:
    x1, x2 = primals
    t1, t2 = tangents
    out = divide(x1, x2)
    return out, jnp.divide(t1 - out * t2, x2)


_NARROW = (jnp.float16, jnp.bfloat16)


def _on_gpu(x1: jax.Array, x2: jax.Array) -> jax.Array:
    dtype = jnp.result_type(x1, x2)
    if dtype == jnp.float32:
        return divide(x1, x2)
    if dtype in _NARROW:  # XLA:GPU divides these in float32 too; round once more
        return divide(jnp.astype(x1, jnp.float32), jnp.astype(x2, jnp.float32)).astype(dtype)
    return jnp.divide(x1, x2)


def divide_on_gpu(x1: Any, x2: Any) -> jax.Array:
    """``jnp.divide(x1, x2)``, except where XLA lowers it for a GPU (CUDA or ROCm) and the
    quotient is float32, float16 or bfloat16: there :func:`divide` (float16 and bfloat16 through
    float32, rounded once more)."""
    x1, x2 = jnp.asarray(x1), jnp.asarray(x2)
    dtype = jnp.result_type(x1, x2)
    if dtype != jnp.float32 and dtype not in _NARROW:
        return jnp.divide(x1, x2)
    x1, x2 = x1.astype(dtype), x2.astype(dtype)
    return lax.platform_dependent(x1, x2, cuda=_on_gpu, rocm=_on_gpu, default=jnp.divide)
