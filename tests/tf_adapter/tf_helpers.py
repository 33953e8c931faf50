"""Helpers shared by the uniopt.tf tests: seeded inputs, the NumPy reference, bitwise comparison."""

from __future__ import annotations

from collections.abc import Sequence

import array_api_compat.numpy as npx
import keras
import numpy as np
import tensorflow as tf

from uniopt import Spec

SHAPES = ((3, 4), (5,), ())


def params_and_grads(steps: int, dtype: str = "float32", seed: int = 0, shapes=SHAPES):
    """Initial parameters and ``steps`` gradient lists, drawn in float64 and rounded once."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    return params, grads


def reference(spec: Spec, params0, grads_seq, lrs: Sequence[float] | None = None):
    """NumPy trajectory: after each step, (params, [slots per param])."""
    params = [np.array(p, copy=True) for p in params0]
    state = spec.init(params, npx)
    out = []
    for i, grads in enumerate(grads_seq):
        lr = None if lrs is None else lrs[i]
        with np.errstate(all="ignore"):  # NaN and Inf gradients propagate on purpose
            params, state = spec.update([np.asarray(g) for g in grads], state, params, npx, lr=lr)
        out.append(([p.copy() for p in params], [{k: v.copy() for k, v in s.items()} for s in state.slots]))
    return out


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
    """``apply_gradients`` eagerly, inside ``tf.function``, or with ``jit_compile=True``."""

    def step(grads):
        opt.apply_gradients(zip(grads, variables, strict=True))

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


def bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and bits (any NaN equals any NaN; -0 differs from +0)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    ints = {2: np.int16, 4: np.int32, 8: np.int64}[a.dtype.itemsize]
    same = a.view(ints) == b.view(ints)
    return bool(np.all(same | (np.isnan(a) & np.isnan(b))))


def max_ulp(a: np.ndarray, b: np.ndarray) -> int:
    """Largest ulp distance (NaN against NaN is 0; NaN against a number is huge)."""
    from conformance.ulp import max_ulp as ulp

    return ulp(np.asarray(a), np.asarray(b))


def assert_trajectories(got, want, ulp: int = 0) -> None:
    """Every param and slot at every step within ``ulp`` (0: bitwise)."""
    assert len(got) == len(want)
    for step, ((gp, gs), (wp, ws)) in enumerate(zip(got, want, strict=True), start=1):
        for i, (g, w) in enumerate(zip(gp, wp, strict=True)):
            ok = bits_equal(g, w) if ulp == 0 else max_ulp(g, w) <= ulp
            assert ok, f"step {step} param {i}: {max_ulp(g, w)} ulp\n{g}\n{w}"
        for i, (g, w) in enumerate(zip(gs, ws, strict=True)):
            assert g.keys() == w.keys(), (g.keys(), w.keys())
            for name in w:
                ok = bits_equal(g[name], w[name]) if ulp == 0 else max_ulp(g[name], w[name]) <= ulp
                assert ok, f"step {step} slot {name}{i}: {max_ulp(g[name], w[name])} ulp"
