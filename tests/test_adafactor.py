"""Adafactor's factored path, its slot shapes and its reductions, beyond the table-driven tests.

The table-driven hand steps (``test_hand_steps.py``) use a vector, which Adafactor keeps whole;
here a matrix (and, for optax, a 3-d parameter factored over two non-trailing axes) is worked out
by hand in plain Python float64, one element at a time, from each framework's source:
``torch/optim/_adafactor.py`` (``_single_tensor_adafactor``), ``keras/src/optimizers/adafactor.py``
(``update_step``) and ``optax/_src/factorized.py`` (``scale_by_factored_rms``) chained as
``optax/_src/alias.py``'s ``adafactor`` does.
"""

from __future__ import annotations

import itertools
import math

import array_api_compat.numpy as xnp
import array_api_strict
import numpy as np
import pytest

import uniopt
from uniopt._math import divide_exactly, mean_axis, rms, squared, sum_pairwise, sum_pairwise_axis

RTOL = 1e-12

P0 = [[1.0, -2.0, 0.5], [0.25, 3.0, -1.5]]
GRADS = [
    [[0.5, -1.5, 0.0], [0.2, 0.1, -0.7]],
    [[0.01, -2.0, 0.3], [-0.4, 0.0, 0.25]],
    [[-0.4, 0.0, 0.25], [1.2, -0.3, 0.05]],
]


def _mean(values):
    return sum(values) / len(values)


def _rms(rows):
    flat = [x for row in rows for x in row]
    return math.sqrt(sum(x * x for x in flat) / len(flat))


def torch_hand(h, steps):
    """torch.optim.Adafactor on a 2-d parameter (uniopt's own convention is the same algorithm):
    row_var/col_var the EMAs (weight t^c) of the row and column means of g^2, shapes (n, 1) and
    (1, m); v = row_var col_var / max(mean(row_var), eps1); u = g / sqrt(max(v, eps1^2));
    alpha = max(eps2, RMS(p)) min(lr, 1/sqrt(t)) before p *= 1 - lr wd; p -= alpha u / max(1,
    RMS(u)/d)."""
    n, m = len(P0), len(P0[0])
    p = [row[:] for row in P0]
    row, col = [0.0] * n, [0.0] * m
    eps1 = 2.0**-52 if h["eps"][0] is None else h["eps"][0]
    out = []
    for t, g in enumerate(GRADS[:steps], start=1):
        if h["maximize"]:
            g = [[-x for x in r] for r in g]
        w = t ** h["beta2_decay"]
        alpha = max(h["eps"][1], _rms(p)) * min(h["lr"], 1 / math.sqrt(t))
        p = [[x * (1 - h["lr"] * h["weight_decay"]) for x in r] for r in p]
        row = [(1 - w) * row[i] + w * _mean([x * x for x in g[i]]) for i in range(n)]
        col = [(1 - w) * col[j] + w * _mean([g[i][j] ** 2 for i in range(n)]) for j in range(m)]
        norm = max(_mean(row), eps1)
        u = [
            [g[i][j] / math.sqrt(max(row[i] * col[j] / norm, eps1 * eps1)) for j in range(m)]
            for i in range(n)
        ]
        clip = max(1.0, _rms(u) / h["d"])
        p = [[p[i][j] - alpha * u[i][j] / clip for j in range(m)] for i in range(n)]
        out.append((p, {"row_var": [[r] for r in row], "col_var": [col], "variance": 0.0}))
    return out


