"""``convention="keras"`` against Keras's own optimizer on this process's backend: the same
parameters and gradients through ``uniopt.keras.X(convention="keras")`` and ``keras.optimizers.X()``,
eagerly (``apply``) and in ``fit(jit_compile=True)``. Bitwise, but where a bound was measured (6 steps
of float32, seed 11; docs/keras.md): Keras's own optimizers on torch run ``torch._foreach`` kernels
(fused multiply-adds, torch's CPU ``sqrt``), Lamb's and Muon's norms sum in the backend's order,
XLA fuses Keras's own ops, and Keras's own ScheduleFreeAdamW on JAX differs from the same class on
TensorFlow (whose steps the keras convention follows) by thousands of ulp."""

from __future__ import annotations

import array_api_compat.numpy as npx
import keras
import numpy as np
import pytest
from keras_helpers import BACKEND, TORCH_COMPILE_ALL, fit_feed, numpy
from trajectories import max_ulp, params_and_grads

import uniopt.keras as uk
from uniopt.registry import TABLE

NATIVE = [info.keras.native for info in TABLE if info.keras is not None and info.keras.native]

# backend -> mode -> optimizer -> measured max ulp (absent: 0, bitwise)
BOUNDS = {
    # ScheduleFreeAdamW jit: Keras's own against the NumPy reference from z = 0 (Z_FROM_ZERO)
    "tensorflow": {"eager": {"Lamb": 1}, "jit": {"RMSprop": 1, "ScheduleFreeAdamW": 5}},
    "jax": {
        "eager": {"Muon": 1, "ScheduleFreeAdamW": 54784},
        # RMSprop: 1 ulp on an AMD EPYC (AVX-512), 0 on an Intel Xeon: XLA fuses Keras's own ops
        # per CPU
        "jit": {"SGD": 1, "RMSprop": 1, "Lamb": 1, "Muon": 1, "ScheduleFreeAdamW": 54783},
    },
    "torch": {
        "eager": {"SGD": 1, "RMSprop": 1, "AdamW": 2, "Lamb": 1, "Nadam": 6},
        "jit": {"SGD": 1, "RMSprop": 1, "AdamW": 2, "Lamb": 1, "Nadam": 6},
    },
}
# Keras's own ScheduleFreeAdamW built inside a traced function (fit on TensorFlow builds the
# optimizer in its first step) loses the assign that copies the parameters into z, which starts at
# 0 (docs/optimizers/schedule_free_adamw.md); uniopt's starts at the parameters, as when built
# eagerly. There Keras's own is compared with the NumPy reference started from z = 0 (measured max
# ulp: XLA rewrites Keras's division by beta_1 into a product with its reciprocal)
Z_FROM_ZERO = {"tensorflow": {"jit": {"ScheduleFreeAdamW"}}}
# On torch each compiled row costs two inductor compiles of Keras's train step (184 s of test time
# for the 15 optimizers on 2026-12-04, every row then within the eager bounds above); uniopt's own
# compiled step is bitwise the reference in test_rows.py, so what a compiled row adds here is
# Keras's own optimizer under torch.compile, left to --torch-compile-all (conftest)


def _inputs(name):
    shapes = ((4, 3), (3, 5), (6,)) if name == "Muon" else ((3, 4), (5,), (2, 3))
    return params_and_grads(6, "float32", seed=11, shapes=shapes)


def _numpy_run(spec, params, grads, z_from_zero=False):
    """The spec's NumPy run (its state from ``spec.init``; ``z`` zeros with ``z_from_zero``)."""
    state = spec.init(params, npx)
    if z_from_zero:
        state = state._replace(slots=tuple({**s, "z": np.zeros_like(s["z"])} for s in state.slots))
    for step in grads:
        params, state = spec.update(step, state, params, npx)
    return params


def _run(opt, params, grads, mode):
    if mode == "jit":
        return [numpy(w) for w in fit_feed(opt, params, grads, jit_compile=True).ws]
    variables = [keras.Variable(p) for p in params]
    opt.build(variables)
    for step in grads:
        opt.apply([keras.ops.convert_to_tensor(g) for g in step], variables)
    return [numpy(v) for v in variables]


@pytest.mark.parametrize("mode", ["eager", "jit"])
@pytest.mark.parametrize("name", NATIVE)
def test_keras_convention_against_keras_own(name, mode, request):
    if BACKEND == "torch" and mode == "jit" and not request.config.getoption(TORCH_COMPILE_ALL):
        pytest.skip(
            "Keras's own optimizers under torch.compile: two inductor compiles per row, run with "
            f"{TORCH_COMPILE_ALL} (uniopt's compiled step: test_rows.py)"
        )
    params, grads = _inputs(name)
    ours = getattr(uk, name)(convention="keras")
    got = _run(ours, params, grads, mode)
    want = _run(getattr(keras.optimizers, name)(), params, grads, mode)
    if name in Z_FROM_ZERO.get(BACKEND, {}).get(mode, ()):
        assert max(max_ulp(a, b) for a, b in zip(got, _numpy_run(ours.spec, params, grads), strict=True)) == 0
        got = _numpy_run(ours.spec, params, grads, z_from_zero=True)
    distance = max(max_ulp(a, b) for a, b in zip(got, want, strict=True))
    bound = BOUNDS[BACKEND][mode].get(name, 0)
    assert distance <= bound, (distance, bound)
