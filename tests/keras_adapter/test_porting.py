"""uniopt.keras.export_state / import_state (and from_keras / to_keras for Keras's own optimizers) on
this process's Keras backend: a run exported, saved to a file, loaded and imported into a new
optimizer continues bit for bit as the uninterrupted NumPy reference of the core; a mismatch raises
before anything is assigned. Moves between backends and frameworks: test_moves.py."""

from __future__ import annotations

import keras
import ml_dtypes
import numpy as np
import pytest
from keras_helpers import BACKEND, FeedModel, feed_loss, fit_feed
from porting_cases import CASES, STEPS, assert_bitwise, assert_state_bitwise, reference, stream

import uniopt
import uniopt.keras as uk
from uniopt.porting import export_state as core_export
from uniopt.registry import get

BF16 = np.dtype(ml_dtypes.bfloat16)
ADAM_BF16 = ("Adam-bfloat16", uniopt.Adam(lr=1e-2, weight_decay=0.05), 4, {"exp_avg": "bfloat16"})
# every case of the state-porting tests whose optimizer has a Keras class (float32: Keras on JAX has no
# float64 without jax_enable_x64), and Adam with a bfloat16 first moment
RUNS = [
    pytest.param(spec, split, None, id=name)
    for name, spec, split in CASES
    if get(spec.name).keras is not None
] + [pytest.param(*ADAM_BF16[1:], id=ADAM_BF16[0])]


def _variables(arrays):
    return [keras.Variable(np.asarray(a), dtype=str(np.asarray(a).dtype)) for a in arrays]


def _numpy(variables):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]


def _run(opt, variables, grads):
    for g in grads:
        opt.apply([keras.ops.convert_to_tensor(x) for x in g], variables)


def _optimizer(spec, state_dtypes=None):
    return uk.from_spec(spec, **({"state_dtypes": state_dtypes} if state_dtypes else {}))


def _reference(spec, params0, grads, state_dtypes=None):
    """The uninterrupted NumPy run of the core (slots stored in ``state_dtypes``)."""
    params = [p.copy() for p in params0]
    state = spec.init(params, slot_dtypes=state_dtypes)
    for g in grads:
        params, state = spec.update(g, state, params)
    return params, state


@pytest.mark.parametrize("source", ["keras", "numpy"])
@pytest.mark.parametrize(("spec", "split", "state_dtypes"), RUNS)
def test_resume_from_a_file_is_bitwise(tmp_path, spec, split, state_dtypes, source):
    """Steps 1..split in this backend's optimizer (or the core's NumPy run), export, save_state,
    load_state, import into a new optimizer over new variables, steps split+1..9 there: parameters,
    slots, history and step equal the uninterrupted NumPy run's."""
    params0, grads = stream("float32", spec=spec)
    expected_params, expected_state = _reference(spec, params0, grads, state_dtypes)
    if source == "keras":
        variables = _variables(params0)
        opt = _optimizer(spec, state_dtypes)
        _run(opt, variables, grads[:split])
        record, arrays = uk.export_state(opt, variables), _numpy(variables)
    else:
        arrays, state = _reference(spec, params0, grads[:split], state_dtypes)
        record = core_export(spec, state, arrays)
    assert record.step == split and record.to_spec() == spec
    uniopt.save_state(tmp_path / "s.npz", record)
    loaded = uniopt.load_state(tmp_path / "s.npz")
    variables = _variables(arrays)
    opt = _optimizer(loaded.to_spec(), loaded.slot_dtypes[0] or None)
    uk.import_state(opt, loaded, variables)
    _run(opt, variables, grads[split:])
    final = uk.export_state(opt, variables)
    assert_bitwise(_numpy(variables), expected_params, "params")
    assert_state_bitwise(final.slots, expected_state, STEPS, final.step)
    if expected_state.history is not None:
        assert final.history == expected_state.history._asdict()