def keras_hand(h, steps):
    """keras.optimizers.Adafactor on a 2-d variable: p -= p wd lr (the base optimizer) first;
    gg = g^2 + eps1; r, c the EMAs (beta = 1 - t^c) of the means of gg over the last and the
    second-to-last axis, shapes (n,) and (m,); v = (r / mean(r)) c (stored, the variable's shape);
    u = g / sqrt(v); u /= max(1, RMS(u)/d); p -= alpha u with alpha from the decayed p and
    epsilon_2 through float32."""
    n, m = len(P0), len(P0[0])
    p = [row[:] for row in P0]
    r, c = [0.0] * n, [0.0] * m
    eps1, eps2 = h["eps"][0], float(np.float32(h["eps"][1]))
    lr, wd = float(np.float32(h["lr"])), float(np.float32(h["weight_decay"]))
    out = []
    for t, g in enumerate(GRADS[:steps], start=1):
        p = [[x - x * wd * lr for x in row] for row in p]
        beta = 1 - t ** h["beta2_decay"]
        alpha = max(eps2, _rms(p)) * min(lr, 1 / math.sqrt(t))
        gg = [[x * x + eps1 for x in row] for row in g]
        r = [beta * r[i] + (1 - beta) * _mean(gg[i]) for i in range(n)]
        c = [beta * c[j] + (1 - beta) * _mean([gg[i][j] for i in range(n)]) for j in range(m)]
        v = [[r[i] / _mean(r) * c[j] for j in range(m)] for i in range(n)]
        u = [[g[i][j] / math.sqrt(v[i][j]) for j in range(m)] for i in range(n)]
        clip = max(1.0, _rms(u) / h["d"])
        p = [[p[i][j] - alpha * (u[i][j] / clip) for j in range(m)] for i in range(n)]
        out.append((p, {"r": r, "c": c, "v": v}))
    return out


def _run(spec, p0, grads, steps):
    params = [np.array(p0, dtype=np.float64)]
    state = spec.init(params)
    out = []
    for g in grads[:steps]:
        params, state = spec.update([np.array(g, dtype=np.float64)], state, params)
        out.append((params[0], state.slots[0]))
    return out


TORCH_KWARGS = [
    {},
    {"lr": 0.05, "weight_decay": 0.1},
    {"beta2_decay": -0.5, "eps": (1e-3, 1e-2), "d": 1.5, "maximize": True},
]


@pytest.mark.parametrize("convention", ["uniopt", "torch"])
@pytest.mark.parametrize("kwargs", TORCH_KWARGS, ids=["defaults", "decay", "eps_d_maximize"])
def test_factored_matrix_by_hand_torch_algorithm(convention, kwargs):
    spec = uniopt.Adafactor(convention=convention, **kwargs)
    h = spec.hyperparameters
    for t, ((p, slots), (want_p, want_slots)) in enumerate(
        zip(_run(spec, P0, GRADS, 3), torch_hand(h, 3), strict=True), start=1
    ):
        np.testing.assert_allclose(p, want_p, rtol=RTOL, atol=0, err_msg=f"param, step {t}")
        assert set(slots) == set(want_slots)
        for name, want in want_slots.items():
            assert slots[name].shape == np.shape(want), name
            np.testing.assert_allclose(slots[name], want, rtol=RTOL, atol=0, err_msg=f"{name}, step {t}")


@pytest.mark.parametrize(
    "kwargs", [{}, {"lr": 0.01, "weight_decay": 0.004, "d": 1.3}], ids=["defaults", "decay_clip"]
)
def test_factored_matrix_by_hand_keras(kwargs):
    spec = uniopt.Adafactor(convention="keras", **kwargs)
    h = spec.hyperparameters
    for t, ((p, slots), (want_p, want_slots)) in enumerate(
        zip(_run(spec, P0, GRADS, 3), keras_hand(h, 3), strict=True), start=1
    ):
        np.testing.assert_allclose(p, want_p, rtol=RTOL, atol=0, err_msg=f"param, step {t}")
        for name, want in want_slots.items():
            assert slots[name].shape == np.shape(want), name
            np.testing.assert_allclose(slots[name], want, rtol=RTOL, atol=0, err_msg=f"{name}, step {t}")


