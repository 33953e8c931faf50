"""uniopt.tf.Adafactor: Keras's signature, slots of the spec's shapes, bitwise steps, under XLA too.

Expected values: ``keras.optimizers.Adafactor`` itself (its signature, its steps, Keras's own test
values), a float64 NumPy transcription of torch.optim.Adafactor's algorithm written here, and the
core's NumPy run of the same spec (the reference every backend is compared with).
"""

from __future__ import annotations

import inspect
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from tf_helpers import (
    assert_trajectories,
    bits_equal,
    make_step,
    max_ulp,
    params_and_grads,
    reference,
    run_adapter,
    snapshot,
)

import uniopt
import uniopt.tf as ut
from uniopt.registry import NATIVE_TOLERANCES, get
from uniopt.tf.optimizers import CONVENTION_DEFAULT

INFO = get("Adafactor")
SHAPES = ((3, 4), (5,), (), (2, 3, 4), (1, 6))
"""A matrix, a vector, a scalar, a batch of matrices (factored over the last two axes), one row."""
KERAS_BOUND = NATIVE_TOLERANCES["Adafactor"]["keras"][0]
"""Keras sums its means in its own order (uniopt pairwise): the native row's measured bound."""


def _kwargs_cases():
    return [pytest.param(dict(case.kwargs), id=case.desc) for case in INFO.cases]


