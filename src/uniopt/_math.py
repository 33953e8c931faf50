"""Pieces shared by several specs: gradient preparation and moving averages.

Every function here is an explicit op sequence over ``xp``; scalars arrive as 0-d arrays already
rounded to the parameter dtype (see :func:`uniopt._spec.cast_scalars`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ._spec import Array

__all__ = [
    "EXACTLY_WIDENS",
    "abs_sq",
    "adam_moments",
    "adam_step",
    "after",
    "bias_correction",
    "divide_by_scalar",
    "divide_exactly",
    "dtype_in",
    "dtype_name",
    "ema",
    "float32_bias_correction",
    "float32_pow",
    "float_bits",
    "from_parts",
    "is_complex",
    "keras_bias_correction",
    "keras_float32",
    "keras_weight_decay",
    "mean_axis",
    "norm",
    "prepare_grad",
    "real_scalars",
    "recomputed",
    "refuse_complex",
    "rms",
    "round_to_dtype",
    "size",
    "squared",
    "stored",
    "stored_product",
    "sum_pairwise",
    "sum_pairwise_axis",
    "trust_ratio",
    "widened",
]


def prepare_grad(grad: Array, param: Array, xp: Any, *, maximize: bool, weight_decay: Array | None) -> Array:
    r"""The gradient the rule uses: :math:`g \leftarrow \pm g + \lambda\,p`.

    The sign flips first when ``maximize``; L2 weight decay (``weight_decay`` not ``None``) then adds
    ``param * weight_decay``. Decoupled decay is not applied here (each spec does it on the param).
    """
    if maximize:
        grad = xp.negative(grad)
    if weight_decay is not None:
        grad = xp.add(grad, xp.multiply(param, weight_decay))
    return grad


def keras_float32(value: float) -> float:
    """A hyperparameter as Keras holds it, rounded to float32: the learning rate lives in a float32
    (``floatx``) variable, and ``ops.cast(value, dtype)`` turns a Python float into a float32 tensor
    first (``ops.cast(0.9, "float64") == float32(0.9)``), as do ``Constant`` initializers. A float64
    model sees these values rounded; a float32 model sees the same value either way. A learning rate
    passed per step (a schedule) is used as given, which keeps the per-step scalars affine in it."""
    import numpy as np

    return float(np.float32(value))


def keras_weight_decay(param: Array, weight_decay: Array, lr: Array, xp: Any) -> Array:
    r"""Keras 3's decoupled weight decay, applied before the update: ``p - (p * wd) * lr``."""
    return xp.subtract(param, xp.multiply(xp.multiply(param, weight_decay), lr))


def ema(average: Array, value: Array, keep: Array, take: Array, xp: Any) -> Array:
    r"""Exponential moving average ``average * keep + value * take`` (:math:`\beta a + (1-\beta) x`).

    ``take`` is ``1 - beta`` computed on the host in float64 and rounded once, so no backend has to
    agree on an in-graph ``1 - beta`` or on ``lerp``.
    """
    return xp.add(xp.multiply(average, keep), xp.multiply(value, take))


def bias_correction(beta: float, step: int) -> float:
    r"""Host-side :math:`1 - \beta^t` in float64."""
    return 1.0 - beta**step


def adam_moments(m: Array, v: Array, grad: Array, sc: Any, xp: Any) -> tuple[Array, Array]:
    r"""First and second moments: :math:`m = \beta_1 m + (1-\beta_1) g`,
    :math:`v = \beta_2 v + (1-\beta_2) g^2`.

    ``sc`` carries ``beta1, one_minus_beta1, beta2, one_minus_beta2`` as 0-d arrays.
    """
    m = ema(m, grad, sc.beta1, sc.one_minus_beta1, xp)
    v = ema(v, xp.multiply(grad, grad), sc.beta2, sc.one_minus_beta2, xp)
    return m, v


def adam_step(m: Array, v: Array, step_size: Array, inv_sqrt_bc2: Array, eps: Array, xp: Any):
    r"""Adam's step :math:`\hat m / (\sqrt{\hat v} + \epsilon)` times the learning rate, as
    ``(m / (sqrt(v) * inv_sqrt_bc2 + eps)) * step_size`` with ``step_size = lr / (1 - beta1^t)``
    and ``inv_sqrt_bc2 = 1 / sqrt(1 - beta2^t)`` computed on the host.
    """
    denom = xp.add(xp.multiply(xp.sqrt(v), inv_sqrt_bc2), eps)
    return xp.multiply(xp.divide(m, denom), step_size)


