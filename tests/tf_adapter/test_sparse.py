"""tf.IndexedSlices gradients in uniopt.tf (uniopt.sparse's rules; docs/sparse.md).

Expected values: the NumPy run of the core spec on the densified gradient (repeated indices summed),
bitwise, and Keras's own optimizers fed the same IndexedSlices, bitwise where no index repeats
(Keras scatters each slice of a repeated index separately; docs/sparse.md).
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import uniopt
import uniopt.tf as ut

ROWS, COLS = 12, 5


def _slices(indices, values) -> tf.IndexedSlices:
    return tf.IndexedSlices(tf.constant(values), tf.constant(indices), tf.constant([ROWS, COLS]))


def _dense(indices, values) -> np.ndarray:
    out = np.zeros((ROWS, COLS), values.dtype)
    for i, row in zip(indices, values, strict=True):
        out[i] = out[i] + row  # at most two per row: one rounding, as unsorted_segment_sum
    return out


def _stream(steps: int = 4, seed: int = 0, repeat: bool = True):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        rows = sorted(rng.choice(ROWS, size=4, replace=False).tolist())
        indices = [*rows, rows[1]] if repeat else rows
        out.append((indices, rng.standard_normal((len(indices), COLS)).astype(np.float32)))
    return out


def _start(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((ROWS, COLS)).astype(np.float32)


def _apply(opt, var, grad, mode: str) -> None:
    if mode == "eager":
        opt.apply([grad], [var])
    else:
        tf.function(lambda: opt.apply([grad], [var]))()


CASES = [
    ("SGD", {"learning_rate": 0.1}),
    ("SGD", {"learning_rate": 0.1, "convention": "keras"}),
    ("SGD", {"learning_rate": 0.1, "momentum": 0.9, "convention": "keras"}),
    ("Adagrad", {"learning_rate": 0.1}),
    ("Adagrad", {"learning_rate": 0.1, "convention": "keras"}),
    ("Adagrad", {"learning_rate": 0.1, "convention": "optax"}),
    ("Adagrad", {"learning_rate": 0.1, "weight_decay": 0.01, "convention": "keras"}),
    ("Adam", {"learning_rate": 0.1}),
]


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize(("name", "kwargs"), CASES, ids=str)
def test_indexed_slices_steps_equal_the_core_spec_on_the_densified_gradient(name, kwargs, mode):
    """Every rule gives the densified gradient's values bit for bit: "rows" (SGD without momentum,
    Adagrad without weight decay) because a zero gradient changes nothing, "dense" by densifying."""
    opt = getattr(ut, name)(**kwargs)
    spec = opt.spec
    start = _start()
    var = keras.Variable(start.copy())
    params, state = [start.copy()], spec.init([start])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the keras convention's repeated-indices note
        for indices, values in _stream():
            _apply(opt, var, _slices(indices, values), mode)
            params, state = spec.update([_dense(indices, values)], state, params)
    np.testing.assert_array_equal(var.numpy(), params[0])
    for name_, value in state.slots[0].items():
        np.testing.assert_array_equal(opt.slots(var)[name_].numpy(), value)


@pytest.mark.parametrize(("name", "kwargs"), [("SGD", {}), ("Adagrad", {}), ("SGD", {"momentum": 0.5})])
def test_without_repeated_indices_the_keras_convention_is_kerass_own_sparse_step(name, kwargs):
    start = _start()
    mine, theirs = keras.Variable(start.copy()), keras.Variable(start.copy())
    opt = getattr(ut, name)(learning_rate=0.1, convention="keras", **kwargs)
    native = getattr(keras.optimizers, name)(learning_rate=0.1, **kwargs)
    for indices, values in _stream(repeat=False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the note on repeated indices (none here)
            opt.apply([_slices(indices, values)], [mine])
        native.apply([_slices(indices, values)], [theirs])
    np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    assert not np.array_equal(mine.numpy(), start)


@pytest.mark.parametrize("name", ["SGD", "Adagrad"])
def test_the_rows_rule_leaves_untouched_rows_and_slots_unwritten(name):
    """With maximize=True the dense rule turns an untouched -0.0 into +0.0 (-0.0 - (-0.0)); the
    "rows" rule does not write that row at all, so its sign survives: the update is a scatter."""
    start = _start()
    start[7] = -0.0
    var = keras.Variable(start.copy())
    opt = getattr(ut, name)(learning_rate=0.1, maximize=True)
    opt.apply([_slices([0, 3], np.ones((2, COLS), np.float32))], [var])
    slots = {k: v.numpy().copy() for k, v in opt.slots(var).items()}
    before = var.numpy().copy()
    opt.apply([_slices([5], np.full((1, COLS), 2.0, np.float32))], [var])
    untouched = [r for r in range(ROWS) if r != 5]
    np.testing.assert_array_equal(var.numpy()[untouched], before[untouched])
    assert np.all(np.signbit(var.numpy()[7]))
    assert not np.array_equal(var.numpy()[5], before[5])
    for k, v in opt.slots(var).items():
        np.testing.assert_array_equal(v.numpy()[untouched], slots[k][untouched])
    dense_spec = opt.spec
    dense, _ = dense_spec.update(
        [np.zeros((ROWS, COLS), np.float32)], dense_spec.init([before]), [before.copy()]
    )
    assert not np.any(np.signbit(dense[0][7]))  # the dense rule would have flipped it


@pytest.mark.parametrize("name", ["SGD", "Adagrad"])
def test_an_empty_indexed_slices_gradient_changes_no_row(name):
    start = _start()
    var = keras.Variable(start.copy())
    opt = getattr(ut, name)(learning_rate=0.1)
    empty = tf.IndexedSlices(tf.zeros((0, COLS)), tf.zeros((0,), tf.int32), tf.constant([ROWS, COLS]))
    opt.apply([empty], [var])
    np.testing.assert_array_equal(var.numpy(), start)
    assert int(opt.iterations.numpy()) == 1


def test_a_sparse_step_under_xla_takes_the_dense_path_with_the_same_values():
    """XLA compiles no tf.unique: the update densifies there, which for "rows" specs is the same
    values."""
    start = _start()
    var, ref = keras.Variable(start.copy()), keras.Variable(start.copy())
    opt, eager = ut.SGD(learning_rate=0.1), ut.SGD(learning_rate=0.1)
    indices, values = _stream(steps=1, repeat=False)[0]
    grad = _slices(indices, values)
    tf.function(lambda: opt.apply([grad], [var]), jit_compile=True)()
    eager.apply([grad], [ref])
    np.testing.assert_array_equal(var.numpy(), ref.numpy())


def test_the_sparse_rule_follows_the_spec():
    assert ut.SGD().spec.sparse_rule() == "rows"
    assert ut.SGD(momentum=0.9).spec.sparse_rule() == "dense"
    assert ut.Adagrad(convention="keras").spec.sparse_rule() == "rows"
    assert uniopt.Adam().sparse_rule() == "dense"