# -- signature ---------------------------------------------------------------------------------------
def test_signature_is_kerass_with_the_spec_fields_keras_lacks_keyword_only():
    ours = inspect.signature(ut.Adafactor).parameters
    theirs = inspect.signature(keras.optimizers.Adafactor).parameters
    positional = [n for n, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == [n for n in theirs if n != "kwargs"]
    assert {n for n, p in ours.items() if p.kind is p.KEYWORD_ONLY} == {
        "maximize",
        "momentum",
        "decay_offset",
        "min_dim_size_to_factor",
        "factored",
        "multiply_by_parameter_scale",
        "convention",
    }
    for name in ("beta_2_decay", "clip_threshold", "relative_step"):
        assert ours[name].default == theirs[name].default, name
    for name in ("learning_rate", "epsilon_1", "epsilon_2"):  # uniopt's and Keras's differ
        assert ours[name].default is CONVENTION_DEFAULT
    # the keras convention's defaults are Keras's (its weight_decay=None is no decay)
    assert ut.Adafactor(convention="keras").spec == uniopt.Adafactor(
        lr=1e-3, beta2_decay=-0.8, eps=(1e-30, 1e-3), d=1.0, weight_decay=0.0, convention="keras"
    )
    assert ut.Adafactor().spec == uniopt.Adafactor()  # uniopt's own: torch.optim.Adafactor's
    # Keras's positional order
    opt = ut.Adafactor(0.05, -0.5, 1e-20, 1e-2, 1.5, False, 0.1, convention="keras")
    assert opt.spec == uniopt.Adafactor(
        lr=0.05, beta2_decay=-0.5, eps=(1e-20, 1e-2), d=1.5, weight_decay=0.1, convention="keras"
    )
    assert opt.relative_step is False and opt.epsilon_1 == 1e-20 and opt.clip_threshold == 1.5
    assert not hasattr(opt, "epsilon")  # Adafactor's epsilons are epsilon_1 and epsilon_2


def test_config_round_trips_relative_step_included():
    # keras/src/optimizers/adafactor_test.py's test_config arguments (clip_threshold 0.9 < 1 is
    # Keras's to take; uniopt's and torch's conventions refuse d < 1)
    opt = ut.Adafactor(0.5, -0.65, 1e-15, 1e-4, 0.9, relative_step=False, convention="keras")
    config = opt.get_config()
    assert config["relative_step"] is False and config["beta_2_decay"] == -0.65
    back = ut.Adafactor.from_config(config)
    assert back.spec == opt.spec and back.relative_step is False
    keras_config = keras.optimizers.Adafactor(relative_step=False).get_config()
    assert set(keras_config) <= set(config)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"clip_threshold": 0.5}, r"d=0\.5 is out of range; expected 1 <= d.*argument clip_threshold"),
        ({"epsilon_1": -1.0}, r"eps\[0\]=-1\.0 is out of range.*argument epsilon_1"),
        ({"epsilon_2": -1.0}, r"eps\[1\]=-1\.0 is out of range.*argument epsilon_2"),
        ({"beta_2_decay": 0.1}, r"beta2_decay=0\.1 is out of range.*argument beta_2_decay"),
        ({"learning_rate": -0.1}, r"lr=-0\.1 is out of range.*argument learning_rate"),
        ({"weight_decay": -0.1}, r"weight_decay=-0\.1 is out of range"),
        ({"relative_step": "yes"}, r"relative_step='yes' is not a bool"),
        ({"relative_step": 1}, r"relative_step=1 is not a bool"),
        ({"momentum": 0.9}, r"momentum=0\.9 with convention='uniopt'"),
        ({"epsilon": 1e-7}, r"epsilon"),  # Keras's Adafactor has no epsilon either
        ({"clip_threshold": None}, r"d=None \(no update clipping\) with convention='uniopt'"),
        ({"clip_threshold": 0.0, "convention": "keras"}, r"d=0\.0 is out of range; expected 0 < d"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ut.Adafactor(**kwargs)


def test_one_epsilon_given_takes_the_conventions_other():
    assert ut.Adafactor(epsilon_1=1e-20).spec.eps == (1e-20, 1e-3)
    assert ut.Adafactor(epsilon_2=1e-2).spec.eps == (None, 1e-2)  # uniopt's eps1: machine epsilon
    assert ut.Adafactor(epsilon_2=1e-2, convention="keras").spec.eps == (1e-30, 1e-2)
    assert ut.Adafactor(epsilon_1=None, convention="keras").spec.eps == (None, 1e-3)


def test_relative_step_is_read_as_keras_reads_its_flags_under_the_keras_convention():
    assert ut.Adafactor(relative_step=0, convention="keras").relative_step is False
    opt = ut.Adafactor(convention="keras")
    with pytest.raises(AttributeError, match="relative_step is fixed at construction"):
        opt.relative_step = False
    with pytest.raises(AttributeError, match="clip_threshold is fixed at construction"):
        opt.clip_threshold = 2.0


# -- slots -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("convention", "expected"),
    [
        (
            "uniopt",
            {
                (3, 4): {"row_var": (3, 1), "col_var": (1, 4), "variance": ()},
                (5,): {"row_var": (), "col_var": (), "variance": (5,)},
                (): {"row_var": (), "col_var": (), "variance": ()},
                (2, 3, 4): {"row_var": (2, 3, 1), "col_var": (2, 1, 4), "variance": ()},
            },
        ),
        (
            "keras",  # keras.optimizers.Adafactor's r, c and v (read from its build below)
            None,
        ),
    ],
)
def test_build_makes_the_slots_the_spec_shapes(convention, expected):
    shapes = ((3, 4), (5,), (), (2, 3, 4))
    variables = [tf.Variable(np.zeros(s, np.float64)) for s in shapes]
    opt = ut.Adafactor(convention=convention)
    opt.build(variables)
    if expected is None:  # Keras's own layout: r (..., n), c (..., m), v the variable's shape
        native = keras.optimizers.Adafactor()
        native_vars = [keras.Variable(np.zeros(s, np.float64), dtype="float64") for s in shapes]
        native.build(native_vars)
        expected = {}
        for s, v in zip(shapes, native_vars, strict=True):
            i = native._get_variable_index(v)
            expected[s] = {n: tuple(getattr(native, f"_{n}")[i].shape) for n in ("r", "c", "v")}
    for s, v in zip(shapes, variables, strict=True):
        slots = opt.slots(v)
        assert {n: tuple(x.shape) for n, x in slots.items()} == expected[s]
        assert all(x.dtype == "float64" and not np.any(x.numpy()) for x in slots.values())
    assert len(opt.variables) == 2 + 3 * len(shapes)  # iterations, learning_rate, the slots