def test_resume_after_fit_is_bitwise():
    """The state ``fit`` leaves (compiled where that is quick: XLA, jax.jit) exports, and imported into a
    new model's optimizer continues under ``fit`` as the uninterrupted NumPy run."""
    spec = uniopt.RAdam(lr=1e-2, weight_decay=0.1)
    params0, grads = stream("float32", spec=spec)
    expected_params, expected_state = reference(spec, params0, grads)
    jit = BACKEND != "torch"  # torch.compile: test_training.py; minutes here
    first = fit_feed(uk.from_spec(spec), params0, grads[:4], jit_compile=jit)
    record = uk.export_state(first.optimizer, first.trainable_variables)
    assert record.step == 4
    shapes = [np.shape(p) for p in params0]
    second = FeedModel(shapes)
    second.build((None, sum(int(np.size(p)) for p in params0)))
    for w, value in zip(second.ws, _numpy(first.trainable_variables), strict=True):
        w.assign(value)
    opt = uk.from_spec(record.to_spec())
    second.compile(optimizer=opt, loss=feed_loss, jit_compile=jit)
    uk.import_state(opt, record, second.trainable_variables)
    fit_feed(opt, params0, grads[4:], jit_compile=jit, model=second)
    final = uk.export_state(opt, second.trainable_variables)
    assert_bitwise(_numpy(second.trainable_variables), expected_params, "params")
    assert_state_bitwise(final.slots, expected_state, STEPS, final.step)


def test_the_record_holds_the_spec_learning_rate_exactly():
    """A float learning rate is recorded as given, 0.01, on every backend (on JAX without x64 a
    float32 variable holds it); a record of lr=0.01 imports without hyperparameters=False."""
    variables = _variables(stream("float32", steps=0)[0])
    opt = uk.RAdam(learning_rate=0.01)
    record = uk.export_state(opt, variables)
    assert record.hyperparameters["lr"] == 0.01
    uk.import_state(uk.RAdam(learning_rate=0.01), record, _variables(stream("float32", steps=0)[0]))
    with pytest.raises(ValueError, match=r"hyperparameter lr is 0\.02 in the optimizer and 0\.01"):
        uk.import_state(uk.RAdam(learning_rate=0.02), record, variables)


def test_export_of_an_unbuilt_optimizer_is_the_initial_state():
    spec = uniopt.Adagrad(initial_accumulator_value=0.25)
    variables = _variables(stream("float32", steps=0)[0])
    record = uk.export_state(uk.from_spec(spec), variables)
    assert record.step == 0 and record.dtypes == ("float32",) * 3
    for slots, v in zip(record.slots, variables, strict=True):
        np.testing.assert_array_equal(slots["sum"], np.full(v.shape, 0.25, np.float32))


def _snapshot(opt):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in opt.variables]


def _assert_unchanged(before, after):
    assert len(before) == len(after)
    for a, b in zip(before, after, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize(
    ("make", "vars_of", "match"),
    [
        (lambda: uk.Adam(learning_rate=0.01), None, "the state is from RAdam, the optimizer is Adam"),
        (
            lambda: uk.RAdam(learning_rate=0.01),
            lambda vs: vs[:2],
            "the state holds 3 parameters, the optimizer has 2",
        ),
        (
            lambda: uk.RAdam(learning_rate=0.01),
            lambda vs: [vs[0], keras.Variable(np.zeros(6, np.float32)), vs[2]],
            r"parameter 1 has shape \(6,\), the state holds shape \(5,\)",
        ),
        (
            lambda: uk.RAdam(learning_rate=0.01),
            lambda vs: [vs[0], keras.Variable(np.zeros(5, np.float16), dtype="float16"), vs[2]],
            "parameter 1 has dtype float16, the state holds float32",
        ),
        (
            lambda: uk.RAdam(learning_rate=0.02),
            None,
            r"hyperparameter lr is 0\.02 in the optimizer and 0\.01",
        ),
    ],
)
def test_a_mismatch_raises_and_assigns_nothing(make, vars_of, match):
    spec = uniopt.RAdam(lr=0.01)
    params0, grads = stream("float32", steps=2)
    arrays, state = reference(spec, params0, grads)
    record = core_export(spec, state, arrays)
    variables = _variables(params0)
    opt = make()
    _run(opt, variables, grads[:1])
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=match):
        uk.import_state(opt, record, vars_of(variables) if vars_of else variables)
    _assert_unchanged(before, _snapshot(opt))