# -- float32 scalar arithmetic of the frameworks, emulated on the host ----------------------------
# optax at jax's default (``jax_enable_x64`` off) and Keras in float32 models compute their step
# scalars in float32 on the device. The conventions that follow them compute the same values on the
# host, one float32 operation at a time (NumPy float32 scalars round every operation), and hand
# them to every backend like any other host scalar, so the backends stay bitwise with the NumPy
# reference.


def float32_pow(base: float, step: int | float) -> Any:
    r"""``float32(base) ** float32(step)`` as a NumPy float32, subnormal results flushed to 0.

    This is the in-graph ``pow`` of XLA:CPU (optax's ``decay**count`` with an int32 count) and of
    TensorFlow's CPU kernels (Keras's ``ops.power``): both call the C library's ``powf``, which the
    NumPy float32 scalar power calls too, and both run flush-to-zero. Measured bitwise on x86-64
    Linux: jax 0.10.2 for bases 0.5, 0.8, 0.9, 0.95, 0.99 and 0.999 at every step up to 40000;
    TensorFlow 2.21 on 0-d tensors (as Keras computes its powers) for bases 0.9 and 0.999 at every
    step up to 3000 inside ``tf.function``. NumPy's *vectorised* float32 power, and TensorFlow's on
    vectors, are other approximations (thousands of 1-ulp differences over the same range), so
    these values are computed one scalar at a time.
    """
    import numpy as np

    with np.errstate(all="ignore"):
        value = np.float32(base) ** np.float32(step)
    return np.float32(0.0) if abs(value) < np.finfo(np.float32).tiny else value


def float32_bias_correction(beta: float, step: int | float) -> Any:
    r""":math:`1 - \beta^t` in float32 as optax computes it at jax's defaults
    (``optax.tree.bias_correction``: ``1 - decay**count``, decay a Python float and count int32)."""
    import numpy as np

    return np.float32(1.0) - float32_pow(beta, step)


def keras_bias_correction(beta: float, step: int) -> tuple[float, float]:
    r""":math:`1 - \beta^t` as Keras computes it in-graph from ``ops.power(ops.cast(beta, dtype),
    t)``: in float32 for parameters of 32 bits or fewer (``powf`` of the float32 beta, flush to
    zero: :func:`float32_pow`), and in float64 from the float32-rounded beta (``ops.cast`` turns a
    Python float into a float32 tensor first). Each is a Python float holding the exact value."""
    import numpy as np

    beta_32 = float(np.float32(beta))
    return float(np.float32(1.0) - float32_pow(beta, step)), 1.0 - beta_32**step


def float_bits(x: Array, xp: Any) -> int:
    """The width in bits of ``x``'s floating dtype, read from the dtype object of any backend
    (NumPy, jax and torch dtypes have ``itemsize``, TensorFlow's ``size``; array-api-strict's
    answers ``xp.finfo``). Static under tracing and compilation."""
    dtype = x.dtype
    for attribute in ("itemsize", "size"):
        width = getattr(dtype, attribute, None)
        if isinstance(width, int):
            return 8 * width
    return int(xp.finfo(dtype).bits)


# -- complex parameters under convention="optax" ---------------------------------------------------
# optax takes one second moment per complex entry, |g|^2 (optax/_src/numerics.py, ``abs_sq``), kept
# in a complex buffer whose imaginary part stays 0. The specs' complex branches write the update on
# the real and imaginary parts with the real ops above, so that every backend agrees on it: a
# backend's complex division is not one (NumPy multiplies by the reciprocal of the divisor, XLA
# divides each part).


def is_complex(x: Array, xp: Any) -> bool:
    """Whether ``x`` has a complex dtype (``xp.isdtype``). A namespace without ``isdtype``
    (TensorFlow's, :mod:`uniopt.tf`) has no complex arrays here, and neither has a dtype the
    namespace does not know (NumPy's ``isdtype`` raises ``TypeError`` for ml_dtypes' bfloat16)."""
    isdtype = getattr(xp, "isdtype", None)
    if isdtype is None:
        return False
    try:
        return bool(isdtype(x.dtype, "complex floating"))
    except TypeError:
        return False


