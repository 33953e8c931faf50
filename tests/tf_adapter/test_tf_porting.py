"""uniopt.tf state export/import: files between runs resume bit for bit (against the uninterrupted
NumPy reference of the core), mismatches assign nothing, and Keras's own optimizers' state is read
and written back."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from porting_cases import (
    STEPS,
    assert_bitwise,
    assert_state_bitwise,
    params_for,
    reference,
    stream,
)

import uniopt
import uniopt.tf as utf
from uniopt.porting import export_state as core_export
from uniopt.porting import import_state as core_import


def _variables(arrays):
    return [keras.Variable(np.asarray(a), dtype=str(np.asarray(a).dtype)) for a in arrays]


def _run(opt, variables, grads, function=False):
    def apply(g):
        opt.apply_gradients(zip(g, variables, strict=True))

    step = tf.function(apply) if function else apply
    for g in grads:
        step([tf.constant(x) for x in g])


@pytest.mark.parametrize("route", ["tf->tf", "function->function", "numpy->tf", "tf->numpy"])
@pytest.mark.parametrize(("spec", "split", "dtype"), params_for("tf"))
def test_resume_from_a_file_is_bitwise(tmp_path, spec, split, dtype, route):
    function = route == "function->function"
    source, target = route.replace("function", "tf").split("->")
    params0, grads = stream(dtype, spec=spec)
    expected_params, expected_state = reference(spec, params0, grads)
    if source == "tf":
        variables = _variables(params0)
        opt = utf.from_spec(spec)
        _run(opt, variables, grads[:split], function)
        record, arrays = utf.export_state(opt, variables), [v.numpy() for v in variables]
    else:
        arrays, state = reference(spec, params0, grads[:split])
        record = core_export(spec, state, arrays)
    uniopt.save_state(tmp_path / "s.npz", record)
    loaded = uniopt.load_state(tmp_path / "s.npz")
    if target == "tf":
        variables = _variables(arrays)
        opt = utf.from_spec(loaded.to_spec())
        utf.import_state(opt, loaded, variables)
        _run(opt, variables, grads[split:], function)
        final = utf.export_state(opt, variables)
        assert_bitwise([v.numpy() for v in variables], expected_params, "params")
        assert_state_bitwise(final.slots, expected_state, STEPS, final.step)
    else:
        state = core_import(loaded, spec, arrays)
        for g in grads[split:]:
            arrays, state = spec.update(g, state, arrays)
        assert_bitwise(arrays, expected_params, "params")
        assert_state_bitwise(state.slots, expected_state, STEPS, state.step)


def test_export_of_an_unbuilt_optimizer_is_the_initial_state():
    spec = uniopt.Adagrad(initial_accumulator_value=0.25)
    variables = _variables(stream("float64", steps=0)[0])
    record = utf.export_state(utf.from_spec(spec), variables)
    assert record.step == 0 and record.dtypes == ("float64",) * 3
    for slots, v in zip(record.slots, variables, strict=True):
        np.testing.assert_array_equal(slots["sum"], np.full(v.shape, 0.25))


def _snapshot(opt):
    return [v.numpy().copy() for v in opt.variables]


@pytest.mark.parametrize(
    ("make", "vars_of", "match"),
    [
        (lambda: utf.Adam(learning_rate=0.01), None, "the state is from RAdam, the optimizer is Adam"),
        (
            lambda: utf.RAdam(learning_rate=0.01),
            lambda vs: vs[:2],
            "the state holds 3 parameters, the optimizer has 2",
        ),
        (
            lambda: utf.RAdam(learning_rate=0.01),
            lambda vs: [vs[0], keras.Variable(np.zeros(6, np.float32)), vs[2]],
            r"parameter 1 has shape \(6,\), the state holds shape \(5,\)",
        ),
        (
            lambda: utf.RAdam(learning_rate=0.01),
            lambda vs: [vs[0], keras.Variable(np.zeros(5), dtype="float64"), vs[2]],
            "parameter 1 has dtype float64, the state holds float32",
        ),
        (
            lambda: utf.RAdam(learning_rate=0.02),
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
        utf.import_state(opt, record, vars_of(variables) if vars_of else variables)
    for a, b in zip(_snapshot(opt), before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_variables_the_optimizer_does_not_track_are_refused():
    spec = uniopt.Adam(lr=0.01)
    params0, grads = stream("float32", steps=1)
    arrays, state = reference(spec, params0, grads)
    opt = utf.from_spec(spec)
    _run(opt, _variables(params0), grads)
    with pytest.raises(ValueError, match=r"variable 0 .* is not one this optimizer was built for"):
        utf.import_state(opt, core_export(spec, state, arrays), _variables(params0))


def test_state_a_record_cannot_hold_is_refused():
    variables = _variables(stream("float32", steps=0)[0])
    with pytest.raises(ValueError, match="use_ema keeps moving averages"):
        utf.export_state(utf.Adam(use_ema=True), variables)
    with pytest.raises(ValueError, match="gradient_accumulation_steps keeps accumulators"):
        utf.export_state(utf.Adam(gradient_accumulation_steps=2), variables)
    decayed = utf.AdamW(weight_decay=0.1)
    decayed.exclude_from_weight_decay(var_list=variables[:1])
    decayed.build(variables)
    with pytest.raises(ValueError, match=r"variable 0 .* is excluded from weight decay"):
        utf.export_state(decayed, variables)
    with pytest.raises(TypeError, match=r"use uniopt.tf.from_keras"):
        utf.export_state(keras.optimizers.Adam(), variables)


# -- Keras's own optimizers -----------------------------------------------------------------------

NATIVE = [
    (keras.optimizers.Adam, {"learning_rate": 0.01, "amsgrad": True}, "Adam"),
    (keras.optimizers.Adam, {"learning_rate": 0.01, "weight_decay": 0.1}, "AdamW"),
    (keras.optimizers.AdamW, {"learning_rate": 0.01}, "AdamW"),
    (keras.optimizers.SGD, {"learning_rate": 0.5, "momentum": 0.9, "nesterov": True}, "SGD"),
    (keras.optimizers.RMSprop, {"learning_rate": 0.25, "centered": True, "momentum": 0.5}, "RMSprop"),
    (keras.optimizers.Adagrad, {"learning_rate": 0.1}, "Adagrad"),
    (keras.optimizers.Adamax, {"learning_rate": 0.01, "beta_1": 0.8}, "Adamax"),
    (keras.optimizers.Nadam, {"learning_rate": 0.01}, "NAdam"),
    (keras.optimizers.Nadam, {"learning_rate": 0.01, "weight_decay": 0.1}, "NAdam"),
    (keras.optimizers.Adadelta, {"learning_rate": 0.5, "rho": 0.9}, "Adadelta"),
    (keras.optimizers.Lion, {"learning_rate": 0.01, "weight_decay": 0.1}, "Lion"),
    (
        keras.optimizers.ScheduleFreeAdamW,
        {"learning_rate": 0.01, "weight_decay": 0.1, "warmup_steps": 3},
        "ScheduleFreeAdamW",
    ),
]
_ADAM = {"exp_avg": "_momentums", "exp_avg_sq": "_velocities", "max_exp_avg_sq": "_velocity_hats"}
KERAS_SLOTS = {  # Keras class -> uniopt slot -> Keras's list of variables (keras/src/optimizers/*.py)
    "Adam": _ADAM,
    "AdamW": _ADAM,
    "SGD": {"momentum_buffer": "momentums"},
    "RMSprop": {
        "square_avg": "_velocities",
        "grad_avg": "_average_gradients",
        "momentum_buffer": "_momentums",
    },
    "Adagrad": {"sum": "_accumulators"},
    "Adamax": {"exp_avg": "_m", "exp_inf": "_u"},
    "Nadam": {"exp_avg": "_momentums", "exp_avg_sq": "_velocities"},
    "Adadelta": {"square_avg": "_accumulated_grads", "acc_delta": "_accumulated_delta_vars"},
    "Lion": {"exp_avg": "_momentums"},
    "ScheduleFreeAdamW": {"z": "_momentums", "exp_avg_sq": "_velocities"},
}


def _keras_slot(opt, name):
    """(Keras's attribute, Keras's value / uniopt's per unit lr): SGD keeps velocities -lr*b,
    RMSprop's momentum lr*b; every other slot is the same quantity."""
    attribute = KERAS_SLOTS[type(opt).__name__][name]
    if name == "momentum_buffer":
        return attribute, (-1.0 if isinstance(opt, keras.optimizers.SGD) else 1.0)
    return attribute, None


@pytest.mark.parametrize(("cls", "kwargs", "name"), NATIVE, ids=[f"{c.__name__}-{n}" for c, _, n in NATIVE])
def test_keras_state_is_read_and_written_back(cls, kwargs, name):
    params0, grads = stream("float32", steps=5)
    variables = _variables(params0)
    native = cls(**kwargs)
    _run(native, variables, grads[:4])
    record = utf.from_keras(native, variables)
    assert (record.optimizer, record.convention, record.step) == (name, "keras", 4)
    assert record.hyperparameters["lr"] == float(np.float32(kwargs["learning_rate"]))
    lr = record.hyperparameters["lr"]
    assert set(record.slot_names) == set(KERAS_SLOTS[cls.__name__]) - {"max_exp_avg_sq"} | (
        {"max_exp_avg_sq"} if kwargs.get("amsgrad") else set()
    )
    for slot in record.slot_names:
        attribute, sign = _keras_slot(native, slot)
        scale = sign * lr if sign is not None else 1.0
        for i, v in enumerate(variables):
            keras_value = getattr(native, attribute)[native._get_variable_index(v)].numpy()
            np.testing.assert_array_equal(
                record.slots[i][slot] * np.float32(scale), keras_value, err_msg=slot
            )
    copies = _variables([v.numpy() for v in variables])
    resumed = cls(**kwargs)
    utf.to_keras(record, resumed, copies)
    _run(native, variables, grads[4:])
    _run(resumed, copies, grads[4:])
    assert_bitwise([v.numpy() for v in copies], [v.numpy() for v in variables], "params")


def test_keras_errors():
    variables = _variables(stream("float32", steps=0)[0])
    with pytest.raises(ValueError, match=r"Keras's weight_decay=0\.1 is decoupled"):
        utf.from_keras(keras.optimizers.SGD(weight_decay=0.1), variables)
    with pytest.raises(TypeError, match="is not one of Keras's"):
        utf.from_keras(keras.optimizers.Ftrl(), variables)
    for cls in (keras.optimizers.Adagrad, keras.optimizers.Adamax, keras.optimizers.Adadelta):
        with pytest.raises(ValueError, match=r"Keras's weight_decay=0\.1 is decoupled"):
            utf.from_keras(cls(weight_decay=0.1), variables)
    with pytest.raises(TypeError, match=r"use uniopt.tf.export_state"):
        utf.from_keras(utf.Adam(), variables)
    record = utf.from_keras(keras.optimizers.SGD(momentum=0.9), variables)
    adam = keras.optimizers.Adam()
    with pytest.raises(ValueError, match="the state is from SGD, the optimizer is Adam"):
        utf.to_keras(record, adam, variables)
    assert not adam.built


def test_keras_decoupled_decay_is_recorded_as_the_spec_that_decouples():
    """Keras's weight decay is decoupled: Adam with one is AdamW, Nadam with one NAdamW
    (decoupled_weight_decay=True), Lion's own decay is decoupled; Nadam's schedule is Keras's."""
    variables = _variables(stream("float32", steps=0)[0])
    record = utf.from_keras(keras.optimizers.Nadam(weight_decay=0.1), variables)
    hyper = record.hyperparameters
    assert (record.optimizer, hyper["decoupled_weight_decay"], hyper["momentum_decay"]) == (
        "NAdam",
        True,
        1.0,
    )
    assert hyper["weight_decay"] == 0.1 and hyper["eps"] == 1e-7
    record = utf.from_keras(keras.optimizers.Lion(weight_decay=0.1), variables)
    assert (record.optimizer, record.hyperparameters["weight_decay"]) == ("Lion", 0.1)
    assert record.hyperparameters["betas"] == [0.9, 0.99]


# -- a bad record assigns nothing ------------------------------------------------------------------


def _changed_slot(record):
    record.slots[1]["exp_avg"] = record.slots[1]["exp_avg"].astype(np.float64)  # after its checks
    return record


_BAD_RECORDS = [
    (_changed_slot, r"parameter 1 slot 'exp_avg' is float64, the state holds the parameter as float32"),
    # the slots were assigned before Keras's int64 iterations refused this step
    (lambda r: r.replace(step=2**63), "step 9223372036854775808 does not fit a 64-bit step counter"),
]


def _assert_bits_unchanged(before, after):
    assert len(before) == len(after)
    for a, b in zip(before, after, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize(("bad", "match"), _BAD_RECORDS)
def test_a_bad_record_assigns_nothing_to_a_stepped_optimizer(bad, match):
    spec = uniopt.Adam(lr=0.01)
    params0, grads = stream("float32", steps=3)
    arrays, state = reference(spec, params0, grads)
    record = bad(core_export(spec, state, arrays))
    variables = _variables(params0)
    opt = utf.from_spec(spec)
    _run(opt, variables, grads[:1])
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=match):
        utf.import_state(opt, record, variables)
    _assert_bits_unchanged(before, _snapshot(opt))


@pytest.mark.parametrize(("bad", "match"), _BAD_RECORDS)
def test_a_bad_record_assigns_nothing_to_a_keras_optimizer(bad, match):
    params0, grads = stream("float32", steps=3)
    source_variables = _variables(params0)
    source = keras.optimizers.Adam(learning_rate=0.01)
    _run(source, source_variables, grads)
    record = bad(utf.from_keras(source, source_variables))
    variables = _variables(params0)
    opt = keras.optimizers.Adam(learning_rate=0.01)
    _run(opt, variables, grads[:1])
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=match):
        utf.to_keras(record, opt, variables)
    _assert_bits_unchanged(before, _snapshot(opt))
