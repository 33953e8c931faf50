"""uniopt.tf.ScheduleFreeAdamW: the history in optimizer variables, train/eval modes, XLA in-graph.

Expected values: the core's NumPy run of the same spec (as the conformance suite compares every
backend), and for the keras convention Keras's own ``keras.optimizers.ScheduleFreeAdamW``
(independent); the spec's steps themselves are checked by hand in tests/test_hand_steps.py.
"""

from __future__ import annotations

import dataclasses
import warnings

import array_api_compat.numpy as npx
import keras
import numpy as np
import pytest
import tensorflow as tf
from tf_helpers import (
    Recording,
    assert_trajectories,
    bits_equal,
    make_step,
    params_and_grads,
    reference,
    run_adapter,
    snapshot,
)

import uniopt
import uniopt.tf as ut
from uniopt.registry import get

INFO = get("ScheduleFreeAdamW")
CASES = [pytest.param(case, id=case.desc) for case in INFO.cases]
# under XLA the history runs in-graph: every convention but optax's (its float32 history is refused)
XLA_CASES = [
    pytest.param(case, id=case.desc)
    for case in INFO.cases
    if case.kwargs.get("convention", "uniopt") != "optax"
]
STEPS = 8


def _spec(desc: str) -> uniopt.ScheduleFreeAdamW:
    return INFO.make(INFO.case(desc))


def _stepped(spec: uniopt.ScheduleFreeAdamW, params, grads, mode: str):
    """The spec's uniopt.tf optimizer on variables holding ``params``, after a step per entry of
    ``grads`` in ``mode``: (variables, optimizer, the step function)."""
    variables = [tf.Variable(p) for p in params]
    opt = ut.from_spec(spec)
    step = make_step(opt, variables, mode)
    for g in grads:
        step([tf.constant(x) for x in g])
    return variables, opt, step


def _state_after(spec, params, grads):
    """The core's NumPy run: final parameters and State."""
    params = [np.array(p, copy=True) for p in params]
    state = spec.init(params, npx)
    for g in grads:
        params, state = spec.update(g, state, params, npx)
    return params, state


# -- the update, against the core's NumPy run --------------------------------------------------------
@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("case", CASES)
def test_every_case_is_bitwise_with_the_core(case, mode):
    spec = INFO.make(case)
    for dtype in ("float32", "float64"):
        params, grads = params_and_grads(STEPS, dtype, seed=1)
        opt = ut.from_spec(spec)
        assert type(opt) is ut.ScheduleFreeAdamW
        got = run_adapter(opt, params, grads, mode)
        assert_trajectories(got, reference(spec, params, grads))
        _, state = _state_after(spec, params, grads)
        assert opt.history() == state.history  # exact floats, every field


@pytest.mark.parametrize("case", XLA_CASES)
def test_under_xla_every_case_but_optax_is_bitwise_with_the_core(case):
    """jit_compile=True: the history and the scalars computed in-graph in float64 (the step-only
    terms from a table) give the core's NumPy run bit for bit, the history's floats included."""
    spec = INFO.make(case)
    for dtype in ("float32", "float64"):
        params, grads = params_and_grads(STEPS, dtype, seed=1)
        opt = ut.from_spec(spec)
        got = run_adapter(opt, params, grads, "xla")
        assert_trajectories(got, reference(spec, params, grads))
        _, state = _state_after(spec, params, grads)
        assert opt.history() == state.history


# parameters of at least uniopt.tf.xp.HINT_MIN_SIZE elements, where the XLA step runs scheduled (y's
# loop recomputes u, z's loop follows it in place): a power-of-two matrix, an odd one, a vector
LARGE_SHAPES = [(256, 256), (181, 191), (40000,), (3, 5)]


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_under_xla_large_parameters_take_the_scheduled_step_bitwise(dtype, weight_decay):
    """The default convention's XLA step on parameters large enough for the scheduling hints
    (uniopt._math.recomputed and after, which change no value) is the core's NumPy run bit for bit,
    with and without weight decay (which makes z's step read y as well), a small parameter in the
    same step taking the unscheduled step; and in ``tf.function`` (where the hints are absent)."""
    spec = uniopt.ScheduleFreeAdamW(lr=0.02, weight_decay=weight_decay, warmup_steps=2)
    params, grads = params_and_grads(5, dtype, seed=4, shapes=LARGE_SHAPES)
    want = reference(spec, params, grads)
    for mode in ("xla", "function"):
        assert_trajectories(run_adapter(ut.from_spec(spec), params, grads, mode), want)


