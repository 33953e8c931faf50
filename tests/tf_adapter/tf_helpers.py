"""Helpers shared by the uniopt.tf tests: seeded inputs, the NumPy reference, bitwise comparison."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from trajectories import (  # noqa: F401 - the helpers this module has always offered
    SHAPES,
    assert_trajectories,
    bits_equal,
    max_ulp,
    params_and_grads,
    reference,
)


def snapshot(opt, variables):
    """The adapter's state as NumPy: (params, [slots per variable keyed by the core's names])."""
    return (
        [v.numpy().copy() for v in variables],
        # a slot kept in no variable (Muon's velocity of a Muon-stepped variable, as Keras keeps
        # none) is the zeros the rule passes through
        [
            {k: np.zeros_like(v.numpy()) if s is None else s.numpy().copy() for k, s in opt.slots(v).items()}
            for v in variables
        ],
    )


def make_step(opt, variables, mode: str):
    """``apply_gradients`` eagerly, inside ``tf.function``, or with ``jit_compile=True``;
    ``"function_returning"``: inside a ``tf.function`` that returns the variables' new values, as a
    training step returns its loss (grappler's constant folding rewrites more of a graph with
    outputs)."""

    def step(grads):
        opt.apply_gradients(zip(grads, variables, strict=True))

    if mode == "function_returning":

        @tf.function
        def returning(grads):
            step(grads)
            return [tf.identity(v) for v in variables]

        return returning
    if mode == "function":
        return tf.function(step)
    if mode == "xla":
        return tf.function(step, jit_compile=True)
    return step


class Recording(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule that records the value it gave at each step, as the graph computed it (a traced
    schedule may round differently from the same schedule called eagerly)."""

    def __init__(self, inner):
        self.inner = inner
        self.last = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self.values: list[float] = []

    def __call__(self, step):
        lr = self.inner(step)
        self.last.assign(tf.cast(lr, tf.float64))
        return lr

    def record(self) -> None:
        self.values.append(float(self.last.numpy()))

    def get_config(self):
        return {"inner": keras.saving.serialize_keras_object(self.inner)}


def run_adapter(opt, params0, grads_seq, mode: str, schedule: Recording | None = None):
    """Apply ``grads_seq`` to fresh variables; the state after every step."""
    variables = [tf.Variable(p) for p in params0]
    opt.build(variables)
    step = make_step(opt, variables, mode)
    out = []
    for grads in grads_seq:
        step([tf.constant(g) for g in grads])
        if schedule is not None:
            schedule.record()
        out.append(snapshot(opt, variables))
    return out