def test_a_slot_dtype_the_optimizer_does_not_store_is_refused():
    """A record with a bfloat16 first moment into an optimizer keeping it in float32 (and the other
    way round): ValueError saying which state_dtypes to build with; nothing assigned."""
    spec = uniopt.Adam(lr=1e-2)
    params0, grads = stream("float32", steps=2)
    arrays, state = _reference(spec, params0, grads, {"exp_avg": "bfloat16"})
    narrow = core_export(spec, state, arrays)
    assert narrow.slots[0]["exp_avg"].dtype == BF16
    variables = _variables(params0)
    opt = uk.Adam(learning_rate=1e-2)
    _run(opt, variables, grads[:1])
    before = _snapshot(opt)
    with pytest.raises(
        ValueError,
        match=r"parameter 0 slot 'exp_avg' is bfloat16 in the state and float32 in this optimizer; "
        r"build it with state_dtypes=\{'exp_avg': 'bfloat16'\}",
    ):
        uk.import_state(opt, narrow, variables)
    _assert_unchanged(before, _snapshot(opt))
    arrays, state = reference(spec, params0, grads)
    wide = core_export(spec, state, arrays)
    with pytest.raises(ValueError, match=r"is float32 in the state and bfloat16 in this optimizer"):
        uk.import_state(uk.Adam(learning_rate=1e-2, state_dtypes={"exp_avg": "bfloat16"}), wide, variables)


def test_variables_the_optimizer_does_not_track_are_refused():
    spec = uniopt.Adam(lr=0.01)
    params0, grads = stream("float32", steps=1)
    arrays, state = reference(spec, params0, grads)
    opt = uk.from_spec(spec)
    _run(opt, _variables(params0), grads)
    with pytest.raises(ValueError, match=r"variable 0 .* is not one this optimizer was built for"):
        uk.import_state(opt, core_export(spec, state, arrays), _variables(params0))


def test_state_a_record_cannot_hold_is_refused():
    package = "uniopt.tf" if BACKEND == "tensorflow" else "uniopt.keras"
    variables = _variables(stream("float32", steps=0)[0])
    with pytest.raises(ValueError, match=rf"^{package}\.export_state: use_ema keeps moving averages"):
        uk.export_state(uk.Adam(use_ema=True), variables)
    with pytest.raises(ValueError, match="gradient_accumulation_steps keeps accumulators"):
        uk.export_state(uk.Adam(gradient_accumulation_steps=2), variables)
    decayed = uk.AdamW(weight_decay=0.1)
    decayed.exclude_from_weight_decay(var_list=variables[:1])
    decayed.build(variables)
    with pytest.raises(ValueError, match=r"variable 0 .* is excluded from weight decay"):
        uk.export_state(decayed, variables)
    with pytest.raises(TypeError, match=rf"for a Keras optimizer use {package}\.from_keras"):
        uk.export_state(keras.optimizers.Adam(), variables)
    with pytest.raises(TypeError, match=rf"use {package}\.export_state"):
        uk.from_keras(uk.Adam(), variables)
    schedule_free = uk.ScheduleFreeAdamW(learning_rate=0.01)
    schedule_free.build(variables)
    schedule_free.eval()
    with pytest.raises(ValueError, match=r"in eval mode .* call optimizer\.train\(\) first"):
        uk.export_state(schedule_free, variables)


def test_uniopt_tf_names_the_same_functions():
    if BACKEND != "tensorflow":
        pytest.skip("uniopt.tf runs on Keras's TensorFlow backend only (ImportError elsewhere)")
    import uniopt.tf as utf

    for name in ("export_state", "import_state", "from_keras", "to_keras"):
        assert getattr(utf, name) is getattr(uk, name)


# -- Keras's own optimizers -----------------------------------------------------------------------

