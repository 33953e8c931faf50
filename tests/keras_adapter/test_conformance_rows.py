"""JAX and torch only: the conformance rows of this process's Keras backend (``keras_jax``,
``keras_torch``: uniopt.keras's optimizers, conformance/backend_keras_jax.py and
backend_keras_torch.py) read back what they run. A batch of cells run together in each mode (one
optimizer per case over its cells' parameters, stacked where the optimizer is elementwise; the
mixed shapes, 0-d and empty; a slot stored narrower; a slot kept in no variable) gives every cell
the NumPy reference's parameters and slots at every step, bit for bit, but where the table bounds
the kernels the row runs (Muon's products by the backend's matmul). The reference is the core's
``update`` on NumPy, not the runner."""

from __future__ import annotations

import pytest
from keras_helpers import BACKEND
from trajectories import bits_equal, max_ulp

if BACKEND not in ("jax", "torch"):
    pytest.skip(
        "the keras_jax and keras_torch conformance rows: Keras's JAX and torch backends (this run: "
        "another; TensorFlow's rows are uniopt.tf's, tests/tf_adapter)",
        allow_module_level=True,
    )

from conformance import backends  # backends before native: the harness's import order
from conformance.cells import Cell
from conformance.run import run_batch
from uniopt.registry import get

ROW = {"jax": "keras_jax", "torch": "keras_torch"}[BACKEND]
STEPS = 7  # past RAdam's first rectified step (6)

BATCHES = [
    # two cases of an elementwise optimizer, their parameters stacked, and the mixed shapes
    *(
        [
            *(
                Cell("Adam", case, stream, dtype, STEPS)
                for case in ("default", "keras")
                for stream in ("normal", "huge")
            ),
            Cell("Adam", "default", "mixed_shapes", dtype, STEPS),
        ]
        for dtype in ("float32", "bfloat16")
    ),
    [Cell("Adam", "mu_bfloat16", "normal", "float32", STEPS)],  # exp_avg stored in bfloat16
    # Muon: the keras convention's velocity of a Muon-stepped matrix is kept in no variable
    [Cell("Muon", case, "normal", "float32", STEPS) for case in ("exact", "keras")],
]


@pytest.mark.parametrize("mode", [m for m in backends.get(ROW).modes if m != "native"])
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"{b[0].optimizer}-{b[0].case}-{b[0].dtype}")
def test_the_rows_batch_is_the_numpy_reference(batch, mode):
    info = get(batch[0].optimizer)
    got = run_batch(backends.get(ROW).make_runner(mode), batch)
    want = run_batch(backends.get("numpy").make_runner("eager"), batch)
    for cell in batch:
        bound = info.tolerance(ROW, mode, cell.case, cell.stream, backends.bounds_of(ROW, mode))
        assert bound == 0 or (cell.optimizer, cell.case) == ("Muon", "keras"), (cell, bound)
        assert set(got[cell]) == set(want[cell]), cell
        for name, expected in want[cell].items():
            assert expected.shape[0] == STEPS + 1, (cell, name)
            assert got[cell][name].dtype == expected.dtype, (cell, name)
            if bound == 0:
                assert bits_equal(got[cell][name], expected), (cell, name, max_ulp(got[cell][name], expected))
            else:
                assert max_ulp(got[cell][name], expected) <= bound, (cell, name)