def refuse_complex(owner: str, why: str, param: Array, xp: Any) -> None:
    """Raise ``ValueError`` for a complex ``param`` of a spec that defines no complex rule
    (``why``: the reason)."""
    if is_complex(param, xp):
        raise ValueError(
            f"{owner}: complex parameters are not supported ({why}); expected real floating "
            "parameters, or the real and imaginary parts as separate parameters"
        )


def real_scalars(sc: Any, xp: Any) -> Any:
    """``sc`` with each float field as a real 0-d array: the real part of a scalar rounded to a
    complex dtype (``cast_scalars`` rounds to the parameter's dtype), unchanged if already real."""
    return type(sc)(*(v if isinstance(v, bool) else xp.real(v) for v in sc))


def abs_sq(z: Array, xp: Any) -> Array:
    r""":math:`|z|^2` as optax's ``numerics.abs_sq`` computes it, ``real(conj(z) * z)``: the
    backend's complex multiply. NumPy's and XLA's CPU kernels both give ``fma(re, re, im*im)``
    there (measured bitwise on 200k float32 pairs, numpy 2.4 and jax 0.10.2 on AVX-512), which no
    sequence of rounded real ops reproduces."""
    return xp.real(xp.multiply(xp.conj(z), z))


def divide_by_scalar(x: Array, scalar: Array, xp: Any) -> Array:
    r"""``x / scalar`` correctly rounded, as XLA divides each part of a complex array by a complex
    scalar with zero imaginary part (optax's ``mu / bias_correction``). The divisor is made an
    array the size of ``x`` (``1 * scalar``, exact) first: compilers rewrite a division by a
    broadcast scalar into a multiplication by its reciprocal (XLA even eagerly), a different
    rounding. The quotient is multiplied by 1 (exact) so that a compiler cannot merge it with a
    following division (XLA rewrites ``(a / b) / c`` into ``a / (b * c)``)."""
    ones = xp.ones_like(x)
    return xp.multiply(xp.divide(x, xp.multiply(ones, scalar)), ones)


def from_parts(re: Array, im: Array, like: Array, xp: Any) -> Array:
    r"""The complex array ``re + i im`` of ``like``'s dtype (the array API has no constructor):
    ``re + (im * 1j)``, exact for finite parts (the product's real part is a zero)."""
    return xp.add(xp.astype(re, like.dtype), xp.multiply(xp.astype(im, like.dtype), 1j))


# -- reductions in a defined order -------------------------------------------------------------------
# A sum depends on the order of its additions, and every library picks its own (NumPy: pairwise blocks
# of 8 lanes; torch: vectorised partial sums; XLA and TensorFlow: their own trees, again different on
# GPUs). The specs that reduce (LAMB's norms) fix the order here, with elementwise additions only, so
# that every backend adds the same pairs and rounds each sum once: the result is the same bits
# everywhere, in every dtype, eagerly and compiled (no compiler reassociates floating-point adds).


# -- scheduling hints for fusing compilers (XLA) ---------------------------------------------------
# A rule whose outputs share an expensive intermediate (a division, a square root) and read an old
# value that another output replaces in place is run by XLA as several loops: it stores the
# intermediate and reads it back, and copies the old value before overwriting it, because without
# multi-output fusion each output is its own loop and nothing orders the loop that reads the old
# value before the one that overwrites it. These two hooks let a rule say so; they change no value.
# A namespace offers them as ``uniopt_recomputed`` and ``uniopt_after`` (uniopt.tf's under XLA;
# uniopt.jax's traced namespace the first);
# elsewhere (NumPy, torch, TensorFlow outside XLA) they are absent and the rule runs as written.


def recomputed(x: Array, xp: Any) -> Array | None:
    """``x`` again, as a value a compiler does not identify with ``x`` (a bitwise no-op it cannot
    see through), so that an expression built on it is computed again inside the loop that reads it
    instead of being stored once and read back; ``None`` where the namespace offers no such value
    (the caller then reuses what it computed from ``x``, the same bits)."""
    hook = getattr(xp, "uniopt_recomputed", None)
    return None if hook is None else hook(x)


