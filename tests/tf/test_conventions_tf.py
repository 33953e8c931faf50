"""``convention=`` through uniopt.tf: Keras's defaults, and Keras's own RMSprop reproduced bit for bit."""

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
    adamw = ut.AdamW(convention="keras")
    assert (adamw.epsilon, adamw.weight_decay) == (keras.optimizers.AdamW().epsilon, 0.004)


def test_uniopt_defaults_stay_uniopt_without_a_convention():
    assert (ut.RMSprop().rho, ut.RMSprop().epsilon) == (0.99, 1e-8)
    assert ut.AdamW().weight_decay == 1e-2


@pytest.mark.parametrize(
    "kwargs", [{}, {"centered": True, "momentum": 0.5, "weight_decay": 0.1, "learning_rate": 0.01}]
)
def test_rmsprop_keras_convention_is_bitwise_keras_rmsprop_in_float32(kwargs):
    rng = np.random.default_rng(3)
    start = rng.standard_normal((4, 5)).astype(np.float32)
    native, ours = keras.Variable(start), keras.Variable(start)
    theirs = keras.optimizers.RMSprop(**kwargs)
    mine = ut.RMSprop(convention="keras", **kwargs)
    for _ in range(100):
        g = tf.constant(rng.standard_normal((4, 5)).astype(np.float32))
        theirs.apply([g], [native])
        mine.apply([g], [ours])
    np.testing.assert_array_equal(ours.numpy().view(np.uint32), native.numpy().view(np.uint32))


def test_keras_has_no_radam_convention():
    with pytest.raises(ValueError, match=r"Keras 3 has no RAdam"):
        ut.RAdam(convention="keras")


def test_convention_survives_get_config():
    opt = ut.Adam(convention="keras", amsgrad=True)
    again = ut.Adam.from_config(opt.get_config())
    assert again.get_config()["convention"] == "keras" and again.epsilon == 1e-7
