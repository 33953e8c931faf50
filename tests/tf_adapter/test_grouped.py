"""uniopt.tf steps groups of like variables stacked in ``tf.function`` (uniopt.tf._binding's
``update_groups``): bitwise against the NumPy reference and the per-variable step, and only where it
should (not eagerly, not under XLA or a tf.distribute strategy, not for a rule of a few ops, not
past an overridden ``update_step``)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from cases import per_convention, shapes_for
from tf_helpers import assert_trajectories, params_and_grads, reference, run_adapter, snapshot

import uniopt
import uniopt.tf as ut
from uniopt.registry import get as get_info
from uniopt.tf import _binding

STEPS = 7
# two groups of nine and eight like variables, and two variables alone (another shape, 0-d)
GROUPED_SHAPES = [(5, 3)] * 9 + [(7,)] * 8 + [(4, 2), ()]

ELEMENTWISE = [p for p in per_convention("tf") if p.values[0].elementwise]


def _inputs(dtype: str, spec=None):
    shapes = GROUPED_SHAPES if spec is None else shapes_for(spec, GROUPED_SHAPES)
    params, grads = params_and_grads(STEPS, dtype, shapes=shapes)
    grads[2][0].reshape(-1)[:3] = [np.nan, np.inf, -np.inf]  # propagate as in NumPy
    grads[3][10].reshape(-1)[:2] = [np.inf, np.nan]
    return params, grads


def _pack_ops(opt, params, grads, strategy=None) -> list[int]:
    """The number of inputs of each ``Pack`` (``tf.stack``) op in the traced step of ``opt`` (run
    by ``strategy`` where one is given)."""
    variables = [tf.Variable(p) for p in params]
    opt.build(variables)

    def apply(gs):
        opt.apply_gradients(zip(gs, variables, strict=True))

    @tf.function
    def step(gs):
        if strategy is None:
            apply(gs)
        else:
            strategy.run(apply, args=(gs,))

    graph = step.get_concrete_function([tf.constant(g) for g in grads[0]]).graph
    return sorted(len(op.inputs) for op in graph.get_operations() if op.type == "Pack")


@pytest.mark.parametrize(("info", "case"), ELEMENTWISE)
def test_stacked_groups_are_bitwise_with_the_reference(info, case):
    """Every elementwise optimizer and convention in ``tf.function``, float32, with NaN and
    infinities in the gradients: the NumPy reference's bits (or the table's stated bound)."""
    spec = info.make(case)
    params, grads = _inputs("float32", spec)
    got = run_adapter(ut.from_spec(spec), params, grads, "function")
    assert_trajectories(got, reference(spec, params, grads), ulp=info.tolerance("tf", "function", case.desc))


@pytest.mark.parametrize("dtype", ["float64", "bfloat16", "float16"])
@pytest.mark.parametrize("name", ["Adam", "Lion", "Adadelta"])
def test_stacked_groups_in_other_dtypes(name, dtype):
    spec = getattr(uniopt, name)(lr=0.01)
    params, grads = _inputs(dtype, spec)
    got = run_adapter(ut.from_spec(spec), params, grads, "function")
    info = get_info(name)
    assert_trajectories(
        got, reference(spec, params, grads), ulp=info.tolerance("tf", "function", info.cases[0].desc)
    )


def test_groups_are_stacked_where_the_rule_is_large_enough():
    params, grads = _inputs("float32")
    # Adam's rule makes 16 ops: both groups are stacked (gradient and two slots each; the parameters
    # are stepped by their increment, not read: update_by_increment), the two variables alone are not
    assert _pack_ops(ut.Adam(learning_rate=0.01), params, grads) == [8] * 3 + [9] * 3
    # AdamW's rule reads the parameter beside its increment (decoupled weight decay): stacked too
    assert _pack_ops(ut.AdamW(learning_rate=0.01), params, grads) == [8] * 4 + [9] * 4
    # SGD without momentum makes two (a product and a difference): per variable, as before
    assert _binding.GROUP_MIN_RULE_OPS > 2
    assert _pack_ops(ut.SGD(learning_rate=0.01), params, grads) == []
    assert _pack_ops(ut.SGD(learning_rate=0.01, momentum=0.9), params, grads) == [8] * 2 + [9] * 2
    # Adafactor is not elementwise
    assert _pack_ops(ut.Adafactor(learning_rate=0.01), params, grads) == []


def test_too_few_like_variables_are_stepped_one_by_one():
    params, grads = _inputs("float32")
    keep = [p for p, s in zip(params, GROUPED_SHAPES, strict=True) if s != (5, 3)][:-2]  # the (7,) group
    keep_grads = [[g for g, s in zip(gs, GROUPED_SHAPES, strict=True) if s == (7,)] for gs in grads]
    assert len(keep) == _binding.GROUP_MIN_VARIABLES == 8
    assert _pack_ops(ut.Adam(learning_rate=0.01), keep, keep_grads) == [8] * 3
    assert _pack_ops(ut.Adam(learning_rate=0.01), keep[:7], [g[:7] for g in keep_grads]) == []


def test_groups_of_large_variables_are_stepped_one_by_one(monkeypatch):
    """Above GROUP_MAX_ELEMENTS elements a variable's group is stepped per variable (stacking the
    16 float32 variables of 1260x1250 of the benchmark's large set made Adam's tf.function step
    several times slower); the benchmark's many-small shape, (20, 25), is stacked."""
    assert _binding.GROUP_MAX_ELEMENTS is not None
    assert 20 * 25 <= _binding.GROUP_MAX_ELEMENTS < 1260 * 1250
    params, grads = _inputs("float32")
    monkeypatch.setattr(_binding, "GROUP_MAX_ELEMENTS", 14)  # the (5, 3) group's 15 are too many
    assert _pack_ops(ut.Adam(learning_rate=0.01), params, grads) == [8] * 3
    monkeypatch.setattr(_binding, "GROUP_MAX_ELEMENTS", 15)
    assert _pack_ops(ut.Adam(learning_rate=0.01), params, grads) == [8] * 3 + [9] * 3
    monkeypatch.setattr(_binding, "GROUP_MAX_ELEMENTS", None)
    assert _pack_ops(ut.Adam(learning_rate=0.01), params, grads) == [8] * 3 + [9] * 3


