"""torch only: ``model.fit(jit_compile=True)`` (Keras's ``torch.compile`` of its train step) for
``STEPS`` steps, past RAdam's first rectified step: no recompilation once the flags of the step's
scalars stop changing (the step count and learning rate are read on the host outside dynamo's
graphs, never traced as symbols), and the parameters and slots bitwise the NumPy reference's (but
where the table states a bound: Muon's products by torch's matmul)."""

from __future__ import annotations

import keras
import pytest
from cases import shapes_for
from keras_helpers import BACKEND, fit_feed, snapshot, tolerance
from test_rows import FIRST_PER_OPTIMIZER
from trajectories import SHAPES, assert_trajectories, params_and_grads, reference

import uniopt.keras as uk

if BACKEND != "torch":
    pytest.skip("torch.compile: Keras's torch backend (this run: another)", allow_module_level=True)

WARM = 7  # RAdam's rectification flag turns at step 6; every flag is constant from here
STEPS = 12  # Keras's train step would hit dynamo's recompile_limit (8) if each step recompiled


@pytest.mark.parametrize(("info", "case"), FIRST_PER_OPTIMIZER)
def test_fit_with_jit_compile_does_not_recompile_per_step(info, case):
    import torch

    spec = info.make(case)
    params, grads = params_and_grads(STEPS, "float32", seed=5, shapes=shapes_for(spec, SHAPES))
    want = reference(spec, params, grads)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = fit_feed(uk.from_spec(spec), params, grads[:WARM], jit_compile=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # compiled, not run eagerly
    first = snapshot(model.optimizer, model.ws)
    with torch._dynamo.config.patch(error_on_recompile=True):  # RecompileError at any recompilation
        fit_feed(None, params, grads[WARM:], jit_compile=True, model=model)
    last = snapshot(model.optimizer, model.ws)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == STEPS
    ulp = tolerance(info, case, compiled=True)
    assert_trajectories([first, last], [want[WARM - 1], want[-1]], ulp=ulp)
