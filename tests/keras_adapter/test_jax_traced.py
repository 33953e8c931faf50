"""JAX only: the optimizer stepped while jax traces with its own variables concrete (constants of the
traced program, not arguments): ``jax.jit`` of a function closing over the optimizer's variables,
``lax.cond`` of eager code (what Keras's ``LossScaleOptimizer`` does under ``mixed_float16`` with
``fit(jit_compile=False)``). The steps take the traced path (no fused multiply-adds, no division
turned into a product by a reciprocal) and are bitwise the NumPy reference's, as eagerly and under
``jax.jit(stateless_apply)`` (but where the table states a bound: Muon's products by the backend's
matmul). Parameters of 1,000 elements and more: a step that contracts products moves a few percent
of the elements."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from cases import shapes_for
from keras_helpers import BACKEND, FeedModel, feed_loss, feed_rows, numpy, snapshot, tolerance
from test_rows import FIRST_PER_OPTIMIZER, STEPS
from trajectories import assert_trajectories, params_and_grads, reference

import uniopt.keras as uk

if BACKEND != "jax":
    pytest.skip("jax tracing: Keras's JAX backend (this run: another)", allow_module_level=True)

LARGE = ((40, 25), (1000,), ())


def _inputs(spec, steps=STEPS):
    params, grads = params_and_grads(steps, "float32", seed=3, shapes=shapes_for(spec, LARGE))
    grads[2][0].reshape(-1)[:3] = [np.nan, np.inf, -np.inf]  # propagate exactly as in NumPy
    return params, grads


def _stepped(info, case, step):
    """The trajectory of ``step(optimizer, optimizer values, gradients, values)`` over the inputs."""
    import jax

    spec = info.make(case)
    params, grads = _inputs(spec)
    opt = uk.from_spec(spec)
    variables = [keras.Variable(p) for p in params]
    opt.build(variables)
    values = [v.value for v in variables]
    opt_values = [v.value for v in opt.variables]
    got = []
    for g in grads:
        values, opt_values = step(opt, opt_values, [jax.numpy.asarray(x) for x in g], values)
        for v, value in zip(opt.variables, opt_values, strict=True):
            v.assign(value)
        got.append(([numpy(v) for v in values], snapshot(opt, variables)[1]))
    assert_trajectories(got, reference(spec, params, grads), ulp=tolerance(info, case, compiled=True))


@pytest.mark.parametrize(("info", "case"), FIRST_PER_OPTIMIZER)
def test_jit_closing_over_the_optimizer_variables_is_the_numpy_reference(info, case):
    import jax

    def step(opt, opt_values, grads, values):
        return jax.jit(lambda g, v: opt.stateless_apply(opt_values, g, v))(grads, values)

    _stepped(info, case, step)


@pytest.mark.parametrize(("info", "case"), FIRST_PER_OPTIMIZER)
def test_lax_cond_of_eager_code_is_the_numpy_reference(info, case):
    import jax

    def step(opt, opt_values, grads, values):
        return jax.lax.cond(
            True, lambda: opt.stateless_apply(opt_values, grads, values), lambda: (values, opt_values)
        )

    _stepped(info, case, step)


def _fit_mixed_float16(optimizer, params, grads, jit_compile):
    """``fit`` of a FeedModel (float32 weights) under the ``mixed_float16`` policy, which wraps the
    optimizer in Keras's ``LossScaleOptimizer`` at ``compile``."""
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = FeedModel([np.shape(p) for p in params], dtype="float32")
        model.build((None, sum(int(np.size(p)) for p in params)))
        for w, p in zip(model.ws, params, strict=True):
            w.assign(p)
        model.compile(optimizer=optimizer, loss=feed_loss, jit_compile=jit_compile)
        rows = feed_rows(grads)
        model.fit(rows, np.zeros((len(rows), 1), "float32"), batch_size=1, shuffle=False, verbose=0)
    finally:
        keras.config.set_dtype_policy("float32")
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    return model


@pytest.mark.parametrize(
    "make",
    [
        lambda: uk.RAdam(learning_rate=0.01, weight_decay=0.1),
        lambda: uk.Adam(learning_rate=0.01, convention="keras"),
        lambda: uk.ScheduleFreeAdamW(learning_rate=0.01),
    ],
    ids=["RAdam", "Adam-keras", "ScheduleFreeAdamW"],
)
def test_mixed_float16_loss_scale_fit_without_jit_compile_is_jit_compile(make):
    """The gradients scaled by 2**15 and unscaled are the inputs exactly (products and quotients by
    a power of two, in range), so both fits are the NumPy reference's steps on them."""
    params, grads = params_and_grads(STEPS, "float32", seed=3, shapes=((40, 25), (50,), ()))
    grads = [[g * np.float32(0.01) for g in step] for step in grads]
    eager = _fit_mixed_float16(make(), params, grads, jit_compile=False)
    compiled = _fit_mixed_float16(make(), params, grads, jit_compile=True)
    spec = eager.optimizer.inner_optimizer._spec
    want = reference(spec, params, grads)[-1]
    for model in (eager, compiled):
        assert int(numpy(model.optimizer.inner_optimizer.iterations)) == STEPS  # no step skipped
        assert_trajectories([snapshot(model.optimizer.inner_optimizer, model.ws)], [want])