def _optimized_hlo(spec, shape):
    """The optimized HLO of one jit_compile step of ``spec`` over a float32 variable of ``shape``."""
    variable = tf.Variable(np.ones(shape, np.float32))
    opt = ut.from_spec(spec)
    opt.build([variable])
    step = tf.function(lambda g: opt.apply_gradients([(g, variable)]), jit_compile=True)
    grad = tf.constant(np.full(shape, 0.5, np.float32))
    return step.experimental_get_compiler_ir(grad)(stage="optimized_hlo")


def test_under_xla_z_is_updated_in_place_not_copied():
    """What the hints are for, read from XLA's optimized program: with them, no copy of a
    parameter-sized array and one loop per output (v, y, z); without them (the same step through a
    namespace that offers no hints), XLA copies z before updating it and stores u."""
    import uniopt.tf.xp as txp

    spec = uniopt.ScheduleFreeAdamW(lr=0.02)
    shape, array = (256, 256), "f32[256,256]{1,0}"

    def copies_and_loops(hlo: str) -> tuple[int, int]:
        entry = hlo[hlo.index("ENTRY") :]
        lines = [line for line in entry.splitlines() if f"= {array} " in line]
        copies = sum(" copy(" in line for line in lines)
        return copies, sum(" fusion(" in line for line in lines)

    assert copies_and_loops(_optimized_hlo(spec, shape)) == (0, 3)
    hooks = txp.uniopt_recomputed, txp.uniopt_after
    try:
        txp.uniopt_recomputed, txp.uniopt_after = (lambda x: None), (lambda x, first: x)
        copies, loops = copies_and_loops(_optimized_hlo(spec, shape))
    finally:
        txp.uniopt_recomputed, txp.uniopt_after = hooks
    assert copies >= 1 and loops == 4


def test_under_xla_a_long_warmup_and_many_steps_keep_the_history_exact():
    """40 steps inside a 25-step warmup and past it, the bias correction read from its table: the
    float64 history after each step is the core's, bit for bit."""
    spec = uniopt.ScheduleFreeAdamW(lr=0.0123, warmup_steps=25, betas=(0.9, 0.95))
    params, grads = params_and_grads(40, "float32", seed=9)
    variables = [tf.Variable(p) for p in params]
    opt = ut.from_spec(spec)
    opt.build(variables)
    step = make_step(opt, variables, "xla")
    state = spec.init(params, npx)
    ps = params
    for g in grads:
        step([tf.constant(x) for x in g])
        ps, state = spec.update(g, state, ps, npx)
        assert opt.history() == state.history
    for v, p in zip(variables, ps, strict=True):
        assert bits_equal(v.numpy(), p)


def test_in_graph_scalars_are_the_hosts_except_where_c_pow_is_not_the_rounded_square():
    """The in-graph float64 formula (XLA) against the host's, step by step from the host's history,
    over 60 steps of a 500-step warmup: every scalar and history field is the host's bit for bit,
    except at the steps where the host's ``lr_max ** 2.0`` (the C library's ``pow``) is not the
    correctly rounded square ``lr_max * lr_max`` that XLA computes (it rewrites ``pow(x, 2)`` into a
    product): steps 12, 24 and 48 here, where the weight differs in its last bit, and with it
    ``c`` (and ``weight_sum`` where the sum does not absorb it) by at most 2 ulp."""
    from uniopt.schedule_free_adamw import History
    from uniopt.tf._scalars import in_graph_scalars

    spec = uniopt.ScheduleFreeAdamW(lr=0.0025, warmup_steps=500)
    f64 = tf.float64

    @tf.function(jit_compile=True)
    def in_graph(step, lr, weight_sum, lr_max):
        before = History(weight_sum, lr_max, tf.constant(0.0, f64), tf.constant(-1.0, f64))
        sc, after = in_graph_scalars(spec, step, lr, before)
        return [tf.convert_to_tensor(v, f64) for v in sc], [tf.convert_to_tensor(v, f64) for v in after]

    history, inexact = spec.init_history(), []
    for step in range(1, 61):
        want_sc, want_history = spec.history_scalars(step, 0.0025, history)
        got_sc, got_history = in_graph(
            tf.constant(step, tf.int64),
            tf.constant(0.0025, f64),
            tf.constant(history.weight_sum, f64),
            tf.constant(history.lr_max, f64),
        )
        got_sc, got_history = [float(v) for v in got_sc], [float(v) for v in got_history]
        lr_max = want_history.lr_max
        if lr_max**2.0 == lr_max * lr_max:
            assert got_sc == list(want_sc), step
            assert got_history == list(want_history), step
        else:
            inexact.append(step)
            assert got_history[1] == lr_max
            pairs = ((got_history[0], want_history.weight_sum), (got_sc[6], want_sc.c))
            assert all(abs(got - want) <= 2 * np.spacing(want) for got, want in pairs), step
            assert any(got != want for got, want in pairs), step
        history = want_history
    assert inexact == [12, 24, 48]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_and_mixed_dtypes_get_their_own_rounding(dtype):
    """One step computes the scalars of every dtype the optimizer was built for."""
    import ml_dtypes

    half = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
    spec = uniopt.ScheduleFreeAdamW(lr=0.01, warmup_steps=2, weight_decay=0.01)
    params, grads = params_and_grads(STEPS, "float32", seed=2)
    params = [params[0], params[1].astype(half), params[2].astype("float64")]
    grads = [[g[0], g[1].astype(half), g[2].astype("float64")] for g in grads]
    for mode in ("eager", "function"):
        got = run_adapter(ut.from_spec(spec), params, grads, mode)
        assert_trajectories(got, reference(spec, params, grads))