def after(x: Array, first: Array, xp: Any) -> Array:
    """``x``, the same bits, computed after ``first`` is (one element of ``first`` enters ``x``'s
    loop as a bitwise no-op): an in-place update of an array that ``first``'s loop reads then waits
    for it instead of working on a copy. ``x`` itself where the namespace offers no ordering."""
    hook = getattr(xp, "uniopt_after", None)
    return x if hook is None else hook(x, first)


def materialized(x: Array, xp: Any) -> Array:
    """``x``, the same bits, as a value a compiler stores once for the ops that read it, instead of
    computing it again inside each of them; ``x`` itself where the namespace offers no such value
    (``uniopt_materialized``). Muon's Newton-Schulz iterates pass through it: on a 1x1 matrix every
    product is an elementwise op to inductor, which then inlined each iterate into the next, an
    expression read about six times more per iteration (uniopt.torch's compiled step: 115 s of
    compilation against 11 to 14 s for 1x5, 5x1 and 3x4; tests/torch_adapter/test_muon_torch.py)."""
    hook = getattr(xp, "uniopt_materialized", None)
    return x if hook is None else hook(x)


def size(x: Array) -> int:
    """The number of elements of ``x`` (1 for a 0-d array). A product over a list, not a generator:
    ``torch.compile`` traces ``math.prod`` of a list, and breaks its graph at one of a generator."""
    return math.prod([int(s) for s in x.shape])


def sum_pairwise(x: Array, xp: Any, *, of: Callable[[Array], Array] | None = None) -> Array:
    r"""The sum of every element of ``x`` (or of ``of(x)``) in one defined order, as a 0-d array of
    ``x``'s dtype.

    Pairwise halving: with ``n`` elements (``x`` read in C order) and ``h`` the largest power of
    two below ``n``, element ``i < n - h`` becomes ``x[i] + x[i + h]`` and elements
    ``n - h <= i < h`` are kept as they are; repeat on the first ``h`` until one is left. Every
    addition is one correctly rounded elementwise ``add``, so NumPy, torch, TensorFlow and XLA give
    the same bits; the rounding error is at most :math:`\lceil\log_2 n\rceil` ulp of the
    partial sums (the error bound of pairwise summation, Higham 2002, section 4.2). ``n - 1``
    additions in :math:`\lceil\log_2 n\rceil` array ops (slices of views: no gather). An empty
    ``x`` sums to ``+0``; a single element is returned as it is (``-0`` kept).

    ``of``: an elementwise function (``lambda t: xp.multiply(t, t)`` for a sum of squares), applied
    to the slices of the first halving rather than to ``x`` first: the same values, so the same
    bits as ``sum_pairwise(of(x), xp)``, but a fusing compiler (XLA) then computes ``of`` inside
    the first halving's kernel instead of writing ``of(x)`` out and reading it back (measured
    under ``jax.jit`` on 1.575M float32 elements: 0.31 against 0.89 ms for a sum of squares).
    """
    flat = xp.reshape(x, (-1,))
    if int(flat.shape[0]) == 0:  # +0, exact in every library (uniopt.tf's sum takes no axis)
        return xp.sum(flat if of is None else of(flat))
    return sum_pairwise_axis(flat, 0, xp, of=of)


def squared(xp: Any) -> Callable[[Array], Array]:
    """``t -> xp.multiply(t, t)``: each square rounded once, for ``of=`` of :func:`sum_pairwise`
    and :func:`sum_pairwise_axis` (sums of squares)."""
    return lambda t: xp.multiply(t, t)


def norm(x: Array, xp: Any, axis: int | None = None) -> Array:
    r"""The Euclidean (Frobenius) norm :math:`\sqrt{\sum_i x_i^2}` of all of ``x``, a 0-d array
    of ``x``'s dtype (or along ``axis``, kept with length 1: :func:`sum_pairwise_axis`): each
    square rounded once (``x * x``), summed by :func:`sum_pairwise`, one correctly rounded
    ``sqrt``. No rescaling: squares overflow to ``inf`` above about
    :math:`1.8\times10^{19}` in float32 (as in Keras's ``sqrt(sum(x**2))``; ``jnp.linalg.norm``
    does not rescale either). float16 is squared, summed and square-rooted in float32 (each
    square exact there) and the norm rounded once to float16 (:func:`accumulated`: a float16 sum
    of squares overflows above 65,504, as ``jnp.sum`` and torch's norms avoid by accumulating in
    float32)."""
    wide = accumulated(x, xp)
    total = (
        sum_pairwise(wide, xp, of=squared(xp))
        if axis is None
        else sum_pairwise_axis(wide, axis, xp, keepdims=True, of=squared(xp))
    )
    return rounded_as(xp.sqrt(total), x, xp)