# -- steps -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("kwargs", _kwargs_cases())
def test_every_case_is_bitwise_with_the_core(kwargs, mode):
    spec = uniopt.Adafactor(**kwargs)
    params, grads = params_and_grads(6, "float32", seed=2, shapes=SHAPES)
    got = run_adapter(ut.from_spec(spec), params, grads, mode)
    assert_trajectories(got, reference(spec, params, grads))


@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16"])
def test_other_dtypes_are_bitwise_with_the_core(dtype):
    spec = uniopt.Adafactor(weight_decay=0.01)
    params, grads = params_and_grads(4, "float32", seed=3, shapes=SHAPES)
    if dtype == "bfloat16":
        import ml_dtypes

        cast = ml_dtypes.bfloat16
    else:
        cast = np.dtype(dtype)
    params = [p.astype(cast) for p in params]
    grads = [[g.astype(cast) for g in gs] for gs in grads]
    got = run_adapter(ut.from_spec(spec), params, grads, "function")
    assert_trajectories(got, reference(spec, params, grads))


def _torch_algorithm_float64(p, g, row, col, var, t, lr=1e-2, c=-0.8, eps2=1e-3, d=1.0):
    """torch.optim.Adafactor's step (torch/optim/_adafactor.py), written out in float64 NumPy:
    eps1 the machine epsilon, no weight decay."""
    eps1 = np.finfo(np.float64).eps
    beta_hat = 1.0 - t**c
    rho = min(lr, 1.0 / math.sqrt(t))
    alpha = max(eps2, np.sqrt(np.mean(p * p))) * rho
    if p.ndim >= 2:
        row = row + (1 - beta_hat) * (np.mean(g * g, axis=-1, keepdims=True) - row)
        col = col + (1 - beta_hat) * (np.mean(g * g, axis=-2, keepdims=True) - col)
        v = row * col / max(np.mean(row), eps1)
    else:
        var = var + (1 - beta_hat) * (g * g - var)
        v = var
    u = g / np.sqrt(np.maximum(v, eps1 * eps1))
    u = u / max(1.0, np.sqrt(np.mean(u * u)) / d)
    return p - alpha * u, row, col, var


def test_uniopt_convention_is_torchs_algorithm_in_float64():
    rng = np.random.default_rng(11)
    p0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(5)]
    variable = tf.Variable(p0)
    opt = ut.Adafactor()
    step = make_step(opt, [variable], "function")
    p, row, col = p0, np.zeros((3, 1)), np.zeros((1, 4))
    for t, g in enumerate(grads, start=1):
        step([tf.constant(g)])
        p, row, col, _ = _torch_algorithm_float64(p, g, row, col, None, t)
        np.testing.assert_allclose(variable.numpy(), p, rtol=1e-13, atol=0)
        np.testing.assert_allclose(opt.slots(variable)["row_var"].numpy(), row, rtol=1e-13)
        np.testing.assert_allclose(opt.slots(variable)["col_var"].numpy(), col, rtol=1e-13)