@pytest.mark.parametrize(
    ("mode", "convention"),
    [(m, c) for m in ("eager", "function") for c in ("uniopt", "optax")] + [("xla", "uniopt")],
)
def test_a_schedule_advances_the_history_with_each_steps_lr(mode, convention):
    """The history depends on every learning rate used: a schedule's values, as the graph computed
    them, fed to the core step by step give the same run."""
    spec = uniopt.ScheduleFreeAdamW(lr=0.01, warmup_steps=2, convention=convention)
    schedule = Recording(keras.optimizers.schedules.PiecewiseConstantDecay([2, 4], [0.01, 0.05, 0.002]))
    params, grads = params_and_grads(STEPS, "float32", seed=3)
    opt = ut.from_spec(spec, learning_rate=schedule)
    got = run_adapter(opt, params, grads, mode, schedule)
    assert len(set(schedule.values)) == 3
    assert_trajectories(got, reference(spec, params, grads, lrs=schedule.values))
    state = spec.init(params, npx)
    ps = params
    for g, lr in zip(grads, schedule.values, strict=True):
        ps, state = spec.update(g, state, ps, npx, lr=lr)
    assert opt.history() == state.history


@pytest.mark.parametrize("mode", ["function", "xla"])
def test_a_learning_rate_set_mid_run_enters_the_history(mode):
    spec = uniopt.ScheduleFreeAdamW(lr=0.01)
    params, grads = params_and_grads(STEPS, "float64", seed=4)
    variables = [tf.Variable(p) for p in params]
    opt = ut.from_spec(spec)
    opt.build(variables)
    step = make_step(opt, variables, mode)
    lrs = [0.01] * 3 + [0.03] * (STEPS - 3)
    for i, g in enumerate(grads):
        if i == 3:
            opt.learning_rate = 0.03
        step([tf.constant(x) for x in g])
    want = reference(spec, params, grads, lrs=lrs)
    assert_trajectories([snapshot(opt, variables)], want[-1:])
    assert opt.history().lr_max == 0.03


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("bad", [float("nan"), -1.0, float("inf")])
def test_a_bad_learning_rate_set_mid_run_is_refused_and_changes_nothing(mode, bad):
    """The constructor validates learning_rate, and so does the setter: a rate set later is
    refused (ValueError naming learning_rate) before any variable, slot, history value, the step
    count or the rate itself changes; the next step runs at the rate held."""
    params, grads = params_and_grads(3, "float32", seed=5)
    variables = [tf.Variable(p) for p in params]
    opt = ut.ScheduleFreeAdamW(0.01)
    step = make_step(opt, variables, mode)
    step([tf.constant(x) for x in grads[0]])
    state = list(opt.variables)  # the rate included: it is not changed either
    before = [v.numpy().copy() for v in state] + [v.numpy().copy() for v in variables]
    with pytest.raises(ValueError, match=r"lr=.*(out of range|not finite).*argument learning_rate"):
        opt.learning_rate = bad
    after = [v.numpy() for v in state] + [v.numpy() for v in variables]
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    opt.learning_rate = 0.01
    step([tf.constant(x) for x in grads[1]])
    assert np.isfinite(opt.history().weight_sum)


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_gradient_accumulation_advances_the_history_once_per_update(mode):
    """With gradient_accumulation_steps=2 the history (and the step count) moves on every second
    apply, with the mean gradient; odd applies change nothing but the accumulators."""
    spec = uniopt.ScheduleFreeAdamW(lr=0.01, warmup_steps=2)
    params, grads = params_and_grads(8, seed=13)
    variables = [tf.Variable(p) for p in params]
    opt = ut.from_spec(spec, gradient_accumulation_steps=2)
    opt.build(variables)
    step = make_step(opt, variables, mode)
    got = []
    for g in grads:
        step([tf.constant(x) for x in g])
        got.append(snapshot(opt, variables))
    means = [
        [(a + b) / np.float32(2) for a, b in zip(grads[i], grads[i + 1], strict=True)] for i in range(0, 8, 2)
    ]
    assert_trajectories(got[1::2], reference(spec, params, means))
    assert opt.history() == _state_after(spec, params, means)[1].history


