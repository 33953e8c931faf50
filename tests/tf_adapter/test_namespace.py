"""uniopt.tf.xp: each function is the correctly rounded TF op, and the core runs on it unchanged."""

from __future__ import annotations

import array_api_compat.numpy as npx
import numpy as np
import pytest
import tensorflow as tf
from cases import table_for
from tf_helpers import assert_trajectories, bits_equal, params_and_grads

from uniopt.tf import xp

SPECIALS = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -2.5, 3.0]


def _operands(dtype: str, n: int = 20_000, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(n) * 10.0 ** rng.integers(-20, 20, n)).astype(dtype)
    b = (rng.standard_normal(n) * 10.0 ** rng.integers(-20, 20, n)).astype(dtype)
    a[: len(SPECIALS)] = SPECIALS
    b[: len(SPECIALS) ** 2 : len(SPECIALS)] = SPECIALS  # every special against every other
    a[: len(SPECIALS) ** 2] = np.repeat(np.asarray(SPECIALS, dtype), len(SPECIALS))
    b[: len(SPECIALS) ** 2] = np.tile(np.asarray(SPECIALS, dtype), len(SPECIALS))
    return a, b


BINARY = ["add", "subtract", "multiply", "divide", "maximum"]
UNARY = ["sqrt", "negative"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("jit", [False, True], ids=["function", "xla"])
def test_each_function_is_bitwise_numpys(dtype, jit):
    a, b = _operands(dtype)
    ops = {name: getattr(xp, name) for name in BINARY + UNARY}

    @tf.function(jit_compile=jit)
    def apply(a, b):
        out = {name: ops[name](a, b) for name in BINARY}
        out.update({name: ops[name](a) for name in UNARY})
        out["where"] = xp.where(a > b, a, b)
        return out

    got = {k: v.numpy() for k, v in apply(tf.constant(a), tf.constant(b)).items()}
    with np.errstate(all="ignore"):
        want = {name: getattr(np, name)(a, b) for name in BINARY}
        want.update({name: getattr(np, name)(a) for name in UNARY})
        want["where"] = np.where(a > b, a, b)
    # TF flushes subnormal inputs and results to zero on CPU (FTZ/DAZ); compare normal values only
    tiny = np.finfo(dtype).tiny
    normal = (np.abs(a) >= tiny) | (a == 0) | ~np.isfinite(a)
    normal &= (np.abs(b) >= tiny) | (b == 0) | ~np.isfinite(b)
    # max(+0, -0) may be either zero (IEEE leaves it open; XLA and NumPy differ): the specs never
    # compare zeros of both signs (their maxima take non-negative sums of squares)
    zero_tie = (a == 0) & (b == 0) & (np.signbit(a) != np.signbit(b))
    for name, value in want.items():
        keep = normal & ((np.abs(value) >= tiny) | (value == 0) | ~np.isfinite(value))
        keep &= ~zero_tie if name == "maximum" else True
        assert bits_equal(got[name][keep], value[keep]), name
    assert np.isnan(got["maximum"][np.isnan(a) | np.isnan(b)]).all()  # NaN propagates


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("name", ["add", "subtract", "multiply"])
def test_a_python_number_beside_a_tensor_takes_its_dtype(name, mode):
    """``xp.add(x64, 0.5)`` is float64, as ``tf.math.add`` converts a Python number beside a tensor
    (the constant check of the grappler guard converted each operand on its own: float32, then
    ``InvalidArgumentError``); either side."""
    x = tf.constant([1.0, 2.0], tf.float64)
    fn = getattr(xp, name)
    values = np.asarray([1.0, 2.0])
    ufunc = getattr(np, name)
    for args, want in (((x, 0.5), ufunc(values, 0.5)), ((0.5, x), ufunc(0.5, values))):
        got = fn(*args) if mode == "eager" else tf.function(lambda a=args: fn(*a))()
        assert got.dtype == tf.float64
        assert bits_equal(got.numpy(), want)


def test_creation_functions_round_once():
    x = tf.constant(np.ones((2, 3), np.float32))
    assert bits_equal(xp.full_like(x, 0.1).numpy(), np.full((2, 3), 0.1, np.float32))
    assert bits_equal(xp.zeros_like(x).numpy(), np.zeros((2, 3), np.float32))
    assert bits_equal(xp.asarray(0.1, dtype=tf.float64).numpy(), np.float64(0.1))


def test_tf_flushes_subnormals_to_zero():
    """The one place where TF cannot match NumPy: CPU kernels run with FTZ/DAZ set, in every mode
    (docs/tf.md). Trajectories that pass through subnormals differ there."""
    tiny = np.float32([1e-39])
    assert xp.multiply(tf.constant(tiny), tf.constant(np.float32([1.0]))).numpy()[0] == 0.0
    assert np.multiply(tiny, np.float32(1.0))[0] != 0.0


@pytest.mark.parametrize("info", table_for("tf"), ids=lambda i: i.name)
def test_the_cores_own_update_runs_on_tf_tensors(info):
    """Spec.update with xp=uniopt.tf.xp (scalars cast through xp.asarray) equals NumPy's, for every
    row uniopt.tf offers: bitwise, but where the table states a bound (Muon's products with
    TensorFlow's matmul, whose sums are blocked in another order than NumPy's BLAS)."""
    case = info.cases[-1]
    spec = info.make(case)
    params, grads = params_and_grads(7, "float32", seed=12)
    tf_params = [tf.constant(p) for p in params]
    state = spec.init(tf_params, xp)
    np_params, np_state = [p.copy() for p in params], spec.init(params, npx)
    got, want = [], []
    for g in grads:
        tf_params, state = spec.update([tf.constant(x) for x in g], state, tf_params, xp)
        np_params, np_state = spec.update(g, np_state, np_params, npx)
        got.append(
            ([p.numpy() for p in tf_params], [{k: v.numpy() for k, v in s.items()} for s in state.slots])
        )
        want.append(([p.copy() for p in np_params], [dict(s) for s in np_state.slots]))
    assert_trajectories(got, want, ulp=info.tolerance("tf", "eager", case.desc))


SIGN_INPUTS = [0.0, -0.0, np.nan, -np.nan, np.inf, -np.inf, 1e-45, -1e-45, 1e-40, -1e-310, 6e-8, -6e-8, 2.5]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_sign_and_abs_are_numpys_bit_for_bit_subnormals_included(dtype, mode):
    """sign and abs decide on the bits, so TF's denormals-are-zero does not reach them: NumPy's
    values (ml_dtypes' for bfloat16), zeros' and NaNs' signs included, in every mode."""
    import ml_dtypes

    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    rng = np.random.default_rng(3)
    spread = rng.standard_normal(1000) * 10.0 ** rng.integers(-320, 30, 1000)
    with np.errstate(over="ignore"):  # huge values become infinities in the narrow dtypes
        x = np.concatenate([np.asarray(SIGN_INPUTS), spread]).astype(np_dtype)
    ops = {"sign": xp.sign, "abs": xp.abs}
    if mode != "eager":
        ops = {k: tf.function(f, jit_compile=mode == "xla") for k, f in ops.items()}
    for name, op in ops.items():
        got = np.asarray(op(tf.constant(x)))
        want = getattr(np, name)(x)
        unsigned = f"u{want.dtype.itemsize}"  # NaN payloads and signs compared too
        assert got.dtype == want.dtype and np.array_equal(got.view(unsigned), want.view(unsigned)), name
    # tf.math.sign itself is not: eagerly it returns a subnormal for a subnormal (DAZ)
    if dtype == "float32" and mode == "eager":
        assert tf.math.sign(tf.constant(np.float32([1e-45]))).numpy()[0] != 1.0
        assert xp.sign(tf.constant(np.float32([1e-45]))).numpy()[0] == 1.0


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("jit", [False, True], ids=["function", "xla"])
def test_a_division_by_a_root_stays_a_division(dtype, jit):
    """TensorFlow's graph optimizer (tf.function) and XLA rewrite x / sqrt(y) into x * rsqrt(y),
    which rounds differently; xp.sqrt keeps the quotient NumPy's (Adadelta divides by roots)."""
    rng = np.random.default_rng(5)
    a, b = ((rng.random(20_000) + 0.1).astype(dtype) for _ in range(2))
    b[:5] = [-0.0, 0.0, np.nan, -1.0, np.inf]
    apply = tf.function(
        lambda a, b: (xp.divide(a, xp.sqrt(b)), xp.divide(xp.sqrt(a), xp.sqrt(b))), jit_compile=jit
    )
    plain = tf.function(lambda a, b: tf.math.divide(a, tf.math.sqrt(b)), jit_compile=jit)
    with np.errstate(all="ignore"):
        want = (a / np.sqrt(b), np.sqrt(a) / np.sqrt(b))
    for got, expected in zip(apply(tf.constant(a), tf.constant(b)), want, strict=True):
        assert bits_equal(got.numpy(), expected)
    if dtype != "float16":  # the rewrite is real: without the guard the quotients differ
        assert not bits_equal(plain(tf.constant(a), tf.constant(b)).numpy(), want[0])


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("jit", [False, True], ids=["function", "xla"])
@pytest.mark.parametrize("shape", [(), (7,), (4, 5), (2, 3, 4)])
def test_a_division_by_a_count_stays_a_division(shape, dtype, jit):
    """``divide_exactly(x, count)`` (the specs' means: Adafactor's row and column statistics) is
    NumPy's ``x / count`` per element: xp.ones_like hides its ones from TensorFlow's graph
    optimizer and from XLA, which otherwise divide by the broadcast constant as a multiplication by
    its rounded reciprocal (under XLA, ``bits & 0`` was folded: 11 of 20 float32 quotients off)."""
    from uniopt._math import divide_exactly

    rng = np.random.default_rng(3)
    x = np.asarray(rng.standard_normal(shape) * 100, dtype)
    one = np.asarray(1.0, dtype)
    apply = tf.function(
        lambda x, one: [divide_exactly(x, xp.full_like(one, n), xp) for n in (3.0, 7.0, 10.0)],
        jit_compile=jit,
    )
    got = apply(tf.constant(x), tf.constant(one))
    for value, n in zip(got, (3.0, 7.0, 10.0), strict=True):
        assert bits_equal(value.numpy(), x / np.asarray(n, dtype)), n


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_a_float64_scalar_is_rounded_once_to_the_dtype(dtype, mode):
    """uniopt.tf._scalars.round_once: float64 to float16 or bfloat16 as NumPy and ml_dtypes round
    (once, to nearest even), where ``tf.cast`` goes through float32 and rounds twice. Values just
    past a 16-bit halfway point by less than a float32 ulp, both signs, near overflow, subnormal in
    the 16-bit dtype, infinities and NaN, and 20,000 random ones."""
    from uniopt.tf._scalars import round_once

    np_dtype = tf.as_dtype(dtype).as_numpy_dtype
    rng = np.random.default_rng(9)
    grid = np.asarray(rng.standard_normal(2000) * 10.0 ** rng.integers(-9, 5, 2000), np_dtype)
    ulp = np.abs(
        np.nextafter(grid, np.asarray(np.inf, np_dtype)).astype(np.float64) - grid.astype(np.float64)
    )
    halfway = grid.astype(np.float64) + np.sign(grid.astype(np.float64)) * ulp / 2
    values = np.concatenate(
        [
            halfway * (1 + 2.0**-40),  # just past the halfway point: the far neighbour
            halfway * (1 - 2.0**-40),  # just before it: the near one
            halfway,  # on it: ties to even
            rng.standard_normal(20_000) * 10.0 ** rng.integers(-12, 6, 20_000),
            [0.0, -0.0, np.inf, -np.inf, np.nan, 1e300, -1e300, 1e-300, 65519.99, 65520.0, 3.4e38, 1e-7],
        ]
    )
    want = values.astype(np_dtype)
    convert = (
        (lambda v: round_once(v, tf.as_dtype(dtype)))
        if mode == "eager"
        else tf.function(lambda v: round_once(v, tf.as_dtype(dtype)), jit_compile=mode == "xla")
    )
    got = convert(tf.constant(values, tf.float64)).numpy()
    assert bits_equal(got, want)  # any NaN equals any NaN
    if dtype != "float32":  # the double rounding is real: tf.cast misses some
        assert not np.array_equal(
            tf.cast(tf.constant(values), tf.as_dtype(dtype)).numpy(), want, equal_nan=True
        )


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_muons_matrix_functions_are_exact_or_the_backends_products(dtype, mode):
    """matrix_transpose and expand_dims move elements (bitwise), astype rounds float32 to bfloat16
    as ml_dtypes does (every tie, spread values), and matmul is TensorFlow's product: within a few
    ulp of the float64 product rounded once (its sums are blocked in TensorFlow's order)."""
    import ml_dtypes

    rng = np.random.default_rng(11)
    a = rng.standard_normal((7, 5)).astype(dtype)
    b = rng.standard_normal((5, 3)).astype(dtype)
    ties = ((np.arange(1, 2**15, 97, dtype=np.uint32) << 16) | 0x8000).view(np.float32)
    x = np.concatenate([ties, -ties, rng.standard_normal(5000).astype(np.float32)])

    def ops(a, b, x):
        return (
            xp.matrix_transpose(a),
            xp.expand_dims(a, 1),
            xp.matmul(a, b),
            xp.astype(xp.astype(x, xp.bfloat16), xp.float32),
        )

    run = ops if mode == "eager" else tf.function(ops, jit_compile=mode == "xla")
    transposed, expanded, product, rounded = (
        np.asarray(t) for t in run(tf.constant(a), tf.constant(b), tf.constant(x))
    )
    assert bits_equal(transposed, a.T) and bits_equal(expanded, a[:, None, :])
    assert bits_equal(rounded, x.astype(ml_dtypes.bfloat16).astype(np.float32))
    exact = (a.astype(np.float64) @ b.astype(np.float64)).astype(dtype)
    assert product.dtype == exact.dtype
    tiny = np.finfo(dtype).eps * np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    assert np.all(np.abs(product.astype(np.float64) - exact) <= 5 * tiny + np.finfo(dtype).tiny)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_the_scheduling_hints_change_no_bits(dtype, mode):
    """uniopt._math.recomputed and after (xp.uniopt_recomputed, xp.uniopt_after) give back their
    operand's bits exactly, NaN payloads, infinities, -0 and subnormals included; they act under XLA
    only, and only on arrays of at least xp.HINT_MIN_SIZE elements (recomputed is None elsewhere)."""
    import ml_dtypes

    from uniopt._math import after, recomputed

    np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    info = ml_dtypes.finfo(np_dtype)
    specials = [np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, float(info.smallest_subnormal), float(info.max)]
    rng = np.random.default_rng(5)
    values = {}
    for n in (xp.HINT_MIN_SIZE, 9):
        x = rng.standard_normal(n) * 10.0 ** rng.integers(-30, 30, n)
        x[: len(specials)] = specials
        values[n] = np.asarray(x, np_dtype)
    first = np.asarray(-rng.standard_normal(xp.HINT_MIN_SIZE), np_dtype)
    first[0] = np.nan

    def hinted(x, first):
        again = recomputed(x, xp)
        return (x if again is None else again), after(x, first, xp), again is not None

    run = hinted if mode == "eager" else tf.function(hinted, jit_compile=mode == "xla")
    for n, x in values.items():
        again, ordered, acted = run(tf.constant(x), tf.constant(first[:n]))
        assert bits_equal(again.numpy(), x) and bits_equal(ordered.numpy(), x), n
        assert bool(acted) == (mode == "xla" and n >= xp.HINT_MIN_SIZE), n


@pytest.mark.parametrize("shape", [(500,), (1,), (2,), (7, 5), (3, 8, 6)])
@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_the_pairwise_sums_split_each_halving_in_one_op(shape, mode):
    """``sum_pairwise_axis`` halves its array with ``xp.uniopt_split`` (one ``Split``/``SplitV``
    op, where two slices were two ``StridedSlice`` ops of three constants each): along every axis,
    eagerly, in ``tf.function`` and under XLA, the sums are NumPy's pairwise sums bit for bit
    (signed zeros, NaN and infinities included), and a traced graph holds one split per halving
    and no slice but the padding's."""
    from uniopt._math import squared, sum_pairwise_axis

    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 10.0 ** rng.integers(-5, 5, shape)).astype(np.float32)
    flat = x.reshape(-1)
    flat[: min(flat.size, len(SPECIALS))] = SPECIALS[: flat.size]
    expected = [sum_pairwise_axis(x, axis, npx, of=squared(npx)) for axis in range(len(shape))]

    def sums(t):
        return [sum_pairwise_axis(t, axis, xp, of=squared(xp)) for axis in range(len(shape))]

    if mode == "eager":
        got = sums(tf.constant(x))
    else:
        fn = tf.function(sums, jit_compile=mode == "xla")
        got = fn(tf.constant(x))
        ops = [op.type for op in fn.get_concrete_function(tf.constant(x)).graph.get_operations()]
        # the one slice left per sum: the shape of the -0 padding of a length not a power of two
        padded = sum(1 for n in shape if n & (n - 1))
        assert ops.count("StridedSlice") == padded, ops
        halvings = sum((n - 1).bit_length() for n in shape)
        assert ops.count("Split") + ops.count("SplitV") == halvings, ops
    for e, g in zip(expected, got, strict=True):
        assert bits_equal(g.numpy(), e), (shape, mode)