def _step_with(grads, n, signature=None):
    """``n`` (8, 8) variables of zeros, one uniopt.tf.Adam step in ``tf.function`` with ``grads``;
    the first variable after it."""
    variables = [tf.Variable(np.zeros((8, 8), np.float32)) for _ in range(n)]
    opt = ut.Adam(learning_rate=0.01)
    step = tf.function(
        lambda gs: opt.apply_gradients(zip(gs, variables, strict=True)), input_signature=signature
    )
    step(grads)
    return variables[0].numpy()


@pytest.mark.parametrize("n", [_binding.GROUP_MIN_VARIABLES, 1])
def test_a_gradient_of_another_or_unknown_static_shape_is_stepped_as_alone(n):
    """A gradient whose static shape is not its variable's is not stacked: ``update_step`` reshapes
    it or refuses it, whether or not the variable has like ones (stacked, a (1, 8) gradient of an
    (8, 8) variable was broadcast over its rows, a (64,) one refused, and a gradient of unknown
    rank failed in ``tf.unstack``)."""
    ones = np.ones((8, 8), np.float32)
    alone = _step_with([tf.constant(ones)], 1)
    flat = _step_with([tf.constant(ones.reshape(64))] * n, n)
    assert np.array_equal(flat, alone)  # (64,): reshaped to the variable's shape
    unknown = _step_with([tf.constant(ones)] * n, n, signature=[[tf.TensorSpec(None, tf.float32)] * n])
    assert np.array_equal(unknown, alone)
    with pytest.raises(ValueError, match="Cannot reshape a tensor with 8 elements"):
        _step_with([tf.constant(ones[:1])] * n, n)  # (1, 8): refused, never broadcast


