"""uniopt.tf's ``state_dtypes``: slot variables of ``Spec.lower_precision_slots`` created in bfloat16
or float16 beside float32 variables (docs/tf.md, docs/conventions.md "Lower-precision state").

Expected values: the NumPy reference (the core's ``init(slot_dtypes=...)``/``update`` on NumPy
arrays, ml_dtypes' bfloat16) bit for bit, and a hand-written NumPy float32 Adam step with ml_dtypes'
rounding (each operation of the formula written out here, not the spec's rule)."""

from __future__ import annotations

import io
import math

import keras
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from cases import float32_draws

import uniopt
import uniopt.porting
import uniopt.tf as ut
from uniopt.registry import TABLE

STATE_CASES = [
    pytest.param(info, case, mode, id=f"{info.name}-{case.desc}-{mode}")
    for info in TABLE
    if info.keras is not None
    for case in info.state_cases
    for mode in ("eager", "function")
]
STEPS = 5


def _bits(a) -> np.ndarray:
    a = a.numpy() if hasattr(a, "numpy") else np.asarray(a)
    return a.view(f"u{a.dtype.itemsize}")


@pytest.mark.parametrize(("info", "case", "mode"), STATE_CASES)
def test_matches_the_numpy_reference(info, case, mode):
    """Every state case of a row with Keras names, eagerly and in ``tf.function``: variables and
    every slot (in its stored dtype) bit for bit against the core run on NumPy after each step."""
    params0, grads = float32_draws([(8, 6), (5, 4)], STEPS, seed=3)
    spec = info.make(case)
    state = spec.init(params0, slot_dtypes=case.slot_dtypes)
    ref = list(params0)
    vs = [tf.Variable(p) for p in params0]
    opt = ut.from_spec(spec, state_dtypes=dict(case.slot_dtypes))
    opt.build(vs)
    apply = lambda gs: opt.apply([tf.constant(g) for g in gs], vs)  # noqa: E731
    if mode == "function":
        apply = tf.function(lambda gs: opt.apply(gs, vs))
    for t, g in enumerate(grads, start=1):
        ref, state = spec.update(g, state, ref)
        apply([tf.constant(x) for x in g])
        for i, v in enumerate(vs):
            np.testing.assert_array_equal(_bits(v), _bits(ref[i]), err_msg=f"param {i} step {t}")
            for name, want in state.slots[i].items():
                got = opt.slots(v)[name]
                if got is None:  # Muon keeps no velocity for a matrix (its zeros, passed through)
                    continue
                assert tf.as_dtype(got.dtype).name == want.dtype.name, (name, got.dtype)
                np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=f"{name} {i} step {t}")
    for name, dtype in case.slot_dtypes.items():
        assert tf.as_dtype(opt.slots(vs[0])[name].dtype).name == dtype


@pytest.mark.parametrize("narrow", ["bfloat16", "float16"])
def test_adam_hand_steps(narrow):
    """Two steps of uniopt's Adam formula in NumPy float32, the moment rounded once per step to the
    stored dtype by ml_dtypes/NumPy; the step taken from the unrounded moment."""
    dt = np.dtype(ml_dtypes.bfloat16) if narrow == "bfloat16" else np.dtype(np.float16)
    (p0,), grads = float32_draws([(300,)], 2, seed=4)
    v_ = keras.Variable(p0)
    opt = ut.Adam(1e-2, state_dtypes={"exp_avg": narrow})
    b1, b2, eps = np.float32(0.9), np.float32(0.999), np.float32(1e-8)
    m, v, q = np.zeros(p0.shape, dt), np.zeros_like(p0), p0.copy()
    for t, (g,) in enumerate(grads, start=1):
        opt.apply([tf.constant(g)], [v_])
        m32 = m.astype(np.float32) * b1 + g * np.float32(1 - 0.9)
        v = v * b2 + (g * g) * np.float32(1 - 0.999)
        step_size = np.float32(1e-2 / (1 - 0.9**t))
        inv_sqrt_bc2 = np.float32(1 / math.sqrt(1 - 0.999**t))
        q = q - (m32 / (np.sqrt(v) * inv_sqrt_bc2 + eps)) * step_size
        m = m32.astype(dt)
        np.testing.assert_array_equal(_bits(opt.slots(v_)["exp_avg"]), _bits(m), err_msg=f"step {t}")
        np.testing.assert_array_equal(_bits(opt.slots(v_)["exp_avg_sq"]), _bits(v))
        np.testing.assert_array_equal(_bits(v_), _bits(q))
    assert tf.as_dtype(opt.slots(v_)["exp_avg"].dtype).name == narrow
    assert tf.as_dtype(opt.slots(v_)["exp_avg_sq"].dtype).name == "float32"
    assert np.any(m32 != m.astype(np.float32))  # the rounding happened


