"""The step taken while jax traces with the state concrete (a constant of the traced program, not an
argument): ``jax.jit`` of a function closing over the state, ``jax.jit`` closing over everything,
``lax.cond`` of eager code. The steps take the traced path (no fused multiply-adds, no division by
a constant turned into a product by its reciprocal) and are bitwise the NumPy reference's, as
eagerly and under ``jax.jit`` of the whole step, but where the table states a bound (Muon's
products by the backend's matmul). Parameters of 1,000 elements and more: a step that contracts
products moves a few percent of the elements (measured before the traced path took these cases:
up to 32 ulp, 238 of 1,000 elements for RMSprop)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cases import float32_draws, shapes_for, table_for
from ujax_helpers import assert_history_within, reference

import uniopt.jax as ujax

DEFAULTS = [pytest.param(info, info.cases[0], id=info.name) for info in table_for("jax")]
LARGE = ((40, 25), (1000,), ())
STEPS = 3


def _tx(spec):
    name, kwargs = ujax.optax_arguments(spec)
    return getattr(ujax, name)(**kwargs)


def _closing_over_state(tx, state, grads, params):
    return jax.jit(lambda g, p: tx.step(g, state, p))(grads, params)


def _closing_over_everything(tx, state, grads, params):
    return jax.jit(lambda: tx.step(grads, state, params))()


def _lax_cond_of_eager_code(tx, state, grads, params):
    return jax.lax.cond(True, lambda: tx.step(grads, state, params), lambda: (params, state))


STEPPERS = [_closing_over_state, _closing_over_everything, _lax_cond_of_eager_code]


@pytest.mark.parametrize("stepper", STEPPERS, ids=lambda f: f.__name__.strip("_"))
@pytest.mark.parametrize(("info", "case"), DEFAULTS)
def test_traced_with_a_concrete_state_is_the_numpy_reference(info, case, stepper):
    spec = info.make(case)
    params, grads = float32_draws(shapes_for(spec, LARGE), STEPS, seed=3)
    grads[2][1].reshape(-1)[:3] = [np.nan, np.inf, -np.inf]  # propagated exactly as in NumPy
    want, _ = reference(spec, params, grads)
    tx = _tx(spec)
    values = [jnp.asarray(p) for p in params]
    state = tx.init(values)
    got = []
    for g in grads:
        values, state = stepper(tx, state, [jnp.asarray(x) for x in g], values)
        got.append([np.asarray(v) for v in values])
    assert int(state.count) == STEPS
    assert_history_within(got, want, info.tolerance("jax", "jit", case.desc), stepper.__name__)