def trust_ratio(param_norm: Array, update_norm: Array, xp: Any, *, keras: bool = False) -> Array:
    r"""LAMB's layer-wise trust ratio :math:`\|\theta\| / \|u\|`, and 1 where either norm is 0:
    a 0-d array.

    The two frameworks differ only where a norm is NaN. optax (``scale_by_trust_ratio`` with
    ``min_norm=0``: ``where(pn == 0 or un == 0, 1, pn / un)``) then gives NaN, and so does uniopt's
    own convention; Keras (``keras/src/optimizers/lamb.py``:
    ``where(pn > 0, where(un > 0, pn / un, 1), 1)``, ``keras=True``) gives 1."""
    one, zero = xp.ones_like(param_norm), xp.zeros_like(param_norm)
    ratio = xp.divide(param_norm, update_norm)
    if keras:
        inner = xp.where(xp.greater(update_norm, zero), ratio, one)
        return xp.where(xp.greater(param_norm, zero), inner, one)
    either_zero = xp.logical_or(xp.equal(param_norm, zero), xp.equal(update_norm, zero))
    return xp.where(either_zero, one, ratio)


# -- reductions along one axis, and divisions by counts (Adafactor's factored statistics) -----------
# Sums along one axis in the order of sum_pairwise (each 1-d slice along the axis summed as
# sum_pairwise sums it), and a division that no compiler turns into a multiplication: elementwise
# ops, slices, reshape and concat only, so every backend computes the same bits.


def sum_pairwise_axis(
    x: Array, axis: int, xp: Any, *, keepdims: bool = False, of: Callable[[Array], Array] | None = None
) -> Array:
    r"""The sums of ``x`` (or of ``of(x)``) along ``axis`` in one defined order:
    :func:`uniopt._math.sum_pairwise` applied to every 1-d slice along ``axis`` at once.

    With ``n`` the axis length and ``h`` the largest power of two below ``n``, slice ``i < n - h``
    becomes ``x[i] + x[i + h]`` (one elementwise ``add`` of the two half-slabs
    ``x[..., :n-h, ...]`` and ``x[..., h:n, ...]``), slices ``n - h <= i < h`` are kept, and the
    first ``h`` are halved again until one is left. So the result along a 1-d ``x`` is exactly
    ``sum_pairwise(x)``, and every element of the result is the pairwise sum of its slice:
    :math:`\lceil\log_2 n\rceil` array ops, ``n - 1`` additions per slice, error at most
    :math:`\lceil\log_2 n\rceil` ulp of the partial sums. An empty axis sums to ``+0``.
    ``of``: an elementwise function applied to the first halving's half-slabs, as in
    :func:`sum_pairwise` (the same bits as ``sum_pairwise_axis(of(x), ...)``).

    A halving is computed as one ``add`` of ``x[..., :h, ...]`` and ``x[..., h:n, ...]`` padded
    with ``-0`` to ``h`` slices: ``v + (-0)`` is ``v`` for every ``v`` (``±0``, infinities and NaN
    included) in IEEE arithmetic, so a kept slice is its own value, and the halving is a single
    elementwise op rather than an ``add`` and a concatenation with the kept slices. Under XLA the
    concatenation read the producer of ``x`` twice, so XLA stored it (an array the size of ``x``
    written and read back: ``u`` in Adafactor's clipping RMS); padded, the producer fuses into the
    halving (measured with uniopt.jax's Adafactor, jitted and donated, on 16 tensors of 1.575M
    float32 elements: 166.8 ms against optax's 136.7 before, 141.0 after, the same bits).
    A namespace may form such a halving itself, the same values without the padding
    (``xp.uniopt_odd_halving(x, axis, h, of)``, ``None`` to pad): uniopt.tf does under XLA where
    the padding spans 4,096 bytes or more past the end of ``x``, where XLA's CPU compiler would aim the
    padding's masked vector loads, and in arrays of 32,768 elements or more, where XLA would leave
    the padded slice a loop of its own (``uniopt.tf.xp.uniopt_odd_halving``).
    """
    ndim = len(x.shape)
    axis = axis % ndim
    n = int(x.shape[axis])
    lead = (slice(None),) * axis

    def part(a: Array, start: int, stop: int) -> Array:
        return a[(*lead, slice(start, stop), ...)]  # the array API wants every axis indexed

    # a namespace may split in one op where slicing takes one per piece (uniopt.tf: a graph op and
    # three constants per slice); the same elements either way
    split = getattr(xp, "uniopt_split", None)
    # and may form a halving of a length not a power of two itself, the same values without the
    # padding (uniopt.tf under XLA: uniopt_odd_halving); None where it pads as below
    odd_halving = getattr(xp, "uniopt_odd_halving", None)
    if n == 0:
        out = xp.sum(x if of is None else of(x), axis=axis, keepdims=True)  # +0, exact in every library
    else:
        out, first = x, of  # of: on the first halving's slabs only, so each element's computed once
        while n > 1:
            h = 1 << ((n - 1).bit_length() - 1)  # the largest power of two below n
            halved = None if 2 * h == n or odd_halving is None else odd_halving(out, axis, h, first)
            if halved is None:
                low, high = split(out, axis, h) if split is not None else (part(out, 0, h), part(out, h, n))
                if first is not None:
                    low, high = first(low), first(high)
                if 2 * h != n:  # the kept slices n-h <= i < h: plus -0, which leaves every value as it is
                    high = xp.concat([high, xp.full_like(part(low, 0, 2 * h - n), -0.0)], axis=axis)
                halved = xp.add(low, high)
            out, n, first = halved, h, None
        if first is not None:  # a single element along the axis
            out = first(out)
    if keepdims:
        return out
    shape = tuple(int(s) for i, s in enumerate(x.shape) if i != axis)
    return xp.reshape(out, shape)


