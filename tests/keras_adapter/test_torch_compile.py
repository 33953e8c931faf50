"""torch only: ``model.fit(jit_compile=True)`` (Keras's ``torch.compile`` of its train step) for
``STEPS`` steps, past RAdam's first rectified step: no recompilation once the flags of the step's
scalars stop changing (the step count and learning rate are read on the host outside dynamo's
graphs, never traced as symbols, at a graph break outside Keras's name scope, so that no frame of
Keras's apply runs eagerly), and the parameters and slots bitwise the NumPy reference's (but
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

COMPILED_HERE = ("Adam", "RAdam", "ScheduleFreeAdamW", "Adafactor", "Lamb", "Lion", "Muon")
"""The optimizers compiled here, one of each kind of step the adapter feeds dynamo: host scalars
only (Adam), a branch flag that turns mid-run (RAdam), optimizer variables beside the slots
(ScheduleFreeAdamW), factored slots not shaped like the parameter (Adafactor), norms (Lamb),
``sign`` (Lion) and matrix products (Muon, whose ``torch@compile`` cells wait for ``--full``).
Each costs an inductor compile of Keras's train step: in the CI dry run at 484ebfb the 15
optimizers' first cases took 590 s of test time (Muon 156 s) in a keras-on-torch run of 533 s on
2 workers beside the conformance jobs. The other seven (SGD, Adagrad, RMSprop, AdamW, Adamax,
NAdam, Adadelta: 223 of those 590 s) are elementwise op sequences fed the same way as Adam's;
their numbers on Keras's torch backend are the matrix's keras_torch rows."""
CASES = [p for p in FIRST_PER_OPTIMIZER if p.values[0].name in COMPILED_HERE]
WARM = 7  # RAdam's rectification flag turns at step 6; every flag is constant from here
STEPS = 12  # Keras's train step would hit dynamo's recompile_limit (8) if each step recompiled


@pytest.mark.parametrize(("info", "case"), CASES)
def test_fit_with_jit_compile_does_not_recompile_per_step(info, case):
    import torch

    spec = info.make(case)
    params, grads = params_and_grads(STEPS, "float32", seed=5, shapes=shapes_for(spec, SHAPES))
    want = reference(spec, params, grads)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = fit_feed(uk.from_spec(spec), params, grads[:WARM], jit_compile=True)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # compiled, not run eagerly
    # the step's host call breaks the graph in uniopt's apply, before Keras's apply enters its name
    # scope: a break inside that context manager made dynamo run Keras's apply eagerly
    in_a_context = [r for r in torch._dynamo.utils.counters["unimplemented"] if "ContextWrapping" in r]
    assert not in_a_context, in_a_context[0]
    first = snapshot(model.optimizer, model.ws)
    with torch._dynamo.config.patch(error_on_recompile=True):  # RecompileError at any recompilation
        fit_feed(None, params, grads[WARM:], jit_compile=True, model=model)
    last = snapshot(model.optimizer, model.ws)
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == STEPS
    ulp = tolerance(info, case, compiled=True)
    assert_trajectories([first, last], [want[WARM - 1], want[-1]], ulp=ulp)


def test_the_compiled_optimizers_are_keras_rows():
    assert {p.values[0].name for p in CASES} == set(COMPILED_HERE)


def test_the_update_loop_is_traced_whole_for_many_variables():
    """Twelve variables of twelve shapes: the step's scalars come from the host once, before Keras's
    loop over the variables, so dynamo compiles that loop once and not ``update_step`` per variable
    shape (which passed the recompile limit of 8, an error here: conftest). Bitwise the reference."""
    import torch

    shapes = [(n,) for n in range(2, 8)] + [(n, 3) for n in range(2, 8)]
    params, grads = params_and_grads(4, "float32", seed=7, shapes=shapes)
    spec = uk.Adam(learning_rate=0.01).spec
    torch._dynamo.utils.counters.clear()
    model = fit_feed(uk.from_spec(spec), params, grads, jit_compile=True)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    # measured 4 with 12 or 22 variables (6 with the host call in Keras's name scope); Keras's own Adam 3
    assert 0 < graphs <= 8, graphs
    assert_trajectories([snapshot(model.optimizer, model.ws)], [reference(spec, params, grads)[-1]])


@pytest.mark.parametrize("kind", ["float", "schedule"])
def test_the_learning_rate_getter_traces_without_a_graph_break(kind):
    """``optimizer.learning_rate`` read inside a compiled function (as Keras's train step reads it):
    Keras's getter, traced whole (``fullgraph=True`` raises at any graph break; the getter called
    as ``property.fget`` was one, which dynamo cannot trace), giving what it gives eagerly."""
    import torch

    lr = 0.01 if kind == "float" else keras.optimizers.schedules.ExponentialDecay(0.01, 3, 0.5)
    opt = uk.Adam(learning_rate=lr)
    opt.build([keras.Variable([1.0, 2.0])])
    opt.iterations.assign(5)
    torch._dynamo.reset()
    compiled = torch.compile(lambda: keras.ops.convert_to_tensor(opt.learning_rate) * 1, fullgraph=True)
    want = keras.ops.convert_to_numpy(opt.learning_rate)
    assert keras.ops.convert_to_numpy(compiled()) == want