def test_eager_and_xla_steps_are_not_stacked(monkeypatch):
    """The grouping runs in ``tf.function`` only; eagerly and under XLA the per-variable step runs
    (and gives the reference's bits)."""
    calls = []
    original = _binding._update_stacked

    def spy(*args):
        calls.append(len(args[2]))
        return original(*args)

    monkeypatch.setattr(_binding, "_update_stacked", spy)
    spec = uniopt.Adam(lr=0.01)
    params, grads = _inputs("float32")
    for mode in ("eager", "xla"):
        got = run_adapter(ut.from_spec(spec), params, grads[:3], mode)
        assert_trajectories(got, reference(spec, params, grads[:3]))
    assert calls == []
    run_adapter(ut.from_spec(spec), params, grads[:1], "function")
    assert calls == [9, 8]


def test_not_stacked_under_a_distribution_strategy():
    params, grads = _inputs("float32")
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        assert _pack_ops(ut.Adam(learning_rate=0.01), params, grads, strategy) == []
    assert _pack_ops(ut.Adam(learning_rate=0.01), params, grads) != []


def test_an_overridden_update_step_is_called_for_every_variable():
    calls = []

    class Counted(ut.Adam):
        def update_step(self, gradient, variable, learning_rate):
            calls.append(variable.shape)
            return super().update_step(gradient, variable, learning_rate)

    params, grads = _inputs("float32")
    spec = uniopt.Adam(lr=0.01)
    got = run_adapter(Counted(learning_rate=0.01), params, grads[:2], "function")
    assert len(calls) == len(GROUPED_SHAPES)  # traced once
    assert_trajectories(got, reference(spec, params, grads[:2]))


def test_state_dtypes_and_weight_decay_exclusion_group_apart():
    """A bfloat16 first moment, and variables excluded from weight decay (another spec, so other
    groups): the stacked step gives the eager per-variable step's bits."""
    params, grads = _inputs("float32")

    def run(mode, exclude):
        opt = ut.AdamW(learning_rate=0.01, weight_decay=0.1, state_dtypes={"exp_avg": "bfloat16"})
        variables = [tf.Variable(p, name=f"v{i}") for i, p in enumerate(params)]
        if exclude:
            opt.exclude_from_weight_decay(var_list=variables[:4] + variables[9:11])
        opt.build(variables)

        def step(gs):
            opt.apply_gradients(zip(gs, variables, strict=True))

        run_step = tf.function(step) if mode == "function" else step
        out = []
        for gs in grads:
            run_step([tf.constant(g) for g in gs])
            out.append(snapshot(opt, variables))
        assert opt.slots(variables[0])["exp_avg"].dtype == tf.bfloat16
        return out

    eager = run("eager", exclude=True)
    assert_trajectories(run("function", exclude=True), eager)
    decayed = run("function", exclude=False)[-1][0]
    for i in range(len(params)):  # the excluded variables stepped without decay, the others with
        excluded = i < 4 or 9 <= i < 11
        assert np.array_equal(decayed[i], eager[-1][0][i], equal_nan=True) != excluded, i


def test_a_variable_listed_twice_is_stepped_twice():
    """``apply_gradients`` with one variable in two pairs steps it twice, in order, eagerly and in
    ``tf.function`` (as Keras's optimizers do): it is left out of its group."""
    params, grads = _inputs("float32")

    def run(mode):
        opt = ut.Adam(learning_rate=0.1)
        variables = [tf.Variable(p) for p in params]
        opt.build(variables)

        def step(gs):
            pairs = [*zip(gs, variables, strict=True), (gs[1], variables[0])]
            opt.apply_gradients(pairs)

        run_step = tf.function(step) if mode == "function" else step
        out = []
        for gs in grads[:3]:
            run_step([tf.constant(g) for g in gs])
            out.append(snapshot(opt, variables))
        return out

    eager = run("eager")
    assert_trajectories(run("function"), eager)
    alone = run_adapter(ut.Adam(learning_rate=0.1), params, grads[:3], "eager")
    assert not np.array_equal(eager[-1][0][0], alone[-1][0][0])  # the second step happened
    assert np.array_equal(eager[-1][0][1], alone[-1][0][1])