def test_use_ema_keeps_averages_beside_the_update():
    spec = uniopt.ScheduleFreeAdamW(lr=0.05)
    params, grads = params_and_grads(4, seed=14)
    opt = ut.from_spec(spec, use_ema=True, ema_momentum=0.5)
    got = run_adapter(opt, params, grads, "function")
    assert_trajectories(got, reference(spec, params, grads))


# -- the keras convention against Keras's own optimizer -----------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"learning_rate": 0.01, "weight_decay": 0.01, "warmup_steps": 5}, {"beta_1": 0.5, "epsilon": 1e-6}],
    ids=["defaults", "decay-warmup", "beta1-eps"],
)
def test_keras_convention_is_kerass_schedule_free_adamw(kwargs, dtype):
    """Keras's optimizer built eagerly (its z is then a copy of the parameters) and applied eagerly:
    uniopt's keras convention is bitwise, in eager and tf.function."""
    params, grads = params_and_grads(12, dtype, seed=5)
    for mode in ("eager", "function"):
        native_vars = [keras.Variable(p, dtype=dtype) for p in params]
        native = keras.optimizers.ScheduleFreeAdamW(**kwargs)
        native.build(native_vars)
        ours_vars = [keras.Variable(p, dtype=dtype) for p in params]
        ours = ut.ScheduleFreeAdamW(**kwargs, convention="keras")
        ours.build(ours_vars)
        step = make_step(ours, ours_vars, mode)
        for t, g in enumerate(grads, start=1):
            native.apply([tf.constant(x) for x in g], native_vars)
            step([tf.constant(x) for x in g])
            for i, (a, b) in enumerate(zip(ours_vars, native_vars, strict=True)):
                assert bits_equal(a.numpy(), b.numpy()), (mode, t, i)
                j = native._get_variable_index(b)
                assert bits_equal(ours.slots(a)["z"].numpy(), native._momentums[j].numpy())
                assert bits_equal(ours.slots(a)["exp_avg_sq"].numpy(), native._velocities[j].numpy())
        moved = [not np.array_equal(v.numpy(), p) for v, p in zip(native_vars, params, strict=True)]
        assert all(moved)