def divide_exactly(x: Array, y: Array, xp: Any) -> Array:
    r"""``x / y`` correctly rounded per element, ``y`` broadcastable to ``x`` (a 0-d value, a
    ``keepdims`` reduction, a count): :func:`uniopt._math.divide_by_scalar`, whose divisor is made
    as large as ``x`` so that no compiler rewrites the division into a multiplication by a rounded
    reciprocal (XLA does for a broadcast divisor under ``jit``, and for a constant one even
    eagerly and 0-d: measured 34% of float32 quotients off). Unlike ``divide_by_scalar``, the
    dividend is first multiplied by those ones too: XLA rewrites ``(a / b) / c`` into
    ``a / (b * c)`` also when the first division comes before (measured: Keras's
    ``(g / sqrt(v)) / clip`` under ``uniopt.jax``'s jit, 6562 of 1.2M parameter values 1+ ulp off).
    A 0-d ``x`` goes through shape ``(1,)``, where the adapters' ``ones_like`` is opaque to the
    compiler."""
    if len(x.shape) == 0:
        return xp.reshape(divide_exactly(xp.reshape(x, (1,)), y, xp), ())
    ones = xp.ones_like(x)
    # x * 1 (exact) first: XLA rewrites (a / b) / c into a / (b * c), so a quotient arriving here
    # (Keras's u = g / sqrt(v), then u / clip) must reach the division as a rounded value; then
    # divide_by_scalar's own form (a full-size divisor, the quotient times 1)
    x = xp.multiply(x, ones)
    return xp.multiply(xp.divide(x, xp.multiply(ones, y)), ones)


def accumulated(x: Array, xp: Any) -> Array:
    """``x`` in the dtype a reduction of it accumulates in: float16 widened to float32 (exact),
    every other dtype as it is. In float16 a count of 65,520 or more rounds to infinity and a sum
    of squares overflows above 65,504, so its means, norms and RMS are computed in float32 and
    rounded once to float16 (:func:`rounded_as`), as torch's reductions (float32 accumulation of
    half tensors), Keras's means and ``jnp.mean`` (``_upcast_f16``) compute them."""
    return xp.astype(x, xp.float32) if dtype_name(x.dtype) == "float16" else x