def test_config_round_trip():
    opt = ut.Adam(1e-3, state_dtypes={"exp_avg": tf.bfloat16})
    config = opt.get_config()
    assert config["state_dtypes"] == {"exp_avg": "bfloat16"}
    again = ut.Adam.from_config(config)
    assert again.state_dtypes == {"exp_avg": "bfloat16"} and again.spec == opt.spec
    assert "state_dtypes" not in ut.Adam(1e-3).get_config()  # Keras's own keys where not given


def test_keras_save_load_keeps_the_dtype_and_continues_bitwise(tmp_path):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((64, 5)).astype(np.float32)
    y = rng.standard_normal((64, 1)).astype(np.float32)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    opt = ut.Adam(1e-2, state_dtypes={"exp_avg": "bfloat16"})
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer) is ut.Adam and loaded.optimizer.state_dtypes == {"exp_avg": "bfloat16"}
    for w in model.trainable_variables:
        assert tf.as_dtype(opt.slots(w)["exp_avg"].dtype).name == "bfloat16"
    assert len(loaded.optimizer.variables) == len(opt.variables)
    for a, b in zip(opt.variables, loaded.optimizer.variables, strict=True):
        assert a.dtype == b.dtype and np.array_equal(_bits(a), _bits(b)), a.path
    model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    loaded.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(model.weights + opt.variables, loaded.weights + loaded.optimizer.variables, strict=True):
        assert a.dtype == b.dtype and np.array_equal(_bits(a), _bits(b)), a.path


@pytest.mark.parametrize(
    ("state_dtypes", "message"),
    [
        ({"exp_avg_sq": "bfloat16"}, r"state_dtypes\['exp_avg_sq'\]='bfloat16' for variable .*stored in its"),
        (
            {"exp_avg": "float64"},
            r"state_dtypes\['exp_avg'\]='float64' .*expected float32 or bfloat16 or float16",
        ),
        ({"exp_avg": "int8"}, r"state_dtypes\['exp_avg'\]='int8'; expected a real floating dtype"),
        ({"mu": "bfloat16"}, r"state_dtypes names 'mu', not a slot"),
        ("bfloat16", r"state_dtypes='bfloat16'; expected a dict"),
    ],
)
def test_bad_values_are_refused_before_any_slot(state_dtypes, message):
    v = keras.Variable(np.ones(3, np.float32))
    with pytest.raises(ValueError, match=message):
        opt = ut.Adam(1e-2, state_dtypes=state_dtypes)
        opt.build([v])


def test_build_refusal_leaves_no_slot():
    half = keras.Variable(np.ones(3, np.float16))
    opt = ut.Adam(1e-2, epsilon=1e-3, state_dtypes={"exp_avg": "bfloat16"})
    with pytest.raises(ValueError, match=r"state_dtypes\['exp_avg'\]='bfloat16' for variable .* float16"):
        opt.build([half])
    before = [v.path for v in opt.variables]  # iteration and learning_rate: made at construction
    assert not opt.built and all(("iteration" in p or "learning_rate" in p) for p in before)


def test_import_of_a_narrow_record_continues_the_numpy_run():
    """A record with a bfloat16 moment (made by the core on NumPy, as any backend makes it) goes
    into uniopt.tf through save_state/load_state and continues bit for bit; an optimizer that keeps
    the moment in float32 refuses it before anything is assigned."""
    params0, grads = float32_draws([(6, 4), (4,)], 6, seed=11)
    spec = uniopt.Adam(lr=1e-2)
    state, params = spec.init(params0, slot_dtypes={"exp_avg": "bfloat16"}), list(params0)
    for g in grads[:3]:
        params, state = spec.update(g, state, params)
    record = uniopt.porting.export_state(spec, state, params)
    assert record.slot_dtypes == ({"exp_avg": "bfloat16"}, {"exp_avg": "bfloat16"})
    buffer = io.BytesIO()
    uniopt.save_state(buffer, record)
    buffer.seek(0)
    record = uniopt.load_state(buffer)
    assert record.slots[0]["exp_avg"].dtype == np.dtype(ml_dtypes.bfloat16)
    wide = ut.Adam(1e-2)
    with pytest.raises(ValueError, match=r"slot 'exp_avg' is bfloat16 in the state and float32"):
        ut.import_state(wide, record, [keras.Variable(p) for p in params])
    assert int(wide.iterations.numpy()) == 0
    vs = [keras.Variable(p) for p in params]
    opt = ut.Adam(1e-2, state_dtypes={"exp_avg": "bfloat16"})
    ut.import_state(opt, record, vs)
    for g in grads[3:]:
        params, state = spec.update(g, state, params)
        opt.apply([tf.constant(x) for x in g], vs)
    for i, v in enumerate(vs):
        np.testing.assert_array_equal(_bits(v), _bits(params[i]))
        for name in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(_bits(opt.slots(v)[name]), _bits(state.slots[i][name]))
    out = ut.export_state(opt, vs)
    assert out.slot_dtypes == record.slot_dtypes and out.step == 6