def test_kerass_own_test_values():
    """keras/src/optimizers/adafactor_test.py's single steps and weight-decay values, as Keras
    asserts them (their tolerances)."""
    opt = ut.Adafactor(learning_rate=0.5, convention="keras")
    v = keras.Variable([1.0, 2.0, 3.0, 4.0])
    opt.apply_gradients([(np.array([1.0, 6.0, 7.0, 2.0]), v)])
    np.testing.assert_allclose(v.numpy(), [-0.3693, 0.6307, 1.6307, 2.6307], rtol=1e-4, atol=1e-4)
    opt = ut.Adafactor(learning_rate=0.5, convention="keras")
    v = keras.Variable([[1.0, 2.0], [3.0, 4.0]])
    opt.apply_gradients([(np.array([[1.0, 6.0], [7.0, 2.0]]), v)])
    np.testing.assert_allclose(v.numpy(), [[0.7007, -0.0081], [1.2492, 3.4407]], rtol=1e-4, atol=1e-4)
    v = keras.Variable(2.0)
    ut.Adafactor(learning_rate=1.0, weight_decay=0.004, convention="keras").apply_gradients(
        [(np.zeros(()), v)]
    )
    assert v.numpy() == pytest.approx(2.0 - 2.0 * 0.004, abs=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"learning_rate": 0.01, "weight_decay": 0.004, "clip_threshold": 1.3}],
    ids=["defaults", "decay-clip"],
)
def test_keras_convention_follows_kerass_adafactor(kwargs, dtype):
    """keras.optimizers.Adafactor side by side, both eagerly, on every rank: within the native
    row's bound (Keras sums its means in its own order), every parameter and slot moved."""
    params, grads = params_and_grads(10, dtype, seed=5, shapes=SHAPES)
    native_vars = [keras.Variable(p, dtype=dtype) for p in params]
    native = keras.optimizers.Adafactor(**kwargs)
    ours_vars = [keras.Variable(p, dtype=dtype) for p in params]
    ours = ut.Adafactor(**kwargs, convention="keras")
    worst = 0
    for g in grads:
        native.apply([tf.constant(x) for x in g], native_vars)
        ours.apply([tf.constant(x) for x in g], ours_vars)
        for a, b, shape in zip(ours_vars, native_vars, SHAPES, strict=True):
            worst = max(worst, max_ulp(a.numpy(), b.numpy()))
            j = native._get_variable_index(b)
            in_use = ours.spec.slots_in_use(shape)
            for name in ("r", "c", "v"):
                theirs = getattr(native, f"_{name}")[j].numpy()
                if name in in_use:
                    worst = max(worst, max_ulp(ours.slots(a)[name].numpy(), theirs))
                else:  # Keras's int32 dummies, the spec's zero placeholders
                    assert theirs == 0 and ours.slots(a)[name].numpy() == 0
    assert worst <= KERAS_BOUND
    assert all(not np.array_equal(v.numpy(), p) for v, p in zip(ours_vars, params, strict=True))


def test_an_empty_variable_is_left_as_it_is():
    variables = [tf.Variable(np.zeros((0, 3), np.float32)), tf.Variable(np.ones((2, 2), np.float32))]
    opt = ut.Adafactor()
    step = make_step(opt, variables, "function")
    step([tf.zeros((0, 3)), tf.ones((2, 2))])
    assert variables[0].shape == (0, 3) and opt.slots(variables[0])["col_var"].shape == (1, 3)
    assert not np.array_equal(variables[1].numpy(), np.ones((2, 2), np.float32))


# -- XLA ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("convention", ["uniopt", "torch", "keras", "optax"])
def test_xla_steps_are_bitwise_with_the_core(convention, dtype):
    """Under jit_compile the per-step scalars are computed in-graph (uniopt.scalar_ops) and the
    rule's divisions by counts stay divisions (3 and 5 are not powers of two): the trajectory is
    the core's NumPy run, bit for bit."""
    kwargs = {"convention": convention, "weight_decay": 0.1}
    if convention == "optax":
        kwargs.update(min_dim_size_to_factor=2, momentum=0.5, decay_offset=2)
    params, grads = params_and_grads(6, dtype, shapes=SHAPES)
    variables = [tf.Variable(p) for p in params]
    opt = ut.from_spec(uniopt.Adafactor(**kwargs))
    step = make_step(opt, variables, "xla")
    got = []
    for g in grads:
        step([tf.constant(x) for x in g])
        got.append(snapshot(opt, variables))
    assert_trajectories(got, reference(opt.spec, params, grads))


