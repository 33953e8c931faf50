"""The array namespace the specs run on under TensorFlow: exactly the functions they call.

array-api-compat does not cover TensorFlow, so this module maps each function a spec's ``rule`` and
``init_slot`` use (plus ``asarray``, which :func:`uniopt._spec.cast_scalars` calls when the core's own
``Spec.update`` runs on TF tensors) to one TensorFlow op. Each is an IEEE 754 operation that TF
rounds correctly (eager and ``tf.function``; XLA on CPU needs the flags in docs/tf.md), so the op
sequence of a spec gives the same bits as NumPy. Nothing here computes update math of its own.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

__all__ = [
    "abs",
    "add",
    "asarray",
    "astype",
    "bfloat16",
    "concat",
    "divide",
    "equal",
    "expand_dims",
    "float32",
    "full_like",
    "greater",
    "logical_or",
    "matmul",
    "matrix_transpose",
    "maximum",
    "multiply",
    "negative",
    "ones_like",
    "reshape",
    "sign",
    "sqrt",
    "subtract",
    "sum",
    "uniopt_after",
    "uniopt_odd_halving",
    "uniopt_recomputed",
    "uniopt_split",
    "where",
    "zeros",
    "zeros_like",
]


def add(x1: Any, x2: Any) -> tf.Tensor:
    """The correctly rounded sum; traced, an operand beside a constant is kept from being
    reassociated with it (:func:`_kept_apart`)."""
    return tf.math.add(*_kept_apart(x1, x2, _SUMS))


def subtract(x1: Any, x2: Any) -> tf.Tensor:
    """The correctly rounded difference; traced, as :func:`add`."""
    return tf.math.subtract(*_kept_apart(x1, x2, _SUMS))


def _tensors(x1: Any, x2: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """Both operands as tensors, a Python number beside a tensor taking that tensor's dtype (as
    ``tf.math.add`` converts it: ``x64 + 0.5`` is float64)."""
    if tf.is_tensor(x1) and not tf.is_tensor(x2):
        return x1, tf.convert_to_tensor(x2, dtype_hint=x1.dtype)
    if tf.is_tensor(x2) and not tf.is_tensor(x1):
        return tf.convert_to_tensor(x1, dtype_hint=x2.dtype), x2
    return tf.convert_to_tensor(x1), tf.convert_to_tensor(x2)


_SUMS = frozenset({"Add", "AddV2", "Sub"})
_PRODUCTS = frozenset({"Mul", "Div"})


def _kept_apart(x1: Any, x2: Any, kinds: frozenset[str]) -> tuple[tf.Tensor, tf.Tensor]:
    """``x1, x2`` as tensors; traced, where exactly one of them is a constant and the other the
    result of an op of ``kinds``, that one passed through ``minimum(v, inf)`` (exact for every
    ``v``, NaN included). Grappler's constant folding, in a ``tf.function`` that returns a value,
    otherwise pushes the constant down into the other op (``ConstantPushDown`` in
    ``tensorflow/core/grappler/optimizers/constant_folding.cc``: ``C * (X * Y)`` into
    ``X * (C * Y)``, ``C + (X - Y)`` into ``X + (C - Y)``, in float32 and float64), a different
    rounding (measured: Muon's shape scale times ``lr`` times the orthogonalised update, 245 of
    33,825 float32 elements of a ``(33, 1025)`` step off by up to 16 ulp with
    ``matmul="exact"``, bitwise with it). Eagerly, and where neither or both are constants,
    nothing is added."""
    t1, t2 = _tensors(x1, x2)
    if tf.executing_eagerly():
        return t1, t2
    c1, c2 = tf.get_static_value(t1) is not None, tf.get_static_value(t2) is not None
    if c1 == c2:
        return t1, t2
    other = t2 if c1 else t1
    if other.op.type not in kinds:
        return t1, t2
    kept = tf.math.minimum(other, tf.constant(float("inf"), other.dtype))
    return (t1, kept) if c1 else (kept, t2)


def multiply(x1: Any, x2: Any) -> tf.Tensor:
    """The correctly rounded product. Traced, a product of two arrays of different shapes, neither
    0-d (a broadcast such as Adafactor's ``g * row_factor * col_factor``, ``(n, m) * (n, 1) *
    (1, m)``), is passed through ``minimum(x, inf)`` (exact for every ``x``, NaN included), so that
    TensorFlow's graph optimizer cannot reassociate a chain of such products to broadcast less
    (a different rounding; measured in ``tf.function`` on Adafactor's optax convention: up to 2 ulp
    in the parameters and 512 in the momentum without it, bitwise with it). Products with a 0-d
    operand, the only broadcasts of the elementwise specs, are left alone: reassociating them was
    not observed (those specs are bitwise in ``tf.function`` without it), except where the 0-d
    operand is a constant (Muon's shape scale, ``xp.asarray`` of a host float): XLA moves a
    constant factor along a chain of products, ``(a * c) * b`` into ``(a * b) * c`` (measured: 1
    ulp in a column matrix's step under XLA, and 30752 of 100k float32 chains), so such a product
    is passed through ``minimum(p, inf) + (-0)`` (exact, as in :func:`sqrt`: grappler keeps the
    ``minimum``, XLA the addition). Before any of that, an operand that is itself a product beside
    a constant is kept apart from it (:func:`_kept_apart`), as in :func:`add`."""
    t1, t2 = _kept_apart(x1, x2, _PRODUCTS)
    product = tf.math.multiply(t1, t2)
    if tf.executing_eagerly():
        return product
    s1, s2 = t1.shape, t2.shape
    if s1 == s2:
        return product
    infinity = tf.constant(float("inf"), product.dtype)
    if s1.rank == 0 or s2.rank == 0:
        scalar = t1 if s1.rank == 0 else t2
        if tf.get_static_value(scalar) is None:  # a traced scalar: not moved (measured)
            return product
        return tf.math.add(tf.math.minimum(product, infinity), tf.constant(-0.0, product.dtype))
    return tf.math.minimum(product, infinity)


def divide(x1: Any, x2: Any) -> tf.Tensor:
    """True division (``RealDiv`` for floats), correctly rounded."""
    return tf.math.truediv(x1, x2)


def sqrt(x: Any) -> tf.Tensor:
    """The correctly rounded root; traced, it is passed through ``minimum(r, inf) + (-0)``, exact for
    every ``r`` (``-0``, infinities and NaN included), so that no optimizer turns a division by it
    into a multiplication by ``rsqrt``, a different rounding: TensorFlow's graph optimizer rewrites
    ``x / sqrt(y)`` in ``tf.function`` unless a ``minimum`` stands between them, and XLA does unless
    an addition does (it removes the ``minimum``; measured on 100k float32 pairs: 41561 results
    differed from NumPy's in each mode without it, none with it). Its operand is passed through
    ``x + (-0)`` too (exact), so that XLA cannot see ``sqrt(a * a)``, which it rewrites into
    ``|a|``: a different value where ``a * a`` rounds, in float16 where it becomes subnormal
    (measured on 20k float16 values: 19 differed from NumPy's, none with the guard; a 1x1 matrix's
    norm in Muon)."""
    if tf.executing_eagerly():
        return tf.math.sqrt(x)
    x = tf.convert_to_tensor(x)
    infinity, negative_zero = tf.constant(float("inf"), x.dtype), tf.constant(-0.0, x.dtype)
    root = tf.math.sqrt(tf.math.add(x, negative_zero))
    return tf.math.add(tf.math.minimum(root, infinity), negative_zero)


def negative(x: Any) -> tf.Tensor:
    return tf.math.negative(x)


def abs(x: Any) -> tf.Tensor:
    """``|x|``: the sign bit cleared (exact; subnormals kept, NaN stays NaN)."""
    return tf.math.abs(x)


# float dtype -> (signed and unsigned integers of its width, its infinity's bits shifted left by one)
_BITS_OF = {
    tf.float16: (tf.int16, tf.uint16, 0xF800),
    tf.bfloat16: (tf.int16, tf.uint16, 0xFF00),
    tf.float32: (tf.int32, tf.uint32, 0xFF000000),
    tf.float64: (tf.int64, tf.uint64, 0xFFE0000000000000),
}


def sign(x: Any) -> tf.Tensor:
    """The array API's ``sign`` for real floats, as NumPy gives it: ``1`` for ``x > 0``, ``-1`` for
    ``x < 0``, NaN for NaN (``x`` itself), and for ``±0`` ``+0`` (``-0`` stays ``-0`` in bfloat16,
    as ml_dtypes' ``sign`` leaves a zero as it is).

    Decided on the bits alone: the sign bit; zero when the bits shifted left by one are 0; NaN when
    they exceed the infinity's. TensorFlow's CPU kernels run with denormals-are-zero, where a
    subnormal compares equal to 0 and ``tf.math.sign(1e-45)`` is ``1e-45`` (eagerly; ``-0.0`` under
    XLA), and NumPy gives ``1``; under XLA a float test (``is_nan``) beside the bit tests made
    subnormals read as 0 again. Exact in every mode (eager, ``tf.function``, XLA).
    """
    x = tf.convert_to_tensor(x)
    signed_int, unsigned_int, infinity = _BITS_OF[x.dtype]
    bits = tf.bitcast(x, signed_int)
    shifted = tf.bitcast(tf.bitwise.left_shift(bits, tf.ones_like(bits)), unsigned_int)
    ones = tf.ones_like(x)
    out = tf.where(bits < 0, -ones, ones)
    zero = x if x.dtype == tf.bfloat16 else tf.zeros_like(x)
    out = tf.where(tf.equal(shifted, 0), zero, out)
    return tf.where(shifted > tf.constant(infinity, unsigned_int), x, out)


def maximum(x1: Any, x2: Any) -> tf.Tensor:
    """Elementwise maximum; NaN propagates (eager, ``tf.function``; XLA on CPU only with
    ``--xla_cpu_enable_fast_min_max=false``)."""
    return tf.math.maximum(x1, x2)


def where(condition: Any, x1: Any, x2: Any) -> tf.Tensor:
    """Pick ``x1`` where ``condition`` holds (broadcasting, so a 0-d traced flag works)."""
    return tf.where(condition, x1, x2)


def zeros_like(x: Any) -> tf.Tensor:
    return tf.zeros_like(x)


def zeros(shape: tuple[int, ...], dtype: Any = None, device: Any = None) -> tf.Tensor:
    """Zeros of ``shape`` (a slot not shaped like its parameter: ``Spec.init_slot``); ``device``
    is ignored, as in :func:`asarray`."""
    del device
    return tf.zeros(shape, dtype=dtype or tf.float32)


def ones_like(x: Any) -> tf.Tensor:
    """Ones of ``x``'s shape and dtype. Traced, they are computed from ``x``'s bits (``bits & 0``,
    then ``| bits of 1``, bitcast back: exactly 1 for every ``x``, NaN and infinities included), so
    TensorFlow's graph optimizer cannot see the constant: its constant folding otherwise turns
    ``x * ones`` into ``x`` and a division by ``ones * count`` (a constant) into a multiplication
    by the rounded reciprocal, which :func:`uniopt._math.divide_exactly` exists to prevent (measured
    on Adafactor's row and column means in ``tf.function``: 1 to 4 ulp off from the first step
    without it, bitwise with it)."""
    x = tf.convert_to_tensor(x)
    if tf.executing_eagerly() or x.dtype not in _BITS_OF:
        return tf.ones_like(x)
    # integer zeros from the bits (_hidden_zero): XLA folds ``bits & 0``, and then a division by
    # ``ones * count`` becomes a multiplication again (measured: 11 of 20 float32 quotients by 3 off
    # under jit_compile); it does not reason about shifts of masked bits
    signed_int = _BITS_OF[x.dtype][0]
    one_bits = tf.bitcast(tf.constant(1.0, x.dtype), signed_int)
    return tf.bitcast(tf.bitwise.bitwise_or(_hidden_zero(x), one_bits), x.dtype)


def full_like(x: Any, fill_value: float) -> tf.Tensor:
    """``x``'s shape filled with ``fill_value`` rounded once to ``x``'s dtype."""
    x = tf.convert_to_tensor(x)
    return tf.fill(tf.shape(x), tf.constant(fill_value, dtype=x.dtype))


float32 = tf.float32
"""The float32 dtype (optax's float32 momentum accumulator under ``convention="optax"``)."""

bfloat16 = tf.bfloat16
"""The bfloat16 dtype: :func:`uniopt.muon.round_to_bfloat16` (Muon's torch convention) rounds
float32 values to it and back with :func:`astype`."""


def astype(x: Any, dtype: Any) -> tf.Tensor:
    """``x`` converted to ``dtype``, correctly rounded (``tf.cast``; float32 to bfloat16 rounds to
    nearest, ties to even, as ml_dtypes does: measured eagerly, in ``tf.function`` and under XLA on
    every bfloat16 tie and 200k spread float32 values, 0 differences in normal numbers)."""
    return tf.cast(x, dtype)


def asarray(obj: Any, dtype: Any = None, device: Any = None, copy: Any = None) -> tf.Tensor:
    """A tensor of ``obj`` in ``dtype`` (a Python float is rounded once); ``device`` is ignored:
    TensorFlow places the op with its inputs."""
    del device, copy
    return tf.constant(obj, dtype=dtype) if not tf.is_tensor(obj) else tf.cast(obj, dtype or obj.dtype)


# -- what uniopt._math.sum_pairwise and trust_ratio use (no arithmetic beyond add's) --------------


def reshape(x: Any, shape: tuple[int, ...]) -> tf.Tensor:
    return tf.reshape(x, shape)


def concat(arrays: Any, axis: int = 0) -> tf.Tensor:
    return tf.concat(list(arrays), axis)


def uniopt_split(x: Any, axis: int, h: int) -> tuple[tf.Tensor, tf.Tensor]:
    """``x``'s first ``h`` slices along ``axis`` and the others (``0 < h <`` the axis's static
    length), as :func:`uniopt._math.sum_pairwise_axis` halves it: one ``Split`` op (``SplitV``
    where the two differ in length), where two slices are two ``StridedSlice`` ops of three
    constants each. The same elements, in a graph of fewer nodes, which ``tf.function`` traces and
    holds per variable (docs/tf.md, "Graph size")."""
    x = tf.convert_to_tensor(x)
    n = int(x.shape[axis])
    low, high = tf.split(x, 2 if 2 * h == n else [h, n - h], axis=axis)
    return low, high


PADDING_READ_LIMIT = 4096
"""Bytes past an array's end that the padded halving of a pairwise sum may have XLA load from
(masked off): from there on :func:`uniopt_odd_halving` gathers instead. The size of a page (the
span is counted from the array's end, not from a page boundary)."""

GATHERED_HALVING_MIN_SIZE = 32768
"""The fewest elements of an array whose odd halvings :func:`uniopt_odd_halving` gathers whatever
the padding's reach."""


def uniopt_odd_halving(x: Any, axis: int, h: int, of: Any) -> tf.Tensor | None:
    r"""Under XLA, one halving of :func:`uniopt._math.sum_pairwise_axis` of ``x`` (``n`` slices
    along ``axis``, ``n`` not a power of two, ``h`` the largest power of two below ``n``), formed
    without padding: ``of(x[:h]) + where(i < n - h, of(x[min(h + i, n - 1)]), -0)``, the second
    operand gathered at clamped indices (``tf.gather``), so that nothing is read outside ``x``.
    The same values as the slice padded with ``-0`` (``of`` the identity where ``None``), so the
    same bits under the bitwise flags (``uniopt.tf.xla.XLA_BITWISE_FLAGS``; with XLA's default CPU
    flags, which contract products into fused multiply-adds, a sum of squares may round otherwise
    than padded, as either may otherwise than NumPy). ``axis`` may be negative. For arrays of at
    least :data:`GATHERED_HALVING_MIN_SIZE` elements, and wherever the padding spans
    :data:`PADDING_READ_LIMIT` bytes or more past the end of ``x``; ``None`` (pad)
    otherwise, eagerly, in ``tf.function`` without XLA (TensorFlow's ``ConcatV2`` reads no
    padding), for a dynamic shape, an empty array and a dtype that is not a float.

    Why: XLA's CPU compiler makes the padded operand a loop whose vector loads are masked where the
    padding is, at addresses past the end of ``x``, and over unmapped pages each masked-off load is
    a fault-suppressing microcode assist. Measured on an AMD EPYC (AVX2 masked loads): the first
    halving of a sum of squares of 1,575,000 float32 took 8.3 ms padded where the memory past the
    array was unmapped (0.4 to 0.8 ms where it happened to be mapped: which arrays pay depends on
    where the allocator put them), 0.7 ms gathered; 131,072 fully masked-off ``_mm256_maskload_ps``
    took 13 ms over unmapped pages and 0.5 ms over mapped ones (C, the same machine). And where the
    reach is short (a row sum of a matrix), XLA left the padded slice a loop of its own, written out
    at the halving's size and read back, where gathered it fuses into the addition. In uniopt.tf's
    Adafactor step (16 tensors of 1.575M float32, one process, interleaved, three processes):
    padded 51.2 to 61.5 ms, gathered where the reach is a page 44.1 to 48.4, gathered in every
    large array 41.3 to 44.3."""
    x = tf.convert_to_tensor(x)
    if not _traced_for_xla(x) or not x.shape.is_fully_defined() or x.shape.num_elements() == 0:
        return None
    axis %= len(x.shape)
    n, inner = int(x.shape[axis]), x.shape[axis + 1 :].num_elements()
    reach = (2 * h - n) * inner * x.dtype.size
    if reach < PADDING_READ_LIMIT and x.shape.num_elements() < GATHERED_HALVING_MIN_SIZE:
        return None
    # the slice indices i from an integer zero made of x's first element: TensorFlow and XLA would
    # fold a constant range into an index array and a mask (5 MB for h = 2**20) held in the
    # compiled program for each length, read from memory each step; an iota is computed in the loop
    i = tf.range(h) + _first_element_zero(x, tf.int32)
    lead = (slice(None),) * axis
    low = x[(*lead, slice(0, h))]
    high = tf.gather(x, tf.minimum(i + h, n - 1), axis=axis)
    if of is not None:
        low, high = of(low), of(high)
    kept = tf.reshape(i < n - h, (h,) + (1,) * (len(x.shape) - axis - 1))
    return add(low, tf.where(kept, high, full_like(high, -0.0)))


def sum(x: Any) -> tf.Tensor:
    """Used only for an empty array (``+0``); non-empty sums are :func:`uniopt._math.sum_pairwise`'s
    elementwise additions in a fixed order."""
    return tf.math.reduce_sum(x)


def equal(x1: Any, x2: Any) -> tf.Tensor:
    return tf.math.equal(x1, x2)


def greater(x1: Any, x2: Any) -> tf.Tensor:
    return tf.math.greater(x1, x2)


def logical_or(x1: Any, x2: Any) -> tf.Tensor:
    return tf.math.logical_or(x1, x2)


# -- what Muon's Newton-Schulz iteration uses (uniopt.muon) ------------------------------------------


def matmul(x1: Any, x2: Any) -> tf.Tensor:
    """The matrix product of two 2-D tensors (``tf.linalg.matmul``): TensorFlow's (Eigen's or
    oneDNN's) kernel, which sums each dot product in its own blocked order, so the result is not
    NumPy's bit for bit (nor XLA's, which emits its own dot): the spec's ``matmul="backend"``, whose
    distance the conformance matrix measures. ``matmul="exact"`` (:func:`uniopt.muon.matmul_exact`)
    does not call it."""
    return tf.linalg.matmul(x1, x2)


def matrix_transpose(x: Any) -> tf.Tensor:
    """The transpose of the last two axes (exact: no arithmetic)."""
    return tf.linalg.matrix_transpose(x)


def expand_dims(x: Any, axis: int) -> tf.Tensor:
    """``x`` with a new axis of length 1 at ``axis`` (exact)."""
    return tf.expand_dims(x, axis)


# -- scheduling hints under XLA (uniopt._math.recomputed and after) ----------------------------------


def _hidden_zero(x: tf.Tensor) -> tf.Tensor:
    """Integer zeros of ``x``'s shape from its bits: the bits without their sign, shifted right by
    all but one bit (XLA folds ``bits & 0``; it does not reason about this; see :func:`ones_like`)."""
    signed_int = _BITS_OF[x.dtype][0]
    magnitude = tf.bitwise.bitwise_and(tf.bitcast(x, signed_int), tf.constant(signed_int.max, signed_int))
    return tf.bitwise.right_shift(magnitude, tf.constant(signed_int.size * 8 - 1, signed_int))


def _first_element_zero(x: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """A 0-d integer zero of ``dtype`` made from the bits of ``x``'s first element
    (:func:`_hidden_zero`): a value no compiler folds, which makes what it enters wait for ``x``."""
    return tf.cast(_hidden_zero(tf.reshape(tf.reshape(x, [-1])[:1], [])), dtype)


def _or_bits(x: tf.Tensor, zero: tf.Tensor) -> tf.Tensor:
    """``x`` with the integer zero ``zero`` or-ed into its bits: the same bits."""
    signed_int = _BITS_OF[x.dtype][0]
    return tf.bitcast(tf.bitwise.bitwise_or(tf.bitcast(x, signed_int), zero), x.dtype)


# the fewest elements for which the hints pay: measured on Schedule-Free AdamW under XLA (float32,
# one process, interleaved steps), 20x25 matrices 108 -> 133 ms with them (2000 of them: the
# loops are in cache, and the hints add work), 128x128 12.2 -> 11.8, 256x256 7.7 -> 6.4, 512x512
# 11.0 -> 7.9, 1260x1250 37.5 -> 26.2
HINT_MIN_SIZE = 32768


def _traced_for_xla(*arrays: tf.Tensor) -> bool:
    """Whether the graph being traced is compiled by XLA and every array is a float of
    :data:`_BITS_OF` (one whose bits make a hidden integer zero)."""
    from ._scalars import in_xla_context

    if tf.executing_eagerly() or not in_xla_context():
        return False
    return all(a.dtype in _BITS_OF for a in arrays)


def _hints_apply(*arrays: tf.Tensor) -> bool:
    """Under XLA only (``tf.function`` runs each op as its own kernel, where a no-op would be one
    more pass over memory, and eagerly there is nothing to schedule), and only on arrays of at least
    :data:`HINT_MIN_SIZE` elements, of a static shape."""
    return _traced_for_xla(*arrays) and all((a.shape.num_elements() or 0) >= HINT_MIN_SIZE for a in arrays)


def uniopt_recomputed(x: Any) -> tf.Tensor | None:
    """Under XLA, ``x`` or-ed with zeros made from its own bits (the same bits, a value XLA does
    not identify with ``x``): an expression of it is not merged with the same expression of ``x``,
    so XLA fuses it into the loop that reads it rather than storing it. ``None`` elsewhere, and
    for arrays smaller than :data:`HINT_MIN_SIZE`."""
    x = tf.convert_to_tensor(x)
    return _or_bits(x, _hidden_zero(x)) if _hints_apply(x) else None


def uniopt_after(x: Any, first: Any) -> tf.Tensor:
    """Under XLA, ``x`` or-ed with a zero made from one element of ``first`` (the same bits): XLA
    then runs ``x``'s loop after ``first``'s. The rule's outputs replace their variables in place
    (``input_output_alias``); when ``first``'s loop reads the old value of the variable ``x``
    replaces, XLA otherwise copies that variable each step, because nothing orders the two loops
    (measured on Schedule-Free AdamW's ``z``). ``x`` itself elsewhere, and when ``x`` or
    ``first`` is smaller than :data:`HINT_MIN_SIZE`."""
    x, first = tf.convert_to_tensor(x), tf.convert_to_tensor(first)
    if not _hints_apply(x, first):
        return x
    return _or_bits(x, _first_element_zero(first, _BITS_OF[x.dtype][0]))