def rounded_as(value: Array, like: Array, xp: Any) -> Array:
    """``value`` rounded once (to nearest, ties to even) to ``like``'s dtype; unchanged where it is
    already that dtype (the other half of :func:`accumulated`)."""
    return value if value.dtype == like.dtype else xp.astype(value, like.dtype)


def mean_axis(x: Array, axis: int, xp: Any, one: Array, *, keepdims: bool = False) -> Array:
    """:func:`sum_pairwise_axis` divided by the axis length (:func:`divide_exactly`); ``one`` is
    any 0-d array of ``x``'s dtype and device (the count is made from it with ``full_like``).
    float16 is summed and divided in float32 and rounded once (:func:`accumulated`)."""
    wide = accumulated(x, xp)
    total = sum_pairwise_axis(wide, axis, xp, keepdims=keepdims)
    count = xp.full_like(accumulated(one, xp), float(x.shape[axis]))
    return rounded_as(divide_exactly(total, count, xp), x, xp)


def rms(x: Array, xp: Any, one: Array) -> Array:
    r"""Root mean square :math:`\sqrt{\sum x_i^2 / n}` of all of ``x``, a 0-d array: each square
    rounded once, :func:`uniopt._math.sum_pairwise`, one exact division by ``n`` (rounded to the
    dtype: exact below :math:`2^{24}` elements in float32), one correctly rounded ``sqrt``. float16
    is squared, summed, divided and square-rooted in float32 (each square exact there) and the RMS
    rounded once to float16 (:func:`accumulated`)."""
    n = size(x)
    wide = accumulated(x, xp)
    total = sum_pairwise(wide, xp, of=squared(xp))
    count = xp.full_like(accumulated(one, xp), float(n))
    return rounded_as(xp.sqrt(divide_exactly(total, count, xp)), x, xp)


# -- lower-precision state (optax's mu_dtype / accumulator_dtype) ------------------------------------
# A slot of Spec.lower_precision_slots may be stored in a narrower float dtype than its parameter's.
# The rule widens it to the parameter's dtype (exact: every value of the stored dtype is one of the
# parameter's), computes in the parameter's dtype, and rounds the slot's new value to nearest with
# ties to even to the stored dtype (widened, stored): once, or from float64 to a 16-bit dtype through
# float32, as XLA converts. The update is computed from the unrounded value. Conversions from
# float32 (and float64 to float32) are correctly rounded in NumPy (ml_dtypes for bfloat16), torch,
# TensorFlow and XLA, so every backend stores the same bits. optax's convention adds one rounding
# optax makes (stored_product).

EXACTLY_WIDENS: dict[str, tuple[str, ...]] = {
    "float64": ("float32", "bfloat16", "float16"),
    "float32": ("bfloat16", "float16"),
}
"""Parameter dtype -> the narrower real floating dtypes a slot may be stored in beside it: those
whose every value (subnormals included) the parameter's dtype holds exactly. ``bfloat16`` beside
``float16`` (or the reverse) is not one: bfloat16's range exceeds float16's, float16's precision
bfloat16's."""

_FORMATS = {
    "bfloat16": (8, -133, 3.3895313892515355e38),
    "float16": (11, -24, 65504.0),
    "float32": (24, -149, 3.4028234663852886e38),
}
"""dtype -> (significand bits, exponent of the smallest subnormal, largest finite value)."""


def dtype_name(dtype: Any) -> str:
    """The name of a dtype object of any backend, or a dtype name itself: ``"bfloat16"``, ...
    (NumPy, ml_dtypes, jax and TensorFlow dtypes have ``name``; torch's print as ``torch.<name>``)."""
    if isinstance(dtype, str):
        return dtype
    name = getattr(dtype, "name", None)
    if isinstance(name, str):
        return name
    if isinstance(dtype, type):  # a scalar type: numpy.float32, ml_dtypes.bfloat16
        import numpy as np

        return np.dtype(dtype).name
    return str(dtype).rsplit(".", 1)[-1]