# steps where a 16-bit scalar of the default spec lies just past a halfway point (found by a
# review): float16 t^-0.8 at 10984 and 95170, 1/sqrt(t) at 62390; bfloat16 1/sqrt(t) at 66835,
# t^-0.8 at 418286; float32 double rounding would land them on the halfway point
HALFWAY_STEPS = (10_984, 62_390, 66_835, 95_170, 418_286)


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("convention", ["uniopt", "torch", "keras", "optax"])
def test_xla_scalars_equal_the_hosts_at_any_step_and_learning_rate(convention, dtype):
    """The in-graph scalars (``t^c`` by XLA's ``pow``, ``min(lr, 1/sqrt(t))``, Keras's float32
    values, optax's ``powf``) against the host's ``step_scalars`` (the C library's ``pow`` and
    ``powf`` in Python and NumPy), rounded once to the dtype: equal at the first steps (where
    ``torch.lerp``'s branch flips), far past any table (2^31 + 5, where float32 ``t`` is rounded),
    where a 16-bit value lies just past a halfway point (rounding through float32 would move it)
    and at learning rates other than the spec's (a schedule's)."""
    from uniopt.tf._scalars import scalar_source

    beta2_decay = -0.8 if dtype in ("float16", "bfloat16") else -0.7
    spec = uniopt.Adafactor(convention=convention, weight_decay=0.1, beta2_decay=beta2_decay)
    source = scalar_source(spec, dtype)
    compiled = tf.function(lambda step, lr: tuple(source.traced(step, lr, "test")), jit_compile=True)
    fields = source.scalars_type._fields
    for step in (*range(1, 12), 1000, 12_345, *HALFWAY_STEPS, 10**6 + 7, 2**31 + 5):
        for lr in (spec.lr, 0.37, 3e-5):
            lr32 = float(np.float32(lr))  # Keras's learning rate variable is float32
            got = compiled(tf.constant(step, tf.int64), tf.constant(lr32, tf.float32))
            want = source.host(step, lr32)
            for name, g, w in zip(fields, got, want, strict=True):
                if isinstance(w, bool):  # torch.lerp's branch
                    assert bool(g.numpy()) is w, (name, step, lr)
                else:
                    assert bits_equal(np.asarray(g.numpy()), np.asarray(w)), (name, step, lr, g, w)


def test_fit_with_jit_compile_follows_the_same_fit_without_it():
    """``model.fit(jit_compile=True)`` (what ``jit_compile="auto"`` picks on a GPU): the optimizer
    is built inside the first XLA step and steps as in ``tf.function``. XLA computes the model's
    gradients in its own order, so the weights after two epochs agree within float32 rounding (a
    step count or scalar off by one step would move them by percents)."""
    x, y = _data()
    weights, opts = [], []
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        model = _model()
        opt = ut.Adafactor(learning_rate=0.05)
        model.compile(optimizer=opt, loss="mse", jit_compile=jit)
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
        weights.append([w.numpy() for w in model.weights])
        opts.append(opt)
    assert [int(o.iterations.numpy()) for o in opts] == [6, 6]
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    assert any(not np.array_equal(w, w0) for w, w0 in zip(weights[1], _initial_weights(), strict=True))


def _initial_weights():
    keras.utils.set_random_seed(0)
    return [w.numpy() for w in _model().weights]


