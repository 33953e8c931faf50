"""JAX only: ``jax.jit`` of ``optimizer.stateless_apply`` (what Keras's JAX trainer compiles), every
row of the table with Keras names, one case per optimizer and convention: bitwise against the NumPy
reference, but where the table states a bound (Muon's products by the backend's matmul)."""

from __future__ import annotations

import keras
import pytest
from keras_helpers import BACKEND, numpy, snapshot, tolerance
from test_rows import ROWS, _inputs
from trajectories import assert_trajectories, reference

import uniopt.keras as uk

if BACKEND != "jax":
    pytest.skip(
        "jax.jit of stateless_apply: Keras's JAX backend (this run: another)", allow_module_level=True
    )


@pytest.mark.parametrize(("info", "case"), ROWS)
def test_jax_jit_of_stateless_apply_is_the_numpy_reference(info, case):
    import jax

    spec = info.make(case)
    params, grads = _inputs(spec, nonfinite=True)
    opt = uk.from_spec(spec)
    variables = [keras.Variable(p) for p in params]
    opt.build(variables)
    step = jax.jit(opt.stateless_apply)
    values = [v.value for v in variables]
    opt_values = [v.value for v in opt.variables]
    got = []
    for g in grads:
        values, opt_values = step(opt_values, [jax.numpy.asarray(x) for x in g], values)
        for v, value in zip(opt.variables, opt_values, strict=True):
            v.assign(value)
        got.append(([numpy(v) for v in values], snapshot(opt, variables)[1]))
    assert_trajectories(got, reference(spec, params, grads), ulp=tolerance(info, case, compiled=True))
