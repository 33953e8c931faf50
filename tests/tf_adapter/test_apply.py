"""apply_gradients eagerly, in tf.function and under XLA: bitwise against the NumPy reference."""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from cases import per_convention, shapes_for, table_for
from tf_helpers import (
    SHAPES,
    Recording,
    assert_trajectories,
    params_and_grads,
    reference,
    run_adapter,
    snapshot,
)

import uniopt
import uniopt.tf as ut
from uniopt.scalar_table import rounded_scalars, scalar_table

STEPS = 8  # past RAdam's first rectified step (6)

DEFAULTS = [pytest.param(info, info.cases[0], id=info.name) for info in table_for("tf")]


def _inputs(dtype: str, nonfinite: bool = False, spec=None):
    """Seeded inputs over tf_helpers' shapes (matrices in place of the shapes ``spec`` refuses:
    Muon's uniopt and torch conventions take 2-D parameters only)."""
    shapes = SHAPES if spec is None else shapes_for(spec, SHAPES)
    params, grads = params_and_grads(STEPS, dtype, shapes=shapes)
    if nonfinite:  # NaN, +Inf and -Inf at step 3 must propagate exactly as in NumPy
        grads[2][0].reshape(-1)[:3] = [np.nan, np.inf, -np.inf]
    return params, grads


@pytest.mark.parametrize(("info", "case"), per_convention("tf"))
def test_every_case_is_bitwise_float32_in_tf_function(info, case):
    """One case per optimizer and convention; the conformance matrix runs every case over every
    stream and mode. Bitwise but where the table states a bound (Muon's products by the backend's
    matmul)."""
    spec = info.make(case)
    mode = "function"
    params, grads = _inputs("float32", nonfinite=True, spec=spec)
    got = run_adapter(ut.from_spec(spec), params, grads, mode)
    assert_trajectories(got, reference(spec, params, grads), ulp=info.tolerance("tf", mode, case.desc))


@pytest.mark.parametrize(
    ("info", "case", "mode"),
    [
        pytest.param(*p.values, mode, id=f"{p.id}-{mode}")
        for mode in ("eager", "function", "xla")
        for p in DEFAULTS
        if p.values[0].skip_reason("tf", mode) is None  # ScheduleFreeAdamW: XLA refused, tested
    ],
)
def test_default_cases_in_every_mode(info, case, mode):
    spec = info.make(case)
    for dtype in ("float32", "float64") if mode != "function" else ("float64",):
        params, grads = _inputs(dtype, nonfinite=True, spec=spec)
        got = run_adapter(ut.from_spec(spec), params, grads, mode)
        assert_trajectories(got, reference(spec, params, grads), ulp=info.tolerance("tf", mode, case.desc))


@pytest.mark.parametrize(
    "spec",
    [uniopt.RMSprop(lr=0.01, centered=True, momentum=0.5), uniopt.AdamW(lr=0.01, amsgrad=True)],
    ids=["rmsprop-centered", "adamw-amsgrad"],
)
def test_xla_propagates_nan_through_maximum(spec):
    """Centered RMSprop and AMSGrad take a maximum: XLA's default max drops NaN (flags fix it)."""
    params, grads = _inputs("float32", nonfinite=True)
    got = run_adapter(ut.from_spec(spec), params, grads, "xla")
    assert np.isnan(got[-1][0][0]).any()
    assert_trajectories(got, reference(spec, params, grads))