# -- Keras: fit, files, checkpoints ------------------------------------------------------------------
def _model():
    """A conv kernel of rank 4 (3, 3, 1, 2), biases, a Dense kernel: every slot layout."""
    return keras.Sequential(
        [
            keras.Input((6, 6, 1)),
            keras.layers.Conv2D(2, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(3),
        ]
    )


def _data():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((48, 6, 6, 1)).astype("float32")
    return x, rng.standard_normal((48, 3)).astype("float32")


def test_fit_with_mixed_ranks_follows_kerass_adafactor():
    x, y = _data()
    keras.utils.set_random_seed(0)
    ours = _model()
    theirs = _model()
    theirs.set_weights(ours.get_weights())
    ours.compile(optimizer=ut.Adafactor(learning_rate=0.01, convention="keras"), loss="mse")
    theirs.compile(optimizer=keras.optimizers.Adafactor(learning_rate=0.01), loss="mse")
    before = [w.copy() for w in ours.get_weights()]
    ours.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    theirs.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    kernel = ours.layers[0].kernel
    assert tuple(kernel.shape) == (3, 3, 1, 2)
    assert {n: tuple(s.shape) for n, s in ours.optimizer.slots(kernel).items()} == {
        "r": (3, 3, 1),
        "c": (3, 3, 2),
        "v": (3, 3, 1, 2),
    }
    for a, b, w0 in zip(ours.get_weights(), theirs.get_weights(), before, strict=True):
        assert not np.array_equal(a, w0)
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_model_save_load_continues_bitwise(tmp_path):
    x, y = _data()
    keras.utils.set_random_seed(1)
    model = _model()
    model.compile(optimizer=ut.Adafactor(weight_decay=0.01), loss="mse")
    model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is ut.Adafactor and loaded.optimizer.spec == model.optimizer.spec
    assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        assert a.shape == b.shape and bits_equal(a.numpy(), b.numpy()), a.path
    model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    loaded.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    for a, b in zip(
        model.weights + model.optimizer.variables, loaded.weights + loaded.optimizer.variables, strict=True
    ):
        assert bits_equal(a.numpy(), b.numpy()), a.path


# -- porting -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["default", "keras", "optax"])
def test_export_import_round_trip_continues_bitwise(case):
    spec = INFO.make(INFO.case(case))
    params, grads = params_and_grads(8, seed=4, shapes=SHAPES)
    variables = [tf.Variable(p) for p in params]
    opt = ut.from_spec(spec)
    step = make_step(opt, variables, "eager")
    for g in grads[:4]:
        step([tf.constant(x) for x in g])
    record = ut.export_state(opt, variables)
    assert record.step == 4 and record.optimizer == "Adafactor" and record.convention == spec.convention
    for slots, v in zip(record.slots, variables, strict=True):
        for name, value in slots.items():
            assert value.shape == spec.slot_shape(name, tuple(v.shape))
    other_vars = [tf.Variable(v.numpy()) for v in variables]
    other = ut.from_spec(spec)
    ut.import_state(other, record, other_vars)
    other_step = make_step(other, other_vars, "function")
    for g in grads[4:]:
        step([tf.constant(x) for x in g])
        other_step([tf.constant(x) for x in g])
    assert_trajectories([snapshot(other, other_vars)], [snapshot(opt, variables)])
    assert_trajectories([snapshot(opt, variables)], reference(spec, params, grads)[-1:])


def test_a_record_of_other_shapes_is_refused_and_changes_nothing():
    params, grads = params_and_grads(2, seed=4, shapes=SHAPES)
    variables = [tf.Variable(p) for p in params]
    opt = ut.Adafactor()
    make_step(opt, variables, "eager")([tf.constant(x) for x in grads[0]])
    record = ut.export_state(opt, variables)
    transposed = [tf.Variable(np.zeros((4, 3), np.float32)), *variables[1:]]
    target = ut.Adafactor()
    with pytest.raises(ValueError, match="shape"):
        ut.import_state(target, record, transposed)
    assert not target.built  # refused before the optimizer was built or anything assigned


def test_kerass_adafactor_state_ports_both_ways():
    """keras.optimizers.Adafactor's r, c and v become a keras-convention record; uniopt.tf's
    keras convention continues from it as Keras would (within the native bound), and the record
    loads back into a fresh Keras optimizer exactly."""
    params, grads = params_and_grads(8, seed=6, shapes=SHAPES)
    native_vars = [keras.Variable(p) for p in params]
    native = keras.optimizers.Adafactor(learning_rate=0.01, weight_decay=0.004, clip_threshold=1.3)
    for g in grads[:4]:
        native.apply([tf.constant(x) for x in g], native_vars)
    record = ut.from_keras(native, native_vars)
    assert record.convention == "keras" and record.step == 4
    assert record.hyperparameters["d"] == 1.3 and tuple(record.hyperparameters["eps"]) == (1e-30, 1e-3)
    j = native._get_variable_index(native_vars[0])
    assert bits_equal(record.slots[0]["r"], native._r[j].numpy())
    assert record.slots[1]["r"].shape == () and record.slots[1]["r"].dtype == np.float32

    ours_vars = [tf.Variable(v.numpy()) for v in native_vars]
    ours = ut.Adafactor(convention="keras")
    ut.import_state(ours, record, ours_vars, hyperparameters=False)
    assert ours.spec.d == 1.0  # hyperparameters=False: the optimizer's own are kept
    ours = ut.from_spec(uniopt.Adafactor(**{**record.hyperparameters, "convention": "keras"}))
    ut.import_state(ours, record, ours_vars)
    for g in grads[4:]:
        native.apply([tf.constant(x) for x in g], native_vars)
        ours.apply([tf.constant(x) for x in g], ours_vars)
    for a, b in zip(ours_vars, native_vars, strict=True):
        assert max_ulp(a.numpy(), b.numpy()) <= KERAS_BOUND

    fresh_vars = [keras.Variable(p) for p in params]
    fresh = keras.optimizers.Adafactor(learning_rate=0.01, weight_decay=0.004, clip_threshold=1.3)
    ut.to_keras(record, fresh, fresh_vars)
    assert int(fresh.iterations.numpy()) == 4
    for i, shape in enumerate(SHAPES):
        j = fresh._get_variable_index(fresh_vars[i])
        for name in uniopt.Adafactor(convention="keras").slots_in_use(shape):
            assert bits_equal(getattr(fresh, f"_{name}")[j].numpy(), record.slots[i][name])


@pytest.mark.parametrize("jit", [False, True], ids=["function", "xla"])
def test_a_gradient_traced_without_its_static_shape_steps_as_the_core(jit):
    """A gradient whose static shape is unknown in the traced step (an ``IndexedSlices`` gradient
    densified in a graph, as ``LossScaleOptimizer`` unscales an Embedding's): the step takes the
    variable's shape, which Adafactor's row and column sums need, and is the reference's; a
    gradient of another size is refused. And the user's case: ``model.fit`` of an Embedding under
    ``mixed_float16`` (Keras wraps the optimizer in a ``LossScaleOptimizer``) runs."""
    spec = uniopt.Adafactor()
    params, grads = params_and_grads(3, "float32", seed=4, shapes=((6, 5), (7,)))
    opt = ut.from_spec(spec)
    variables = [keras.Variable(p) for p in params]
    opt.build(variables)
    signature = [tf.TensorSpec([None, 5], tf.float32), tf.TensorSpec([None], tf.float32)]

    @tf.function(input_signature=[signature], jit_compile=jit)
    def step(gs):
        opt.apply_gradients(zip(gs, variables, strict=True))

    for g in grads:
        step([tf.constant(x) for x in g])
    assert_trajectories([snapshot(opt, variables)], [reference(spec, params, grads)[-1]])
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        step([tf.zeros((3, 5)), tf.zeros((7,))])

    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        inputs = keras.Input((6,), dtype="int32")
        hidden = keras.layers.Flatten()(keras.layers.Embedding(100, 8)(inputs))
        model = keras.Model(inputs, keras.layers.Dense(10)(hidden))
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        model.compile(optimizer=ut.Adafactor(), loss=loss, jit_compile=jit)
        x = np.random.default_rng(0).integers(0, 100, size=(32, 6)).astype("int32")
        before = model.layers[1].embeddings.numpy().copy()
        history = model.fit(x, np.zeros(32, "int32"), batch_size=16, epochs=1, verbose=0)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert np.isfinite(history.history["loss"][-1])
        assert not np.array_equal(model.layers[1].embeddings.numpy(), before)
    finally:
        keras.mixed_precision.set_global_policy(policy)