def test_signature_and_defaults_are_kerass():
    import inspect

    ours = inspect.signature(ut.ScheduleFreeAdamW).parameters
    theirs = inspect.signature(keras.optimizers.ScheduleFreeAdamW).parameters
    positional = [n for n, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == [n for n in theirs if n != "kwargs"]
    for name in ("learning_rate", "beta_1", "beta_2", "epsilon", "warmup_steps"):
        assert ours[name].default == theirs[name].default, name
    assert {n for n, p in ours.items() if p.kind is p.KEYWORD_ONLY} == {"r", "weight_lr_power", "convention"}
    opt = ut.ScheduleFreeAdamW(0.01, 0.8, 0.99, 1e-6, 3, 0.1)  # Keras's positional order
    assert opt.spec == uniopt.ScheduleFreeAdamW(
        lr=0.01, betas=(0.8, 0.99), eps=1e-6, warmup_steps=3, weight_decay=0.1
    )
    assert ut.ScheduleFreeAdamW(convention="keras").spec.weight_lr_power == 0.0
    assert ut.ScheduleFreeAdamW().spec.weight_lr_power == 2.0
    with pytest.raises(ValueError, match=r"weight_lr_power.*keras"):
        ut.ScheduleFreeAdamW(weight_lr_power=1.0, convention="keras")
    with pytest.raises(ValueError, match=r"warmup_steps=2\.5 is not an integer"):
        ut.ScheduleFreeAdamW(warmup_steps=2.5)
    with pytest.raises(ValueError, match=r"convention='torch' is not available"):
        ut.ScheduleFreeAdamW(convention="torch")
    back = ut.ScheduleFreeAdamW.from_config(opt.get_config())
    assert back.spec == opt.spec


# -- XLA -----------------------------------------------------------------------------------------------
def test_xla_is_refused_for_the_optax_convention_before_anything_changes():
    """The optax convention's float32 history has no in-graph formula: refused under XLA."""
    spec = uniopt.ScheduleFreeAdamW(lr=0.01, convention="optax")
    params, grads = params_and_grads(1, "float32")
    variables = [tf.Variable(p) for p in params]
    opt = ut.from_spec(spec)
    opt.build(variables)
    step = make_step(opt, variables, "xla")
    refusal = r"ScheduleFreeAdamW: .*optax.*host.*XLA cannot call.*jit_compile=False"
    with pytest.raises(ValueError, match=refusal):
        step([tf.constant(x) for x in grads[0]])
    assert int(opt.iterations.numpy()) == 0
    for v, p in zip(variables, params, strict=True):
        assert bits_equal(v.numpy(), p)
    assert opt.history() == spec.init_history()


def test_xla_refusals_come_before_the_build_and_leave_the_optimizer_usable():
    """The optax convention, and a beta2 so close to 1 that the bias correction's table does not
    end within 1,000,000 steps, are refused in the first XLA step of an optimizer not yet built
    (as fit(jit_compile=True) on TensorFlow builds it): a ValueError saying to run without XLA,
    nothing built, and the same optimizer then steps in tf.function bitwise with the core."""
    params, grads = params_and_grads(2, "float32", seed=21)
    for spec, match in (
        (uniopt.ScheduleFreeAdamW(lr=0.01, convention="optax"), r"optax.*host.*jit_compile=False"),
        (uniopt.ScheduleFreeAdamW(lr=0.01, betas=(0.9, 0.99999)), r"table.*1000000 steps.*jit_compile"),
    ):
        variables = [tf.Variable(p) for p in params]
        opt = ut.from_spec(spec)
        with pytest.raises(ValueError, match=r"ScheduleFreeAdamW: .*" + match):
            make_step(opt, variables, "xla")([tf.constant(x) for x in grads[0]])
        assert not opt.built and int(opt.iterations.numpy()) == 0
        step = make_step(opt, variables, "function")
        for g in grads:
            step([tf.constant(x) for x in g])
        assert_trajectories([snapshot(opt, variables)], reference(spec, params, grads)[-1:])


def test_under_xla_a_step_in_eval_mode_goes_back_to_train_mode_first():
    """XLA cannot raise: a compiled step taken in eval mode first does what train() does (the
    variables from x back to y, in-graph), then steps, so it equals train() followed by the step;
    eval() warns once the optimizer's steps run under XLA."""
    spec = uniopt.ScheduleFreeAdamW(lr=0.01, warmup_steps=2)
    params, grads = params_and_grads(4, "float32", seed=22)
    runs = []
    for call_train in (False, True):
        variables = [tf.Variable(p) for p in params]
        opt = ut.from_spec(spec)
        opt.build(variables)
        step = make_step(opt, variables, "xla")
        for g in grads[:3]:
            step([tf.constant(x) for x in g])
        with pytest.warns(UserWarning, match=r"compiled by XLA.*cannot refuse a step in eval mode"):
            opt.eval()
        assert not opt.train_mode
        if call_train:
            opt.train()
        step([tf.constant(x) for x in grads[3]])
        assert opt.train_mode
        runs.append(snapshot(opt, variables))
    assert_trajectories(runs[:1], runs[1:])


# -- the history is optimizer state -----------------------------------------------------------------
def test_history_variables_are_in_optimizer_variables_and_checkpoints(tmp_path):
    spec = uniopt.ScheduleFreeAdamW(lr=0.01, warmup_steps=3)
    params, grads = params_and_grads(10, seed=6)
    variables, opt, step = _stepped(spec, params, grads[:5], "function")
    names = [v.name for v in opt.variables]
    assert {"weight_sum", "lr_max", "weight_sum_f32", "lr_max_f32", "train_mode"} <= set(names)
    path = tf.train.Checkpoint(optimizer=opt, variables=variables).save(str(tmp_path / "ckpt"))
    restored_vars = [tf.Variable(np.zeros_like(p)) for p in params]
    restored = ut.ScheduleFreeAdamW.from_config(opt.get_config())
    restored.build(restored_vars)
    tf.train.Checkpoint(optimizer=restored, variables=restored_vars).restore(
        path
    ).assert_existing_objects_matched()
    assert restored.history() == opt.history() != spec.init_history()
    restored_step = make_step(restored, restored_vars, "function")
    for g in grads[5:]:
        step([tf.constant(x) for x in g])
        restored_step([tf.constant(x) for x in g])
    assert_trajectories([snapshot(restored, restored_vars)], [snapshot(opt, variables)])
    assert_trajectories([snapshot(opt, variables)], reference(spec, params, grads)[-1:])


@pytest.mark.parametrize("saved_in", ["train", "eval"])
def test_a_checkpoint_restored_into_an_unbuilt_optimizer_refuses_the_switch_until_built(tmp_path, saved_in):
    """A tf.train.Checkpoint restores an unbuilt optimizer's step count and mode at once, its z slots
    only when build creates them: until then x and y cannot be computed, so train(), eval() and
    evaluating() raise before changing anything; once built they give the spec's views."""
    spec = uniopt.ScheduleFreeAdamW(lr=0.01, warmup_steps=2)
    params, grads = params_and_grads(4, "float32", seed=31)
    variables, opt, _ = _stepped(spec, params, grads, "function")
    y, state = _state_after(spec, params, grads)
    x = spec.eval_params(y, state, npx)
    if saved_in == "eval":
        opt.eval()
    path = tf.train.Checkpoint(optimizer=opt, variables=variables).save(str(tmp_path / "ckpt"))
    held = y if saved_in == "train" else x

    restored_vars = [tf.Variable(np.zeros_like(p)) for p in params]
    restored = ut.from_spec(spec)
    tf.train.Checkpoint(optimizer=restored, variables=restored_vars).restore(path)
    assert not restored.built and int(restored.iterations.numpy()) == len(grads)
    assert restored.train_mode == (saved_in == "train")
    message = r"ScheduleFreeAdamW: .* but the optimizer has taken 4 steps and is not built.*optimizer\.build"
    switch = restored.eval if saved_in == "train" else restored.train
    for attempt in (switch, lambda: restored.evaluating().__enter__()):
        if saved_in == "eval" and attempt is not switch:
            continue  # evaluating() in eval mode is a no-op wrapper
        with pytest.raises(RuntimeError, match=message):
            attempt()
        assert restored.train_mode == (saved_in == "train")
        for v, want in zip(restored_vars, held, strict=True):
            assert bits_equal(v.numpy(), want)

    restored.build(restored_vars)  # creates the slots; the checkpoint fills them
    if saved_in == "train":
        with restored.evaluating():
            for v, want in zip(restored_vars, x, strict=True):
                assert bits_equal(v.numpy(), want)
        for v, want in zip(restored_vars, y, strict=True):
            assert bits_equal(v.numpy(), want)
    else:
        restored.train()
        for v, want in zip(restored_vars, spec.train_params(x, state, npx), strict=True):
            assert bits_equal(v.numpy(), want)
    assert restored.train_mode


def test_evaluating_does_not_warn_about_steps_under_xla():
    """eval() warns once steps ran under XLA (a compiled step cannot be refused in eval mode);
    evaluating() puts train mode back itself, so it does not."""
    spec = uniopt.ScheduleFreeAdamW(lr=0.01)
    params, grads = params_and_grads(2, "float32", seed=32)
    _, opt, _ = _stepped(spec, params, grads, "xla")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with opt.evaluating():
            assert not opt.train_mode
    assert opt.train_mode


def _mlp():
    return keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(2)]
    )