NATIVE = [
    (keras.optimizers.Adam, {"learning_rate": 0.01, "amsgrad": True}, "Adam"),
    (keras.optimizers.Adam, {"learning_rate": 0.01, "weight_decay": 0.1}, "AdamW"),
    (keras.optimizers.SGD, {"learning_rate": 0.5, "momentum": 0.9, "nesterov": True}, "SGD"),
    (keras.optimizers.RMSprop, {"learning_rate": 0.25, "centered": True, "momentum": 0.5}, "RMSprop"),
    (keras.optimizers.Adagrad, {"learning_rate": 0.1}, "Adagrad"),
    (keras.optimizers.Nadam, {"learning_rate": 0.01}, "NAdam"),
    (keras.optimizers.Lion, {"learning_rate": 0.01, "weight_decay": 0.1}, "Lion"),
]
# uniopt slot -> Keras's list of variables and Keras's value per unit of uniopt's, per unit lr
# (keras/src/optimizers/*.py: SGD keeps velocities -lr*b, RMSprop's momentum lr*b)
_ADAM = {"exp_avg": ("_momentums", None), "exp_avg_sq": ("_velocities", None)}
KERAS_SLOTS = {
    "Adam": {**_ADAM, "max_exp_avg_sq": ("_velocity_hats", None)},
    "AdamW": _ADAM,
    "SGD": {"momentum_buffer": ("momentums", -1.0)},
    "RMSprop": {
        "square_avg": ("_velocities", None),
        "grad_avg": ("_average_gradients", None),
        "momentum_buffer": ("_momentums", 1.0),
    },
    "Adagrad": {"sum": ("_accumulators", None)},
    "NAdam": _ADAM,
    "Lion": {"exp_avg": ("_momentums", None)},
}


@pytest.mark.parametrize(("cls", "kwargs", "name"), NATIVE, ids=[f"{c.__name__}-{n}" for c, _, n in NATIVE])
def test_keras_state_is_read_and_written_back(cls, kwargs, name):
    """from_keras reads Keras's own variables on this backend (compared with them directly);
    to_keras writes the record into a new Keras optimizer, which continues as the first one."""
    params0, grads = stream("float32", steps=5)
    variables = _variables(params0)
    native = cls(**kwargs)
    _run(native, variables, grads[:4])
    record = uk.from_keras(native, variables)
    assert (record.optimizer, record.convention, record.step) == (name, "keras", 4)
    lr = record.hyperparameters["lr"]
    assert lr == float(np.float32(kwargs["learning_rate"]))
    assert set(record.slot_names) == set(KERAS_SLOTS[name]) - (
        set() if kwargs.get("amsgrad") else {"max_exp_avg_sq"}
    )
    for slot in record.slot_names:
        attribute, sign = KERAS_SLOTS[name][slot]
        scale = np.float32(1.0 if sign is None else sign * lr)
        for i, v in enumerate(variables):
            keras_value = _numpy([getattr(native, attribute)[native._get_variable_index(v)]])[0]
            np.testing.assert_array_equal(record.slots[i][slot] * scale, keras_value, err_msg=slot)
    copies = _variables(_numpy(variables))
    resumed = cls(**kwargs)
    uk.to_keras(record, resumed, copies)
    _run(native, variables, grads[4:])
    _run(resumed, copies, grads[4:])
    assert_bitwise(_numpy(copies), _numpy(variables), "params")


def test_keras_errors():
    variables = _variables(stream("float32", steps=0)[0])
    with pytest.raises(ValueError, match=r"Keras's weight_decay=0\.1 is decoupled"):
        uk.from_keras(keras.optimizers.SGD(weight_decay=0.1), variables)
    with pytest.raises(TypeError, match="is not one of Keras's"):
        uk.from_keras(keras.optimizers.Ftrl(), variables)
    record = uk.from_keras(keras.optimizers.SGD(momentum=0.9), variables)
    adam = keras.optimizers.Adam()
    with pytest.raises(ValueError, match="the state is from SGD, the optimizer is Adam"):
        uk.to_keras(record, adam, variables)
    assert not adam.built