@pytest.mark.parametrize("mode", ["function", "xla"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_traced_scalars_across_the_end_of_the_table(mode, dtype):
    """The traced step reads row min(t, T) of the host table: equal to the host at every step,
    including past T (where float32's 1 - 0.999^t has rounded to 1)."""
    spec = uniopt.RAdam(lr=0.01)
    end = scalar_table(spec, dtype).length
    opt = ut.from_spec(spec)
    var = tf.Variable(np.zeros(2, dtype))
    opt.build([var])
    source = ut._scalars.scalar_source(spec, dtype)

    def traced(step_count):
        opt.iterations.assign(step_count - 1)
        lr = opt.learning_rate
        return source.traced(tf.cast(opt.iterations, tf.int64) + 1, tf.convert_to_tensor(lr), "RAdam")

    fn = tf.function(traced, jit_compile=mode == "xla")
    for step in (1, 5, 6, 7, 100, end - 1, end, end + 1, 10 * end):
        got = [v.numpy() for v in fn(tf.constant(step, tf.int64))]
        want = rounded_scalars(spec, step, dtype)
        for g, w in zip(got, want, strict=True):
            assert g == w, (step, got, want)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_a_schedule_feeds_the_spec_its_lr_of_each_step(mode):
    """With a LearningRateSchedule the spec's scalars use the schedule's value at each step:
    bitwise with the host (eager, tf.function), and through A + B*lr under XLA (float32: equal)."""
    schedule = Recording(keras.optimizers.schedules.ExponentialDecay(0.02, decay_steps=2, decay_rate=0.7))
    spec = uniopt.RAdam(lr=0.02, weight_decay=0.1, decoupled_weight_decay=True)
    params, grads = _inputs("float32")
    got = run_adapter(ut.from_spec(spec, learning_rate=schedule), params, grads, mode, schedule)
    assert len(set(schedule.values)) > 3
    assert_trajectories(got, reference(spec, params, grads, lrs=schedule.values))


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_a_schedule_in_float64(mode):
    """float64 under XLA costs the double rounding of A + B*lr (docs/tf.md: up to 16 ulp measured)."""
    schedule = Recording(
        keras.optimizers.schedules.PolynomialDecay(0.05, decay_steps=6, end_learning_rate=0.01)
    )
    spec = uniopt.Adam(lr=0.05)
    params, grads = _inputs("float64")
    got = run_adapter(ut.from_spec(spec, learning_rate=schedule), params, grads, mode, schedule)
    want = reference(spec, params, grads, lrs=schedule.values)
    assert_trajectories(got, want, ulp=0 if mode != "xla" else 16)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_setting_the_learning_rate_mid_run(mode):
    """``optimizer.learning_rate = x`` (as Keras callbacks do) takes effect at the next step, exact
    outside XLA; the float64 variable holds the Python float exactly."""
    spec = uniopt.Adam(lr=0.01, amsgrad=True)
    params, grads = _inputs("float32")
    opt = ut.from_spec(spec)
    variables = [tf.Variable(p) for p in params]
    opt.build(variables)
    from tf_helpers import make_step

    step = make_step(opt, variables, mode)
    got = []
    for i, g in enumerate(grads):
        if i == 4:
            opt.learning_rate = 0.003
        step([tf.constant(x) for x in g])
        got.append(snapshot(opt, variables))
    assert float(opt.learning_rate.numpy()) == 0.003
    lrs = [0.01] * 4 + [0.003] * (STEPS - 4)
    assert_trajectories(got, reference(spec, params, grads, lrs=lrs))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_adagrad_lr_decay_has_no_table_and_still_matches(mode, dtype):
    """Adagrad's lr_decay never converges: the host computes its scalars (tf.numpy_function in a
    graph); under XLA the core's step_scalars run in-graph in float64, bitwise with the flags.
    Tiny gradients make eps=1e-10 count, so every scalar must be the host's to the last bit."""
    spec = uniopt.Adagrad(lr=0.1, lr_decay=0.05, weight_decay=0.01)
    assert not spec.scalars_converge()
    params, grads = _inputs(dtype, nonfinite=True)
    grads = [[g * np.asarray(1e-9, dtype) for g in step] for step in grads]
    assert_trajectories(run_adapter(ut.from_spec(spec), params, grads, mode), reference(spec, params, grads))


def test_adagrad_lr_decay_under_xla_with_a_schedule_stays_close():
    schedule = Recording(keras.optimizers.schedules.InverseTimeDecay(0.1, decay_steps=1, decay_rate=0.3))
    spec = uniopt.Adagrad(lr=0.1, lr_decay=0.05)
    params, grads = _inputs("float32")
    got = run_adapter(ut.from_spec(spec, learning_rate=schedule), params, grads, "xla", schedule)
    assert_trajectories(got, reference(spec, params, grads, lrs=schedule.values), ulp=2)


def test_sparse_gradients_are_applied_densely():
    """tf.IndexedSlices (embedding gradients) update like the dense gradient with zero rows."""
    spec = uniopt.Adam(lr=0.01)
    table = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    opt = ut.from_spec(spec)
    var = tf.Variable(table)
    rows = tf.constant([0, 2])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.gather(var, rows) ** 2)
    grad = tape.gradient(loss, var)
    assert isinstance(grad, tf.IndexedSlices)
    opt.apply_gradients([(grad, var)])
    dense = tf.convert_to_tensor(grad).numpy()
    assert_trajectories([snapshot(opt, [var])], reference(spec, [table], [[dense]]))


def test_mixed_dtypes_get_scalars_rounded_to_each():
    spec = uniopt.RAdam(lr=0.01)
    p32, g32 = params_and_grads(STEPS, "float32", seed=1, shapes=((4,),))
    p64, g64 = params_and_grads(STEPS, "float64", seed=2, shapes=((3,),))
    params = [p32[0], p64[0]]
    grads = [[a[0], b[0]] for a, b in zip(g32, g64, strict=True)]
    got = run_adapter(ut.from_spec(spec), params, grads, "function")
    want32 = reference(spec, p32, g32)
    want64 = reference(spec, p64, g64)
    want = [([a[0][0], b[0][0]], [a[1][0], b[1][0]]) for a, b in zip(want32, want64, strict=True)]
    assert_trajectories(got, want)


@dataclasses.dataclass(frozen=True)
class _HostOnly(uniopt.Adagrad):
    """Adagrad whose step_scalars only takes a Python int (as a future spec's might)."""

    def step_scalars(self, step, lr=None):
        return super().step_scalars(int(step), lr)


def test_xla_refuses_scalars_it_can_neither_tabulate_nor_trace():
    spec = _HostOnly(lr=0.1, lr_decay=0.1)
    source = ut._scalars.ScalarSource(spec, "float32")
    fn = tf.function(lambda t, lr: source.traced(t, lr, "Adagrad"), jit_compile=True)
    with pytest.raises(ValueError, match=r"Adagrad: .* never reach a limit .* run without jit_compile"):
        fn(tf.constant(3, tf.int64), tf.constant(0.1, tf.float64))
    # outside XLA the host computes them
    got = tf.function(lambda t, lr: source.traced(t, lr, "Adagrad"))(
        tf.constant(3, tf.int64), tf.constant(0.1)
    )
    assert [v.numpy() for v in got] == list(rounded_scalars(spec, 3, "float32", float(np.float32(0.1))))


def test_request_bitwise_xla_keeps_the_users_flags(monkeypatch):
    from uniopt.tf.xla import XLA_BITWISE_FLAGS, request_bitwise_xla

    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x --xla_cpu_enable_fast_min_max=false")
    request_bitwise_xla()
    flags = os.environ["XLA_FLAGS"].split()
    assert flags[0] == "--xla_dump_to=/tmp/x"
    assert sorted(set(flags[1:])) == sorted(XLA_BITWISE_FLAGS.split())