def test_optax_factors_the_two_largest_axes_by_hand():
    """optax.adafactor(min_dim_size_to_factor=2) on a (3, 2, 4) parameter: np.argsort gives
    d1 = 0 (size 3, the second largest) and d0 = 2 (size 4); v_row is the EMA of mean(gg, d0),
    shape (3, 2), v_col of mean(gg, d1), shape (2, 4); u = g (v_row / mean(v_row, axis 0))^-1/2
    v_col^-1/2, clipped, times max(RMS(p), eps2); momentum 0.5 (float32 accumulator), decay
    u + wd p; p -= u."""
    spec = uniopt.Adafactor(
        convention="optax", min_dim_size_to_factor=2, momentum=0.5, weight_decay=0.01, lr=0.1
    )
    assert spec.factored_axes((3, 2, 4)) == (0, 2)
    rng = np.random.default_rng(5)
    p0 = rng.standard_normal((3, 2, 4))
    grads = [rng.standard_normal((3, 2, 4)) for _ in range(3)]
    got = _run(spec, p0, grads, 3)
    p = p0.copy()
    v_row, v_col, mom = np.zeros((3, 2)), np.zeros((2, 4)), np.zeros((3, 2, 4))
    f32 = np.float32
    for t, g in enumerate(grads, start=1):
        beta = float(f32(1) - f32(t) ** f32(-0.8))
        new_row, new_col, u = np.empty((3, 2)), np.empty((2, 4)), np.empty((3, 2, 4))
        for a, b in itertools.product(range(3), range(2)):
            new_row[a, b] = beta * v_row[a, b] + (1 - beta) * _mean(
                [g[a, b, k] ** 2 + 1e-30 for k in range(4)]
            )
        for b, k in itertools.product(range(2), range(4)):
            new_col[b, k] = beta * v_col[b, k] + (1 - beta) * _mean(
                [g[a, b, k] ** 2 + 1e-30 for a in range(3)]
            )
        v_row, v_col = new_row, new_col
        for a, b, k in itertools.product(range(3), range(2), range(4)):
            row_mean = _mean([v_row[x, b] for x in range(3)])
            u[a, b, k] = g[a, b, k] / math.sqrt(v_row[a, b] / row_mean) / math.sqrt(v_col[b, k])
        u = u / max(1.0, math.sqrt(float(np.mean(u**2))))
        u = 0.1 * u * max(math.sqrt(float(np.mean(p**2))), 1e-3)
        mom = np.vectorize(lambda x, m: 0.5 * x + float(f32(f32(0.5) * f32(m))))(u, mom)
        u = mom
        mom = mom.astype(np.float32).astype(np.float64)
        p = p - (u + 0.01 * p)
        got_p, got_slots = got[t - 1]
        np.testing.assert_allclose(got_p, p, rtol=1e-11, atol=0, err_msg=f"param, step {t}")
        np.testing.assert_allclose(got_slots["v_row"], v_row, rtol=RTOL, atol=0)
        np.testing.assert_allclose(got_slots["v_col"], v_col, rtol=RTOL, atol=0)
        np.testing.assert_array_equal(got_slots["momentum"], mom)  # float32 values, as optax stores
        assert got_slots["v"].shape == (1,) and not np.any(got_slots["v"])


# -- slot shapes: each framework's own -------------------------------------------------------------

SLOT_SHAPES = {
    # torch/optim/_adafactor.py _init_group: row_var (..., n, 1), col_var (..., 1, m); variance for
    # fewer than 2 dimensions (torch keeps no entry for the others: uniopt's 0-d placeholders)
    "torch": {
        (4, 6): {"row_var": (4, 1), "col_var": (1, 6), "variance": ()},
        (2, 3, 5): {"row_var": (2, 3, 1), "col_var": (2, 1, 5), "variance": ()},
        (7,): {"row_var": (), "col_var": (), "variance": (7,)},
        (): {"row_var": (), "col_var": (), "variance": ()},
    },
    # keras/src/optimizers/adafactor.py build: r shape[:-1], c shape[:-2] + shape[-1:], v the
    # variable's shape; 0-d dummies below 2 dimensions
    "keras": {
        (4, 6): {"r": (4,), "c": (6,), "v": (4, 6)},
        (2, 3, 5): {"r": (2, 3), "c": (2, 5), "v": (2, 3, 5)},
        (7,): {"r": (), "c": (), "v": (7,)},
    },
    # optax/_src/factorized.py init_fn at min_dim_size_to_factor=128: the shape without d0 and
    # without d1, or (1,) where unused
    "optax": {
        (130, 3, 140): {"v_row": (130, 3), "v_col": (3, 140), "v": (1,)},
        (2, 128, 129): {"v_row": (2, 128), "v_col": (2, 129), "v": (1,)},
        (64, 32): {"v_row": (1,), "v_col": (1,), "v": (64, 32)},
        (5,): {"v_row": (1,), "v_col": (1,), "v": (5,)},
    },
}