@pytest.mark.parametrize(
    ("shape", "gathered_axes"),
    [
        ((40000,), (0,)),  # padding 25,536 elements past the end: gathered
        ((1025,), ()),  # 1023 elements, 4092 bytes: one page is not reached, padded
        ((3, 1025), (0,)),  # axis 0: one 1025-element row of padding, 4100 bytes: gathered
        ((150, 150), (0,)),  # axis 1: 106 elements past the last row in 22,500: padded
        ((181, 191), (0, 1)),  # axis 1: 65 elements past the last row, but 34,571 elements
        ((4, 5000), (1,)),  # axis 0: a power of two; axis 1: 3192 elements past the last row
    ],
)
@pytest.mark.parametrize("mode", ["function", "xla"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_odd_halvings_under_xla_read_nothing_past_the_array(shape, gathered_axes, mode, dtype):
    """Under XLA a halving of ``sum_pairwise_axis`` whose ``-0`` padding would reach a page or more
    past the array's end, or of an array of 32,768 elements or more, gathers its second operand at
    clamped indices instead (``xp.uniopt_odd_halving``): one ``GatherV2`` per such halving, none in
    ``tf.function`` without XLA or for a shorter reach in a smaller array, and the sums NumPy's
    pairwise sums bit for bit either way (signed zeros, NaN and infinities included)."""
    from uniopt._math import squared, sum_pairwise_axis

    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 10.0 ** rng.integers(-5, 5, shape)).astype(dtype)
    if dtype == "float16":  # squares kept out of float16's subnormals, which TensorFlow flushes
        x = (rng.choice([-1.0, 1.0], shape) * rng.uniform(0.5, 4.0, shape)).astype(dtype)
    flat = x.reshape(-1)
    flat[: len(SPECIALS)] = SPECIALS
    flat[-len(SPECIALS) :] = SPECIALS  # in the slices that are kept or gathered
    # the rule restated (the reach in bytes scales with the element's size); float32's axes as listed
    large = int(np.prod(shape)) >= 32768
    reach = [_reach(shape, a, dtype) for a in range(len(shape))]
    gathered = tuple(a for a, r in enumerate(reach) if r >= 4096 or (large and r))
    assert dtype != "float32" or gathered == gathered_axes
    expected = [sum_pairwise_axis(x, axis, npx, of=squared(npx)) for axis in range(len(shape))]

    def sums(t):
        return [sum_pairwise_axis(t, axis, xp, of=squared(xp)) for axis in range(len(shape))]

    fn = tf.function(sums, jit_compile=mode == "xla")
    got = fn(tf.constant(x))
    ops = [op.type for op in fn.get_concrete_function(tf.constant(x)).graph.get_operations()]
    assert ops.count("GatherV2") == (len(gathered) if mode == "xla" else 0), ops
    for e, g in zip(expected, got, strict=True):
        assert bits_equal(g.numpy(), e), (shape, mode)


@pytest.mark.parametrize(("shape", "axis"), [((40000,), -1), ((1025, 40), -2), ((4, 1025, 3), -2)])
def test_the_odd_halving_hook_takes_a_negative_axis(shape, axis):
    """``xp.uniopt_odd_halving`` called with a negative axis halves that axis as with its positive
    index (``sum_pairwise_axis`` passes it non-negative; a direct caller may not)."""
    x = tf.constant(np.random.default_rng(1).standard_normal(shape).astype(np.float32))
    n = shape[axis]
    h = 1 << ((n - 1).bit_length() - 1)

    @tf.function(jit_compile=True)
    def both(t):
        return xp.uniopt_odd_halving(t, axis, h, None), xp.uniopt_odd_halving(t, axis % len(shape), h, None)

    negative, positive = both(x)
    a = axis % len(shape)
    assert negative.shape == positive.shape == (*shape[:a], h, *shape[a + 1 :])
    assert bits_equal(negative.numpy(), positive.numpy())


def _reach(shape: tuple[int, ...], axis: int, dtype: str) -> int:
    """Bytes past the array's end that the padding of the first halving along ``axis`` spans."""
    n = shape[axis]
    h = 1 << ((n - 1).bit_length() - 1)
    return 0 if n & (n - 1) == 0 else (2 * h - n) * int(np.prod(shape[axis + 1 :])) * np.dtype(dtype).itemsize
