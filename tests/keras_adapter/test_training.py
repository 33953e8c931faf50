"""uniopt.keras in Keras's training machinery on this process's backend: ``fit`` on a real model
(sklearn's digits), ``get_config``/``from_config``, ``.keras`` save, ``load_model`` and continued
training, learning-rate schedules and the LearningRateScheduler callback,
``exclude_from_weight_decay``, ``LossScaleOptimizer``, ``use_ema`` and
``gradient_accumulation_steps``. Expected values: the NumPy reference (``spec.update``)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras_helpers import BACKEND, feed_loss, fit_feed, numpy, snapshot
from trajectories import assert_trajectories, bits_equal, params_and_grads, reference

import uniopt
import uniopt.keras as uk

SHAPES = ((3, 4), (5,), ())


def _inputs(steps, seed=5, dtype="float32"):
    return params_and_grads(steps, dtype, seed=seed, shapes=SHAPES)


def _jax_without_x64() -> bool:
    if BACKEND != "jax":
        return False
    import jax

    return not jax.config.jax_enable_x64


def test_fit_on_digits_learns():
    """A small MLP on sklearn's digits (shipped with scikit-learn), compiled as Keras compiles by
    default for this backend: uniopt's RAdam trains it."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = (x[order] / 16.0).astype("float32"), y[order]
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(
        optimizer=uk.RAdam(learning_rate=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(x[:1500], y[:1500], batch_size=64, epochs=8, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0] / 4
    _, accuracy = model.evaluate(x[1500:], y[1500:], verbose=0)
    assert accuracy > 0.9


@pytest.mark.parametrize("name", uk.OPTIMIZERS)
def test_config_round_trip(name):
    cls = getattr(uk, name)
    opt = cls()
    again = cls.from_config(opt.get_config())
    assert type(again) is cls and again.spec == opt.spec
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(restored) is cls and restored.spec == opt.spec


@pytest.mark.parametrize(
    "make",
    [
        lambda: uk.RAdam(learning_rate=0.01, weight_decay=0.1),
        lambda: uk.ScheduleFreeAdamW(learning_rate=0.01),  # its history lives in optimizer variables
        lambda: uk.Adam(convention="keras", amsgrad=True),
    ],
    ids=["RAdam", "ScheduleFreeAdamW", "Adam-keras"],
)
def test_save_load_and_continue_is_the_uninterrupted_run(make, tmp_path):
    """``model.save`` after 3 steps of ``fit(jit_compile=True)``, ``keras.models.load_model``, 4
    more: bitwise the NumPy reference of the uninterrupted 7 steps. (A third ``fit`` of all 7 steps
    is not run: bitwise the same reference, it would be that reference again, at an inductor
    compile of about 40 s on Keras's torch backend on a 2-core machine.)"""
    params, grads = _inputs(7)
    spec = make().spec
    model = fit_feed(make(), params, grads[:3], jit_compile=True)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, custom_objects={"feed_loss": feed_loss})
    assert type(loaded.optimizer) is type(model.optimizer) and loaded.optimizer.spec == spec
    fit_feed(None, None, grads[3:], jit_compile=True, model=loaded)
    want = reference(spec, params, grads)[-1]
    assert_trajectories([snapshot(loaded.optimizer, loaded.ws)], [want])


def test_a_schedule_in_fit():
    """A LearningRateSchedule's float32 values, as the step computes them, at every step."""
    boundaries, values = [2, 4], [0.02, 0.01, 0.003]
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    params, grads = _inputs(6)
    opt = uk.Adam(learning_rate=schedule, weight_decay=0.1)
    model = fit_feed(opt, params, grads, jit_compile=True)
    # PiecewiseConstantDecay at Keras's 0-based step count t: t <= 2, 2 < t <= 4, t > 4
    lrs = [float(np.float32(values[0 if t <= 2 else 1 if t <= 4 else 2])) for t in range(6)]
    want = reference(uniopt.Adam(lr=0.02, weight_decay=0.1), params, grads, lrs=lrs)[-1]
    assert_trajectories([snapshot(model.optimizer, model.ws)], [want])


def test_learning_rate_scheduler_callback():
    """``LearningRateScheduler`` sets ``optimizer.learning_rate`` at each epoch: the float64 variable
    holds it exactly on TensorFlow and torch (and on JAX with x64); JAX without x64 holds float32,
    so a rate other than the spec's own is the float32 value there (docs/keras.md)."""
    params, grads = _inputs(2)
    rates = [0.01, 0.3, 0.7]
    callback = keras.callbacks.LearningRateScheduler(lambda epoch, lr: rates[epoch])
    opt = uk.RAdam(learning_rate=0.01)
    model = fit_feed(opt, params, grads, jit_compile=True, epochs=3, callbacks=[callback])
    held = [r if r == 0.01 or not _jax_without_x64() else float(np.float32(r)) for r in rates]
    lrs = [lr for lr in held for _ in grads]
    want = reference(uniopt.RAdam(lr=0.01), params, grads * 3, lrs=lrs)[-1]
    assert_trajectories([snapshot(model.optimizer, model.ws)], [want])
    if _jax_without_x64():  # the difference is real: the exact rates give other bits
        exact = reference(uniopt.RAdam(lr=0.01), params, grads * 3, lrs=[r for r in rates for _ in grads])
        assert not all(bits_equal(a, b) for a, b in zip(exact[-1][0], want[0], strict=True))


def test_exclude_from_weight_decay():
    """The excluded variable steps without weight decay, the others with it."""
    params, grads = _inputs(5)
    opt = uk.AdamW(learning_rate=0.01, weight_decay=0.2)
    opt.exclude_from_weight_decay(var_names=["w1"])
    model = fit_feed(opt, params, grads, jit_compile=True)
    spec = uniopt.AdamW(lr=0.01, weight_decay=0.2)
    got_params, got_slots = snapshot(model.optimizer, model.ws)
    for i in range(len(SHAPES)):
        var_spec = spec.replace(weight_decay=0.0) if i == 1 else spec
        want_params, want_slots = reference(var_spec, [params[i]], [[g[i]] for g in grads])[-1]
        assert_trajectories([([got_params[i]], [got_slots[i]])], [(want_params, want_slots)])
    decayed = reference(spec, [params[1]], [[g[1]] for g in grads])[-1][0][0]
    assert not bits_equal(decayed, got_params[1])


def test_loss_scale_optimizer():
    """Keras's LossScaleOptimizer scales the loss by 2**15 and the gradients back (exact): the inner
    uniopt optimizer's steps are the reference's. Eagerly on torch: under ``torch.compile`` Keras's
    LossScaleOptimizer recompiles at every step (its ``ops.cond`` names each call anew, and dynamo
    guards on the name counter), so past dynamo's recompile limit it would run eagerly anyway; with
    Keras's own Nadam inside it does the same (measured 2026-12-04, Keras 3.15.1, torch 2.13)."""
    params, grads = _inputs(5)
    inner = uk.NAdam(learning_rate=0.01)
    jit = BACKEND != "torch"
    model = fit_feed(keras.optimizers.LossScaleOptimizer(inner), params, grads, jit_compile=jit)
    want = reference(inner.spec, params, grads)[-1]
    assert_trajectories([snapshot(model.optimizer.inner_optimizer, model.ws)], [want])


def test_use_ema():
    """``use_ema=True``: the variables follow the reference; Keras's moving averages of them are
    Keras's formula (``m * average + (1 - m) * variable``, ``m = 0`` at the first step), in float32."""
    params, grads = _inputs(6)
    opt = uk.Adam(learning_rate=0.01, use_ema=True, ema_momentum=0.9)
    variables = [keras.Variable(p) for p in params]
    opt.build(variables)
    want = reference(opt.spec, params, grads)
    averages = [np.zeros_like(p) for p in params]
    for t, step in enumerate(grads):
        opt.apply([keras.ops.convert_to_tensor(g) for g in step], variables)
        m = np.float32(0.9) * np.float32(t != 0)
        averages = [m * a + (np.float32(1) - m) * p for a, p in zip(averages, want[t][0], strict=True)]
        assert_trajectories([snapshot(opt, variables)], [want[t]])
        for got, expected in zip(opt._model_variables_moving_average, averages, strict=True):
            assert bits_equal(numpy(got), expected.astype(np.float32))


def test_gradient_accumulation_steps():
    """``gradient_accumulation_steps=2``: every second ``apply`` steps with the mean of the two
    gradients (``(g2 + g1) / 2``, as Keras sums and divides), the step count advancing once."""
    params, grads = _inputs(6)
    opt = uk.RAdam(learning_rate=0.01, gradient_accumulation_steps=2)
    variables = [keras.Variable(p) for p in params]
    opt.build(variables)
    for step in grads:
        opt.apply([keras.ops.convert_to_tensor(g) for g in step], variables)
    means = [
        [(b + a) / np.float32(2) for a, b in zip(grads[i], grads[i + 1], strict=True)] for i in (0, 2, 4)
    ]
    want = reference(opt.spec, params, means)[-1]
    assert_trajectories([snapshot(opt, variables)], [want])
    assert int(numpy(opt.iterations)) == 3


@pytest.mark.parametrize("make", [uk.RAdam, uk.ScheduleFreeAdamW], ids=["RAdam", "ScheduleFreeAdamW"])
def test_apply_takes_the_variables_as_a_generator_or_a_subset(make):
    """``apply(grads, variables)`` as users call it: the variables a generator (read once), first to
    build the optimizer and then built; then a subset of them, which steps alone. Every step is the
    reference's; a variable the optimizer was not built for is refused with Keras's own error,
    nothing changed."""
    params, grads = _inputs(4)
    opt = make(learning_rate=0.01)
    variables = [keras.Variable(p) for p in params]
    for step in grads[:3]:
        opt.apply([keras.ops.convert_to_tensor(g) for g in step], (v for v in variables))
    want = reference(opt.spec, params, grads[:3])[-1]
    assert_trajectories([snapshot(opt, variables)], [want])
    before = snapshot(opt, variables)
    with pytest.raises(ValueError, match="Unknown variable"):
        opt.apply([keras.ops.convert_to_tensor(grads[3][0])], [keras.Variable(params[0])])
    assert_trajectories([snapshot(opt, variables)], [before])
    opt.apply([keras.ops.convert_to_tensor(grads[3][0])], iter(variables[:1]))
    assert int(numpy(opt.iterations)) == 4
    alone = reference(opt.spec, params[:1], [g[:1] for g in grads])[-1]  # step 4 of the first alone
    assert_trajectories([snapshot(opt, variables[:1])], [alone])
    assert_trajectories([snapshot(opt, variables[1:])], [tuple(x[1:] for x in before)])  # unchanged


@pytest.mark.parametrize("name", ["SGD", "Adam"])
def test_a_callable_learning_rate_is_called_once_per_step(name):
    """A learning rate given as a callable that returns another value at each call (0.1, 0.2, ...):
    called once per ``apply``, as by Keras's own optimizer, and that call's value is the step's (on
    torch the step's scalars come from the host when ``apply`` is called; a second read there would
    take the next value). SGD's three steps with gradient 1 end where Keras's SGD ends, bitwise."""

    def run(make):
        calls = []

        def learning_rate():
            calls.append(1)
            return 0.1 * len(calls)

        opt, variable = make(learning_rate=learning_rate), keras.Variable(np.zeros(1, "float32"))
        for _ in range(3):
            opt.apply([keras.ops.ones(1)], [variable])
        return len(calls), numpy(variable)

    calls, got = run(getattr(uk, name))
    keras_calls, keras_got = run(getattr(keras.optimizers, name))
    assert calls == keras_calls == 3
    if name == "SGD":
        assert bits_equal(got, keras_got), (got, keras_got)


@pytest.mark.parametrize("convention", ["uniopt", "keras"])
@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf")])
def test_a_learning_rate_set_out_of_range_is_refused_and_the_rate_kept(convention, bad):
    """``optimizer.learning_rate = x`` (what LearningRateScheduler and ReduceLROnPlateau do) is
    checked as the constructor checks ``learning_rate``: a negative or non-finite rate raises
    ``ValueError`` naming the argument and its range, and the rate stays what it was (a model saved
    with such a rate would not load: the saved config is checked at load)."""
    opt = uk.Adam(learning_rate=0.01, convention=convention)
    opt.build([keras.Variable(np.ones(3, "float32"))])
    before = float(keras.ops.convert_to_numpy(opt.learning_rate))
    with pytest.raises(
        ValueError, match=r"lr=.*(out of range; expected 0 <= lr|not finite).*argument learning_rate"
    ):
        opt.learning_rate = bad
    assert float(keras.ops.convert_to_numpy(opt.learning_rate)) == before
    opt.learning_rate = 0.001  # a valid rate is still taken
    assert float(keras.ops.convert_to_numpy(opt.learning_rate)) == pytest.approx(0.001, rel=1e-7)