FACTORED = {(4, 6), (2, 3, 5), (130, 3, 140), (2, 128, 129)}
"""The shapes above that their framework factors (optax: both largest axes >= 128)."""


@pytest.mark.parametrize("convention", ["uniopt", "torch", "keras", "optax"])
def test_slot_shapes_are_the_frameworks(convention):
    spec = uniopt.Adafactor(convention=convention)
    for shape, slots in SLOT_SHAPES["torch" if convention == "uniopt" else convention].items():
        assert {n: spec.slot_shape(n, shape) for n in spec.slot_names()} == slots, shape
        state = spec.init([np.zeros(shape, np.float32)])
        assert {n: a.shape for n, a in state.slots[0].items()} == slots
        assert all(a.dtype == np.float32 for a in state.slots[0].values())
        factored = shape in FACTORED
        whole = {"keras": "v", "optax": "v"}.get(convention, "variance")
        pair = {"keras": ("r", "c", "v"), "optax": ("v_row", "v_col")}.get(convention, ("row_var", "col_var"))
        assert set(spec.slots_in_use(shape)) == (set(pair) if factored else {whole}), shape


# -- the reductions --------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7,), (5, 9), (3, 17, 4), (2, 3, 33, 1), (1, 1), (6, 0)])
def test_sum_pairwise_axis_is_sum_pairwise_of_every_slice(shape):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    for axis in range(len(shape)):
        got = sum_pairwise_axis(x, axis, xnp)
        moved = np.moveaxis(x, axis, -1)
        want = np.zeros(moved.shape[:-1], np.float32)
        for index in np.ndindex(*moved.shape[:-1]):
            want[index] = sum_pairwise(moved[index], xnp)
        assert got.tobytes() == want.tobytes(), (shape, axis)
        squares = sum_pairwise_axis(x, axis, xnp, of=squared(xnp))  # of= on the first halving
        assert squares.tobytes() == sum_pairwise_axis(x * x, axis, xnp).tobytes(), (shape, axis)
        kept = sum_pairwise_axis(x, axis, xnp, keepdims=True)
        assert kept.shape == tuple(1 if i == axis else s for i, s in enumerate(shape))


def test_sums_of_integers_are_exact_and_means_divide_exactly():
    ints = np.arange(1, 1026, dtype=np.float64).reshape(1, 1025)
    assert float(sum_pairwise_axis(ints, -1, xnp)[0]) == 1025 * 1026 / 2
    x = np.random.default_rng(0).standard_normal(10000).astype(np.float32)
    y = np.asarray(np.float32(7.3))
    assert np.array_equal(divide_exactly(x, y, xnp), x / y)
    assert divide_exactly(np.asarray(np.float32(1.0)), y, xnp).shape == ()
    one = np.asarray(np.float32(1.0))
    m = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(mean_axis(m, -1, xnp, one), m.sum(axis=-1) / np.float32(4))
    assert float(rms(np.array([3.0, 4.0]), xnp, np.asarray(1.0))) == math.sqrt(12.5)


# (convention, its kwargs, the first step's size: rho * max(eps2, rms(p)) for p = 0.5, by hand)
FLOAT16_FIRST_STEP = [
    ("uniopt", {}, 0.01 * 0.5),  # lr 1e-2, rho_1 = min(lr, 1/sqrt(1))
    ("torch", {}, 0.01 * 0.5),
    ("keras", {}, 1e-3 * 0.5),  # learning_rate 1e-3
    ("optax", {"lr": 0.01}, 0.01 * 0.5),  # multiply_by_parameter_scale: lr * max(rms(p), eps2)
]


