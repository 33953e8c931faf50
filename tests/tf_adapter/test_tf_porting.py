"""uniopt.tf state export/import: files between runs resume bit for bit (against the uninterrupted
NumPy reference of the core), through tf.function too, and a bad record assigns nothing. The
checks shared with every Keras backend (mismatches, Keras's own optimizers' state read and written
back) are tests/keras_adapter/test_porting.py's, which runs on TensorFlow too."""

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


def _snapshot(opt):
    return [v.numpy().copy() for v in opt.variables]


# -- Keras's own optimizers -----------------------------------------------------------------------


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
