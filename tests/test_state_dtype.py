"""Lower-precision state in the core: slots of ``Spec.lower_precision_slots`` stored in bfloat16 or
float16 beside float32 and float64 parameters (docs/conventions.md, "Lower-precision state").

Expected values come from hand-written NumPy float32 arithmetic with ml_dtypes' rounding (each
operation of the formula written out here, not the spec's rule), and ml_dtypes' conversions."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

import uniopt
from uniopt._math import round_to_dtype

BF16 = np.dtype(ml_dtypes.bfloat16)
NARROW = {"bfloat16": BF16, "float16": np.dtype(np.float16)}


def _draws(n: int, steps: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(np.float32)
    grads = [(rng.standard_normal(n) * 10 ** rng.uniform(-3, 2)).astype(np.float32) for _ in range(steps)]
    return p, grads


@pytest.mark.parametrize("narrow", ["bfloat16", "float16"])
def test_adam_stores_the_moment_rounded_once_from_the_float32_formula(narrow):
    """uniopt's convention: m = widen(m)*b1 + g*(1-b1) in float32, the update from that float32 m,
    then m rounded once to the stored dtype; v stays float32."""
    b1, b2, eps, lr = np.float32(0.9), np.float32(0.999), np.float32(1e-8), np.float32(1e-2)
    p, grads = _draws(4000, 12)
    spec = uniopt.Adam(lr=1e-2)
    state, params = spec.init([p], slot_dtypes={"exp_avg": narrow}), [p]
    m, v, q = np.zeros(p.shape, NARROW[narrow]), np.zeros_like(p), p.copy()
    for t, g in enumerate(grads, start=1):
        params, state = spec.update([g], state, params)
        m32 = m.astype(np.float32) * b1 + g * np.float32(1 - 0.9)
        v = v * b2 + (g * g) * np.float32(1 - 0.999)
        step_size = np.float32(1e-2 / (1 - 0.9**t))
        inv_sqrt_bc2 = np.float32(1 / math.sqrt(1 - 0.999**t))
        q = q - (m32 / (np.sqrt(v) * inv_sqrt_bc2 + eps)) * step_size
        m = m32.astype(NARROW[narrow])
        got = state.slots[0]["exp_avg"]
        assert got.dtype == NARROW[narrow]
        np.testing.assert_array_equal(got.view(np.uint16), m.view(np.uint16), err_msg=f"step {t}")
        np.testing.assert_array_equal(state.slots[0]["exp_avg_sq"], v)
        np.testing.assert_array_equal(params[0], q)
    assert lr == np.float32(1e-2)
    # the moment really is narrower: float32 would have kept more bits at the last step
    assert np.any(m32 != m.astype(np.float32))


@pytest.mark.parametrize("narrow", ["bfloat16", "float16"])
def test_optax_convention_forms_the_decayed_moment_in_the_stored_dtype(narrow):
    """optax's b1 * mu with a Python-float b1 is a product in the moment's dtype (jax's weak typing):
    b1 rounded to that dtype, the product rounded to it; then + (1-b1)*g in float32."""
    p, grads = _draws(3000, 8, seed=1)
    spec = uniopt.Adam(lr=1e-3, convention="optax")
    state, params = spec.init([p], slot_dtypes={"exp_avg": narrow}), [p]
    dt = NARROW[narrow]
    m = np.zeros(p.shape, dt)
    for g in grads:
        params, state = spec.update([g], state, params)
        decayed = (np.asarray(0.9, dt).astype(np.float32) * m.astype(np.float32)).astype(dt)
        m = (decayed.astype(np.float32) + g * np.float32(1 - 0.9)).astype(dt)
        np.testing.assert_array_equal(state.slots[0]["exp_avg"].view(np.uint16), m.view(np.uint16))


@pytest.mark.parametrize("convention", ["uniopt", "optax"])
def test_sgd_momentum_buffer_in_bfloat16(convention):
    p, grads = _draws(2000, 6, seed=2)
    spec = uniopt.SGD(lr=0.01, momentum=0.9, convention=convention)
    state, params = spec.init([p], slot_dtypes={"momentum_buffer": "bfloat16"}), [p]
    b, q = np.zeros(p.shape, BF16), p.copy()
    for t, g in enumerate(grads, start=1):
        params, state = spec.update([g], state, params)
        if t == 1:
            b32 = g.copy()
        elif convention == "optax":
            b32 = (np.asarray(0.9, BF16).astype(np.float32) * b.astype(np.float32)).astype(BF16)
            b32 = b32.astype(np.float32) + g
        else:
            b32 = b.astype(np.float32) * np.float32(0.9) + g * np.float32(1.0)
        q = q - b32 * np.float32(0.01)
        b = b32.astype(BF16)
        np.testing.assert_array_equal(state.slots[0]["momentum_buffer"].view(np.uint16), b.view(np.uint16))
        np.testing.assert_array_equal(params[0], q)


def test_float64_parameters_take_float32_bfloat16_and_float16_slots():
    p = np.linspace(-1, 1, 7)
    for narrow in ("float32", "bfloat16", "float16"):
        state = uniopt.Adam().init([p], slot_dtypes={"exp_avg": narrow})
        assert state.slots[0]["exp_avg"].dtype == (BF16 if narrow == "bfloat16" else np.dtype(narrow))
        _, state = uniopt.Adam().update([p], state, [p])
        assert state.slots[0]["exp_avg"].dtype == (BF16 if narrow == "bfloat16" else np.dtype(narrow))
        assert state.slots[0]["exp_avg_sq"].dtype == np.float64


@pytest.mark.parametrize(
    ("spec", "slot_dtypes", "params", "match"),
    [
        (
            uniopt.Adam(),
            {"exp_avg": "float32"},
            [np.ones(2, BF16)],
            r"slot_dtypes\['exp_avg'\]=float32 for "
            r"params\[0\] of dtype bfloat16: expected bfloat16: the parameter's dtype",
        ),
        (uniopt.Adam(), {"exp_avg": "float16"}, [np.ones(2, BF16)], r"expected bfloat16"),
        (
            uniopt.Adam(),
            {"exp_avg": "complex64"},
            [np.ones(2, np.float32)],
            r"=complex64 for params\[0\] of dtype float32: expected float32 or bfloat16 or float16",
        ),
        (uniopt.Adam(), {"exp_avg": "int8"}, [np.ones(2, np.float32)], r"=int8 for params\[0\]"),
        (
            uniopt.Adam(),
            {"exp_avg_sq": "bfloat16"},
            [np.ones(2, np.float32)],
            r"slot 'exp_avg_sq' is stored in its parameter's dtype, float32 \(the slots stored "
            r"narrower: exp_avg\)",
        ),
        (uniopt.Adam(), {"nu": "bfloat16"}, [np.ones(2, np.float32)], r"names 'nu', not a slot"),
        (
            uniopt.RMSprop(),
            {"square_avg": "bfloat16"},
            [np.ones(2, np.float32)],
            r"the slots stored narrower: none",
        ),
        (
            uniopt.Adam(),
            {"exp_avg": "bfloat16"},
            [np.ones(2, np.float32), np.ones(2, np.complex64)],
            r"params\[1\] of dtype complex64: expected complex64",
        ),
    ],
)
def test_a_slot_dtype_refused_names_the_slot_and_the_accepted_dtypes(spec, slot_dtypes, params, match):
    with pytest.raises(ValueError, match=match):
        spec.init(params, slot_dtypes=slot_dtypes)


def test_round_to_dtype_is_ml_dtypes_rounding_of_the_float64():
    rng = np.random.default_rng(3)
    values = np.concatenate(
        [
            rng.standard_normal(20000) * 10.0 ** rng.uniform(-45, 40, 20000),
            [0.9, 0.99, 0.999, 0.95, 1 - 2**-9, 1 + 2**-8, 1 + 3 * 2**-9, 2**-133, 2**-134, 3 * 2**-134],
            [65504.0, 65520.0, 65519.99, 6e-8, 3e-8, 2.9e-8, 3.4e38, 3.3961e38, 3.3895313892515355e38],
            [-0.0, float("inf"), float("-inf")],
        ]
    )
    for name, dtype in NARROW.items():
        for v in values:
            want = float(np.asarray(v, np.float64).astype(dtype).astype(np.float64))
            got = round_to_dtype(float(v), name)
            assert got == want or (math.isnan(got) and math.isnan(want)), (name, v, got, want)
            assert math.copysign(1, got) == math.copysign(1, want)


def test_from_float64_a_bfloat16_slot_is_rounded_through_float32():
    """m = 0.1 * g = -490.99999990 in float64: float32 rounds it to -491, a bfloat16 tie between
    -490 and -492 that goes to the even -492 (XLA's conversion); rounded directly it would be -490."""
    g = np.array([-4909.999999], np.float64)
    m64 = g[0] * 0.1
    assert np.asarray(m64).astype(BF16) == -490  # ml_dtypes' direct rounding
    spec = uniopt.Adam(lr=1e-3)
    state = spec.init([np.zeros(1)], slot_dtypes={"exp_avg": "bfloat16"})
    _, state = spec.update([g], state, [np.zeros(1)])
    assert float(state.slots[0]["exp_avg"][0]) == float(np.float32(m64).astype(BF16)) == -492.0