@pytest.mark.parametrize(("convention", "kwargs", "step"), FLOAT16_FIRST_STEP, ids=lambda v: str(v))
@pytest.mark.parametrize("shape", [(256, 256), (70000,), (4, 70000), (70000, 2)], ids=str)
@pytest.mark.parametrize("value", [0.5, 1.0])
def test_float16_reductions_past_its_range_take_the_step_by_hand(convention, kwargs, step, shape, value):
    """A float16 parameter of 65,520+ elements (or rows, columns that long): its counts round to
    inf in float16 and its sums of squares (65,536 at 1.0) overflow, so the spec accumulates in
    float32 (uniopt._math.accumulated), as torch's norms, Keras's means and jnp.mean do. Constant p
    and g: the first step's second moment is g*g, u = g/|g| = 1 (to float16 rounding), its RMS 1,
    so p - step*value/0.5 by hand (torch.optim.Adafactor on (256, 256) at 0.5: 0.49512)."""
    spec = uniopt.Adafactor(convention=convention, **kwargs)
    p = np.full(shape, value, np.float16)
    g = np.full(shape, 0.1, np.float16)
    (new,), _ = spec.update([g], spec.init([p], xnp), [p], xnp)
    want = np.float16(value - step * value / 0.5)  # u = 1 within 2^-10: far below an ulp of p
    assert new.dtype == np.float16
    np.testing.assert_array_equal(new, np.full(shape, want, np.float16))


def test_float16_means_and_rms_are_float32_rounded_once():
    one = np.asarray(np.float16(1.0))
    x = np.full((3, 70000), 1.5, np.float16)
    m = mean_axis(x, -1, xnp, one)
    assert m.dtype == np.float16 and np.array_equal(m, np.full(3, 1.5, np.float16))
    r = rms(x, xnp, one)
    assert r.dtype == np.float16 and float(r) == 1.5
    small = np.array([3.0, 4.0], np.float16)  # in range: the float32 value rounded once
    assert float(rms(small, xnp, one)) == float(np.float16(math.sqrt(12.5)))


# -- properties ------------------------------------------------------------------------------------

SHAPES = [(6, 5), (3, 4, 7), (8,), (), (130, 3)]
CONVENTION_KWARGS = [
    {"convention": "uniopt"},
    {"convention": "uniopt", "weight_decay": 0.1, "maximize": True, "eps": (1e-3, 1e-2), "d": 1.5},
    {"convention": "torch", "weight_decay": 0.1},
    {"convention": "keras", "weight_decay": 0.004},
    {"convention": "optax", "min_dim_size_to_factor": 3, "momentum": 0.9, "weight_decay": 1e-3},
    {"convention": "optax"},
]


