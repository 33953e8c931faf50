"""``convention=`` through uniopt.tf: Keras's defaults, and Keras's own RMSprop, SGD and Adagrad
reproduced bit for bit."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import uniopt.tf as ut


def test_keras_convention_defaults_are_keras_defaults():
    ours, theirs = ut.RMSprop(convention="keras"), keras.optimizers.RMSprop()
    assert float(ours.learning_rate.numpy()) == pytest.approx(float(theirs.learning_rate.numpy()), rel=1e-7)
    assert (ours.rho, ours.epsilon, ours.momentum, ours.centered) == (
        theirs.rho,
        theirs.epsilon,
        theirs.momentum,
        theirs.centered,
    )
    for name in ("SGD", "Adagrad"):
        ours, theirs = getattr(ut, name)(convention="keras"), getattr(keras.optimizers, name)()
        assert float(ours.learning_rate.numpy()) == float(theirs.learning_rate.numpy())
    assert (
        ut.Adagrad(convention="keras").epsilon,
        ut.Adagrad(convention="keras").initial_accumulator_value,
    ) == (
        keras.optimizers.Adagrad().epsilon,
        float(np.float32(keras.optimizers.Adagrad().initial_accumulator_value)),
    )
    adamw = ut.AdamW(convention="keras")
    assert (adamw.epsilon, adamw.weight_decay) == (keras.optimizers.AdamW().epsilon, float(np.float32(0.004)))


def test_uniopt_defaults_stay_uniopt_without_a_convention():
    assert (ut.RMSprop().rho, ut.RMSprop().epsilon) == (0.99, 1e-8)
    assert ut.AdamW().weight_decay == 1e-2


BITWISE_KERAS = [
    ("RMSprop", "float32", {}),
    ("RMSprop", "float32", {"centered": True, "momentum": 0.5, "weight_decay": 0.1, "learning_rate": 0.01}),
    ("RMSprop", "float64", {"centered": True, "momentum": 0.5, "weight_decay": 0.1, "learning_rate": 0.01}),
    ("SGD", "float32", {}),
    ("SGD", "float64", {"momentum": 0.9, "weight_decay": 0.01, "learning_rate": 0.02}),
    ("SGD", "float64", {"momentum": 0.9, "nesterov": True}),
    ("Adagrad", "float32", {"weight_decay": 0.05, "learning_rate": 0.1}),
    ("Adagrad", "float64", {}),
]


@pytest.mark.parametrize(("name", "dtype", "kwargs"), BITWISE_KERAS)
def test_keras_convention_is_bitwise_the_keras_optimizer(name, dtype, kwargs):
    """The keras convention against Keras's own optimizer, 100 steps, with Keras's defaults for the
    arguments left out, in float32 and float64 (where Keras casts some hyperparameters through
    float32 and the convention does the same)."""
    rng = np.random.default_rng(3)
    start = rng.standard_normal((4, 5)).astype(dtype)
    native, ours = keras.Variable(start, dtype=dtype), keras.Variable(start, dtype=dtype)
    theirs = getattr(keras.optimizers, name)(**kwargs)
    mine = getattr(ut, name)(convention="keras", **kwargs)
    for _ in range(100):
        g = tf.constant(rng.standard_normal((4, 5)).astype(dtype))
        theirs.apply([g], [native])
        mine.apply([g], [ours])
    assert not np.array_equal(ours.numpy(), start)
    np.testing.assert_array_equal(
        ours.numpy().view(f"uint{start.itemsize * 8}"), native.numpy().view(f"uint{start.itemsize * 8}")
    )


def test_keras_has_no_radam_convention():
    with pytest.raises(ValueError, match=r"Keras 3 has no RAdam"):
        ut.RAdam(convention="keras")


def test_convention_survives_get_config():
    opt = ut.Adam(convention="keras", amsgrad=True)
    again = ut.Adam.from_config(opt.get_config())
    assert again.get_config()["convention"] == "keras" and again.epsilon == 1e-7