def _data():
    rng = np.random.default_rng(7)
    return rng.standard_normal((64, 6)).astype("float32"), rng.standard_normal((64, 2)).astype("float32")


def test_model_save_load_continues_bitwise(tmp_path):
    x, y = _data()
    keras.utils.set_random_seed(0)
    model = _mlp()
    model.compile(optimizer=ut.ScheduleFreeAdamW(learning_rate=0.01, warmup_steps=4), loss="mse")
    model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is ut.ScheduleFreeAdamW
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables, strict=True):
        assert bits_equal(a.numpy(), b.numpy()), a.path
    assert loaded.optimizer.history() == model.optimizer.history()
    model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    loaded.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(
        model.weights + model.optimizer.variables, loaded.weights + loaded.optimizer.variables, strict=True
    ):
        assert bits_equal(a.numpy(), b.numpy()), a.path


# -- train / eval ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("convention", ["uniopt", "keras", "optax"])
def test_eval_and_train_give_the_specs_views(convention):
    spec = uniopt.ScheduleFreeAdamW(lr=0.01, convention=convention)
    params, grads = params_and_grads(5, "float32", seed=8)
    variables, opt, _ = _stepped(spec, params, grads, "function")
    y, state = _state_after(spec, params, grads)
    x = spec.eval_params(y, state, npx)
    assert opt.train_mode
    opt.eval()
    assert not opt.train_mode
    for v, want in zip(variables, x, strict=True):
        assert bits_equal(v.numpy(), want)
    opt.eval()  # no-op in eval mode
    for v, want in zip(variables, x, strict=True):
        assert bits_equal(v.numpy(), want)
    opt.train()
    back = spec.train_params(x, state, npx)
    for v, want in zip(variables, back, strict=True):
        assert bits_equal(v.numpy(), want)
    assert opt.train_mode


def test_before_the_first_step_eval_changes_nothing():
    params, _ = params_and_grads(1, "float32")
    variables = [tf.Variable(p) for p in params]
    opt = ut.ScheduleFreeAdamW(convention="optax")  # its view of x = y = z rounds: not applied
    opt.build(variables)
    opt.eval()
    assert not opt.train_mode
    for v, p in zip(variables, params, strict=True):
        assert bits_equal(v.numpy(), p)
    opt.train()
    assert opt.train_mode


def _unchanged(opt, variables, before_vars, before_opt):
    for v, b in zip(variables, before_vars, strict=True):
        assert bits_equal(v.numpy(), b)
    for v, b in zip(opt.variables, before_opt, strict=True):
        assert bits_equal(v.numpy(), b), v.path


