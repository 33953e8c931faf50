"""Every row of the table with Keras names, one case per optimizer and convention, a few steps on this
process's Keras backend: bitwise against the NumPy reference (``spec.update``), eagerly
(``optimizer.apply``) and compiled (``model.fit(jit_compile=True)``; on JAX also ``jax.jit`` of
``stateless_apply``: test_jax_jit.py), but where the table states a bound (Muon's products by the backend's
matmul)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from cases import PER_CONVENTION, shapes_for
from keras_helpers import BACKEND, REGISTRY, TORCH_COMPILE_ALL, fit_feed, snapshot, tolerance
from trajectories import SHAPES, assert_trajectories, params_and_grads, reference

import uniopt.keras as uk

STEPS = 7  # past RAdam's first rectified step (6)

ROWS = [p for p in PER_CONVENTION if p.values[0].keras is not None]
FIRST_PER_OPTIMIZER = [
    p for i, p in enumerate(ROWS) if all(q.values[0].name != p.values[0].name for q in ROWS[:i])
]
"""The first case (convention) of each optimizer of :data:`ROWS`."""


def _inputs(spec, dtype="float32", nonfinite=False):
    params, grads = params_and_grads(STEPS, dtype, seed=3, shapes=shapes_for(spec, SHAPES))
    if nonfinite:  # NaN, +Inf and -Inf at step 3 propagate exactly as in NumPy
        grads[2][0].reshape(-1)[:3] = [np.nan, np.inf, -np.inf]
    return params, grads


def _compiled_refusal(info, case):
    """Why this backend's compiled mode refuses the row's case (TensorFlow's XLA: scalars from the
    host)."""
    backend, _, jit = REGISTRY
    return info.skip_reason(backend, jit, case.desc) if BACKEND == "tensorflow" else None


@pytest.mark.parametrize(("info", "case"), ROWS)
def test_eager_apply_is_the_numpy_reference(info, case):
    spec = info.make(case)
    params, grads = _inputs(spec, nonfinite=True)
    opt = uk.from_spec(spec)
    variables = [keras.Variable(p) for p in params]
    opt.build(variables)
    got = []
    for step in grads:
        with np.errstate(all="ignore"):
            opt.apply([keras.ops.convert_to_tensor(g) for g in step], variables)
        got.append(snapshot(opt, variables))
    assert_trajectories(got, reference(spec, params, grads), ulp=tolerance(info, case, compiled=False))


def _torch_compile_skip(info, case, every: bool) -> str | None:
    """Why this row is not compiled here on torch, or ``None``. Each compile of Keras's train step
    costs about 20 s of inductor (22 to 25 s in the CI dry run of 2026-12-04, 53 rows: 13 minutes
    of a keras-on-torch run). The 7 rows of test_torch_compile.py compile there, over 12 steps.
    Of the others, the first case of each optimizer compiles here; its other conventions are other
    op sequences fed to dynamo by the same Keras code: each traces into one graph
    (tests/torch_adapter/test_compile.py, every convention) and compiles bitwise in the conformance
    matrix's torch@compile; ``--torch-compile-all`` compiles them here too. Muon's torch convention
    compiles here always: the matrix compiles Muon only with ``--full``, and inductor drops its
    bfloat16 roundings without ``emulate_precision_casts`` (conftest; docs/keras.md)."""
    from test_torch_compile import CASES

    if (info.name, case.desc) == ("Muon", "torch"):
        return None
    if any(p.values == (info, case) for p in CASES):
        return "compiled in test_torch_compile.py, over 12 steps with no recompilation"
    if not every and not any(p.values == (info, case) for p in FIRST_PER_OPTIMIZER):
        return (
            "another convention of an optimizer compiled here (its rule traces into one graph: "
            "tests/torch_adapter/test_compile.py; torch@compile in the matrix); --torch-compile-all"
        )
    return None


@pytest.mark.parametrize(("info", "case"), ROWS)
def test_fit_with_jit_compile_is_the_numpy_reference(info, case, request):
    """``model.fit(jit_compile=True)`` of a model whose gradients are the inputs (keras_helpers'
    FeedModel): TensorFlow's XLA, JAX's jit, torch.compile (each test compiling afresh: conftest;
    on torch one case per optimizer unless --torch-compile-all: :func:`_torch_compile_skip`)."""
    if BACKEND == "torch":
        why = _torch_compile_skip(info, case, request.config.getoption(TORCH_COMPILE_ALL))
        if why is not None:
            pytest.skip(why)
    spec = info.make(case)
    why = _compiled_refusal(info, case)
    params, grads = _inputs(spec)
    opt = uk.from_spec(spec)
    if why is not None:
        with pytest.raises(ValueError, match="jit_compile"):
            fit_feed(opt, params, grads, jit_compile=True)
        return
    model = fit_feed(opt, params, grads, jit_compile=True)
    want = reference(spec, params, grads)[-1]
    got = snapshot(model.optimizer, model.ws)
    assert_trajectories([got], [want], ulp=tolerance(info, case, compiled=True))