@pytest.mark.parametrize(
    "kwargs", CONVENTION_KWARGS, ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items())
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_array_api_strict_matches_numpy_bitwise_on_factored_shapes(kwargs, dtype):
    spec = uniopt.Adafactor(**kwargs)
    rng = np.random.default_rng(11)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(4)]
    p_np, s_np = params, spec.init(params, xnp)
    p_st = [array_api_strict.asarray(p) for p in params]
    s_st = spec.init(p_st, array_api_strict)
    for g in grads:
        p_np, s_np = spec.update(g, s_np, p_np, xnp)
        p_st, s_st = spec.update([array_api_strict.asarray(x) for x in g], s_st, p_st, array_api_strict)
    for a, b in zip(p_np, p_st, strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    for sa, sb in zip(s_np.slots, s_st.slots, strict=True):
        for name in sa:
            assert np.asarray(sa[name]).tobytes() == np.asarray(sb[name]).tobytes(), name


@pytest.mark.parametrize("kwargs", CONVENTION_KWARGS[:4], ids=["uniopt", "uniopt-all", "torch", "keras"])
def test_zero_lr_and_zero_gradients(kwargs):
    """lr = 0 moves nothing (rho = 0, and the decay 1 - 0 wd = 1); a zero gradient leaves a
    parameter without decay where it is (u = 0); placeholders stay zero."""
    spec = uniopt.Adafactor(**{**kwargs, "lr": 0.0})
    rng = np.random.default_rng(2)
    params = [rng.standard_normal(s) for s in SHAPES]
    new, state = spec.update([rng.standard_normal(s) for s in SHAPES], spec.init(params), params)
    for a, b in zip(new, params, strict=True):
        np.testing.assert_array_equal(a, b)
    spec = uniopt.Adafactor(**{**kwargs, "weight_decay": 0.0})
    new, state = spec.update([np.zeros(s) for s in SHAPES], spec.init(params), params)
    for a, b in zip(new, params, strict=True):
        np.testing.assert_array_equal(a, b)
    for slots, shape in zip(state.slots, SHAPES, strict=True):
        for name in set(spec.slot_names()) - set(spec.slots_in_use(shape)):
            assert not np.any(slots[name])


@pytest.mark.parametrize("convention", ["uniopt", "torch", "keras", "optax"])
def test_maximize_is_the_step_of_the_negated_gradient(convention):
    rng = np.random.default_rng(4)
    params = [rng.standard_normal(s) for s in SHAPES]
    grads = [rng.standard_normal(s) for s in SHAPES]
    up = uniopt.Adafactor(convention=convention, maximize=True)
    down = uniopt.Adafactor(convention=convention)
    a, _ = up.update(grads, up.init(params), params)
    b, _ = down.update([-g for g in grads], down.init(params), params)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_empty_parameters_are_left_as_they_are():
    spec = uniopt.Adafactor()
    params = [np.zeros((2, 0, 3)), np.zeros((0,)), np.ones((2, 2))]
    state = spec.init(params)
    assert state.slots[0]["col_var"].shape == (2, 1, 3)
    new, state = spec.update([np.zeros((2, 0, 3)), np.zeros((0,)), np.ones((2, 2))], state, params)
    assert new[0].shape == (2, 0, 3) and new[1].shape == (0,)
    assert not np.any(state.slots[0]["col_var"]) and np.all(np.isfinite(new[2]))


def test_complex_parameters_are_refused():
    spec = uniopt.Adafactor()
    z = np.ones((2, 2), np.complex64)
    with pytest.raises(ValueError, match=r"Adafactor: complex parameters are not supported"):
        spec.update([z], spec.init([z]), [z])


def test_placeholders_check_in_porting(tmp_path):
    """A record of a factored parameter holds the factored shapes, and a slot of the parameter's
    shape is refused, naming the slot's own shape."""
    spec = uniopt.Adafactor(lr=0.05)
    params = [np.ones((4, 6), np.float32), np.ones((3,), np.float32)]
    state = spec.init(params)
    params, state = spec.update([np.full((4, 6), 0.5, np.float32), np.ones(3, np.float32)], state, params)
    from uniopt.porting import export_state, import_state

    record = export_state(spec, state, params)
    assert record.slots[0]["row_var"].shape == (4, 1) and record.slots[1]["row_var"].shape == ()
    path = tmp_path / "ada.npz"
    uniopt.save_state(path, record)
    loaded = uniopt.load_state(path)
    assert loaded.hyperparameters["eps"] == [None, 1e-3]
    back = import_state(loaded, spec, params)
    for a, b in zip(back.slots, state.slots, strict=True):
        for name in a:
            assert a[name].tobytes() == b[name].tobytes()
    bad = [dict(s) for s in record.slots]
    bad[0]["row_var"] = np.zeros((4, 6), np.float32)
    with pytest.raises(
        ValueError, match=r"parameter 0 slot 'row_var' is float32\[4, 6\].*\(the slot: float32\[4, 1\]\)"
    ):
        record.replace(slots=tuple(bad))