def test_apply_is_refused_in_eval_mode_eagerly_traced_and_in_a_traced_function():
    params, grads = params_and_grads(3, "float32", seed=9)
    variables = [tf.Variable(p) for p in params]
    opt = ut.ScheduleFreeAdamW(learning_rate=0.01)
    traced = make_step(opt, variables, "function")
    traced([tf.constant(x) for x in grads[0]])  # traced in train mode
    opt.eval()
    before_vars = [v.numpy() for v in variables]
    before_opt = [v.numpy() for v in opt.variables]
    message = r"ScheduleFreeAdamW: the optimizer is in eval mode .* call optimizer\.train\(\)"
    with pytest.raises(RuntimeError, match=message):
        opt.apply_gradients(zip([tf.constant(x) for x in grads[1]], variables, strict=True))
    _unchanged(opt, variables, before_vars, before_opt)
    with pytest.raises(RuntimeError, match=message):  # a new trace sees the mode
        make_step(opt, variables, "function")([tf.constant(x) for x in grads[1]])
    _unchanged(opt, variables, before_vars, before_opt)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):  # the in-graph check
        traced([tf.constant(x) for x in grads[1]])
    _unchanged(opt, variables, before_vars, before_opt)
    opt.train()
    traced([tf.constant(x) for x in grads[1]])
    assert int(opt.iterations.numpy()) == 2


def test_eval_and_train_are_eager_only():
    opt = ut.ScheduleFreeAdamW()
    with pytest.raises(RuntimeError, match=r"call them eagerly"):
        tf.function(opt.eval)()


def test_evaluating_restores_y_exactly():
    spec = uniopt.ScheduleFreeAdamW(lr=0.01, warmup_steps=2)
    params, grads = params_and_grads(5, "float32", seed=10)
    variables, opt, _ = _stepped(spec, params, grads, "eager")
    y, state = _state_after(spec, params, grads)
    with opt.evaluating():
        assert not opt.train_mode
        for v, want in zip(variables, spec.eval_params(y, state, npx), strict=True):
            assert bits_equal(v.numpy(), want)
    assert opt.train_mode
    for v, want in zip(variables, y, strict=True):
        assert bits_equal(v.numpy(), want)


def test_eval_at_x_callback_validates_at_x_and_training_is_unchanged():
    """fit's validation inside EvalAtX sees x (its loss is model.evaluate's at x), and training
    continues from the same y as a run without validation."""
    x, y = _data()
    runs = []
    for callback in (False, True):
        keras.utils.set_random_seed(0)
        model = _mlp()
        model.compile(optimizer=ut.ScheduleFreeAdamW(learning_rate=0.05), loss="mse")
        if callback:
            history = model.fit(
                x,
                y,
                epochs=2,
                batch_size=16,
                shuffle=False,
                verbose=0,
                validation_data=(x, y),
                callbacks=[ut.EvalAtX()],
            )
        else:
            model.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
        runs.append((model, history if callback else None))
    plain, (with_cb, history) = runs[0][0], runs[1]
    for a, b in zip(
        plain.weights + plain.optimizer.variables, with_cb.weights + with_cb.optimizer.variables, strict=True
    ):
        assert bits_equal(a.numpy(), b.numpy()), a.path
    assert with_cb.optimizer.train_mode
    with with_cb.optimizer.evaluating():
        at_x = with_cb.evaluate(x, y, batch_size=16, verbose=0)
    at_y = with_cb.evaluate(x, y, batch_size=16, verbose=0)
    assert history.history["val_loss"][-1] == at_x != at_y


def test_eval_at_x_refuses_an_optimizer_without_a_view():
    x, y = _data()
    model = _mlp()
    model.compile(optimizer=ut.Adam(), loss="mse")
    with pytest.raises(TypeError, match=r"EvalAtX: expected a uniopt\.tf optimizer with an evaluation view"):
        model.evaluate(x, y, verbose=0, callbacks=[ut.EvalAtX()])
    # Keras's own ScheduleFreeAdamW is named by its module, not only its class name
    model.compile(optimizer=keras.optimizers.ScheduleFreeAdamW(), loss="mse")
    with pytest.raises(
        TypeError, match=r"got keras\.src\.optimizers\.schedule_free_adamw\.ScheduleFreeAdamW"
    ):
        model.evaluate(x, y, verbose=0, callbacks=[ut.EvalAtX()])