def dtype_in(dtype: Any, xp: Any) -> Any:
    """The namespace's dtype named like ``dtype`` (a name or a dtype object); NumPy's
    ``bfloat16`` is ml_dtypes' (NumPy has none of its own). ``ValueError`` for a namespace without
    it (array-api-strict has no bfloat16), naming it."""
    name = dtype_name(dtype)
    found = getattr(xp, name, None)
    if found is None and name == "bfloat16" and "numpy" in getattr(xp, "__name__", ""):
        try:
            import ml_dtypes  # NumPy's bfloat16 (jax and TensorFlow depend on it)
        except ImportError:  # pragma: no cover - installed with every framework
            raise ValueError("bfloat16 slots on NumPy need ml_dtypes (pip install ml_dtypes)") from None
        found = ml_dtypes.bfloat16
    if found is None:
        raise ValueError(f"the namespace {getattr(xp, '__name__', xp)} has no {name} dtype")
    return found


def widened(slot: Array, param: Array, xp: Any) -> Array:
    """A slot as the rule computes with it: in ``param``'s dtype, widened exactly where it is
    stored narrower (unchanged otherwise)."""
    return slot if slot.dtype == param.dtype else xp.astype(slot, param.dtype)


def stored(value: Array, slot: Array, xp: Any) -> Array:
    """A slot's new value (computed in the parameter's dtype) as it is stored: rounded to nearest
    with ties to even to the dtype of ``slot`` (the value before the step) where that is narrower;
    unchanged otherwise. From float64 to a 16-bit dtype it is rounded to float32 first, then to the
    16-bit dtype, as XLA converts float64 to bfloat16 (eagerly and under jit, measured with jax
    0.10.2; NumPy's ml_dtypes rounds directly, and differs where the float32 rounding lands on a
    bfloat16 tie): two roundings every backend makes alike."""
    if value.dtype == slot.dtype:
        return value
    if float_bits(value, xp) == 64 and float_bits(slot, xp) == 16:
        value = xp.astype(value, xp.float32)
    return xp.astype(value, slot.dtype)


def stored_product(slot: Array, factor: Array, param: Array, xp: Any) -> Array:
    r"""``slot * factor`` rounded to ``slot``'s (stored) dtype and widened again to ``param``'s: the
    product optax forms when it multiplies a moment stored in ``mu_dtype`` by a Python-float decay
    (``b1 * mu`` in ``optax.tree.update_moment``: jax's weak typing keeps the product in the moment's
    dtype, with the decay rounded to that dtype first). ``factor`` is that rounded decay, held in the
    parameter's dtype (:func:`round_to_dtype` on the host). The product of two bfloat16 (float16)
    values is exact in float32, so one rounding to the stored dtype is the correctly rounded
    product. Where the slot is stored in the parameter's dtype, ``slot * factor``."""
    product = xp.multiply(widened(slot, param, xp), factor)
    return widened(stored(product, slot, xp), param, xp)


def round_to_dtype(value: float, dtype: str) -> float:
    """``value`` rounded once (to nearest, ties to even) to ``bfloat16``, ``float16`` or
    ``float32``, as a Python float holding the exact value: the host's rounding of a Python-float
    hyperparameter to a slot's dtype, as jax's weak typing rounds it (against ml_dtypes' rounding
    of 20,000 random values and edge cases in tests/test_state_dtype.py, and jax's ``decay * x``
    of a bfloat16 or float16 ``x`` in tests/jax_adapter/test_jax_state_dtype.py). Subnormals kept,
    overflow to infinity, NaN and infinities unchanged."""
    if dtype == "float64" or not math.isfinite(value) or value == 0.0:
        return float(value)
    bits, min_exp, largest = _FORMATS[dtype]
    _, exp = math.frexp(value)  # |value| = m * 2**exp, 0.5 <= m < 1
    quantum = max(exp - bits, min_exp)  # the dtype's spacing at |value|
    scaled = math.ldexp(value, -quantum)  # exact: a power-of-two scaling of a float64
    # round(): to nearest, ties to even; copysign keeps the sign of a value that rounds to zero
    rounded = math.copysign(math.ldexp(float(round(scaled)), quantum), value)
    if abs(rounded) > largest:
        # beyond the largest finite value: infinity where value is at least halfway to the next
        # power of the spacing (rounded then exceeds largest)
        return math.copysign(math.inf, value)
    return rounded