# -- porting -------------------------------------------------------------------------------------------
def test_export_in_eval_mode_is_refused_and_a_record_needs_the_history():
    spec = uniopt.ScheduleFreeAdamW(lr=0.01)
    params, grads = params_and_grads(2, "float32")
    variables = [tf.Variable(p) for p in params]
    opt = ut.from_spec(spec)
    make_step(opt, variables, "eager")([tf.constant(x) for x in grads[0]])
    record = ut.export_state(opt, variables)
    assert record.history == opt.history()._asdict()
    opt.eval()
    with pytest.raises(ValueError, match=r"export_state: the optimizer is in eval mode"):
        ut.export_state(opt, variables)
    other = ut.from_spec(spec)
    with pytest.raises(ValueError, match=r"history"):
        ut.import_state(other, dataclasses.replace(record, history=None), variables)
    assert not other.built


@pytest.mark.parametrize("convention", ["uniopt", "optax"])
def test_a_run_moves_numpy_tf_numpy_through_files_bitwise(tmp_path, convention):
    """The record carries the history both ways: steps 1-3 in the core (as uniopt.torch and
    uniopt.jax export the same record), 4-6 in uniopt.tf (imported into an optimizer not built yet),
    7-9 in the core again; bitwise with the uninterrupted run, history included."""
    from uniopt.porting import export_state as core_export
    from uniopt.porting import import_state as core_import

    spec = uniopt.ScheduleFreeAdamW(lr=0.02, warmup_steps=4, weight_decay=0.01, convention=convention)
    params, grads = params_and_grads(9, "float32", seed=11)
    ps, state = _state_after(spec, params, grads[:3])
    uniopt.save_state(tmp_path / "a.npz", core_export(spec, state, ps))
    variables = [tf.Variable(p) for p in ps]
    opt = ut.from_spec(spec)
    ut.import_state(opt, uniopt.load_state(tmp_path / "a.npz"), variables)
    assert opt.history() == state.history
    step = make_step(opt, variables, "function")
    for g in grads[3:6]:
        step([tf.constant(x) for x in g])
    uniopt.save_state(tmp_path / "b.npz", ut.export_state(opt, variables))
    ps = [v.numpy() for v in variables]
    state = core_import(uniopt.load_state(tmp_path / "b.npz"), spec, ps)
    for g in grads[6:]:
        ps, state = spec.update(g, state, ps, npx)
    want, want_state = _state_after(spec, params, grads)
    for a, b in zip(ps, want, strict=True):
        assert bits_equal(a, b)
    assert state.history == want_state.history


def test_kerass_own_optimizer_is_recorded_with_the_keras_convention():
    params, grads = params_and_grads(6, "float32", seed=12)
    native_vars = [keras.Variable(p) for p in params]
    native = keras.optimizers.ScheduleFreeAdamW(learning_rate=0.01, weight_decay=0.1, warmup_steps=3)
    native.build(native_vars)
    for g in grads[:3]:
        native.apply([tf.constant(x) for x in g], native_vars)
    record = ut.from_keras(native, native_vars)
    assert (record.optimizer, record.convention, record.history) == ("ScheduleFreeAdamW", "keras", None)
    ours_vars = [keras.Variable(v.numpy()) for v in native_vars]
    ours = ut.ScheduleFreeAdamW(learning_rate=0.01, weight_decay=0.1, warmup_steps=3, convention="keras")
    ut.import_state(ours, record, ours_vars)
    for g in grads[3:]:
        native.apply([tf.constant(x) for x in g], native_vars)
        ours.apply([tf.constant(x) for x in g], ours_vars)
    for a, b in zip(ours_vars, native_vars, strict=True):
        assert bits_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("mode", ["function", "xla"])
@pytest.mark.parametrize("convention", ["uniopt", "keras"])
def test_built_inside_a_tf_function_z_still_starts_at_the_parameters(convention, mode):
    """The first apply inside a tf.function builds the optimizer: each z is initialised from its
    variable's value when created (Keras's own optimizer assigns the copy in-graph, where it is
    lost, and starts z at 0: see docs/optimizers/schedule_free_adamw.md). Under XLA, whose
    variables must be created from values known outside the function, z is created as zeros and
    takes the variable's value in the first step; the optimizer's variables are its own (the
    model's are not tracked by it)."""
    spec = uniopt.ScheduleFreeAdamW(lr=0.01, convention=convention)
    params, grads = params_and_grads(4, "float32", seed=15)
    variables = [tf.Variable(p) for p in params]
    opt = ut.from_spec(spec)
    step = make_step(opt, variables, mode)  # not built yet
    got = []
    for g in grads:
        step([tf.constant(x) for x in g])
        got.append(snapshot(opt, variables))
    assert_trajectories(got, reference(spec, params, grads))
    own = {id(v) for v in opt.variables}
    assert not any(id(v) in own for v in variables)
    eager = ut.from_spec(spec)
    eager.build([tf.Variable(p) for p in params])
    assert [v.name for v in opt.variables] == [v.name for v in eager.variables]
