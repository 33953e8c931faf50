"""uniopt.tf in ``tf.function`` steps a parameter by its rule's increment (uniopt.tf._binding's
``update_by_increment``: ``assign_sub(d)`` where the rule's new parameter is ``p - d``), without
reading the parameter: bitwise with the NumPy reference, per variable and in stacked groups, and
only where the rule reads the parameter nowhere else."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import tensorflow as tf
from cases import per_convention, shapes_for
from tf_helpers import assert_trajectories, params_and_grads, reference, run_adapter

import uniopt
import uniopt.tf as ut
from uniopt.registry import TABLE
from uniopt.registry import get as get_info
from uniopt.tf import _binding

STEPS = 7
# a group of nine like variables (stacked) and three alone (another shape each, 0-d)
SHAPES = [(4, 3)] * 9 + [(5,), (2, 3, 2), ()]


def _traced_ops(opt, params) -> tuple[Counter, set[str]]:
    """The op types of ``opt``'s traced ``apply_gradients`` on fresh variables of ``params``, and
    the names of the resources the parameters are read from (``ReadVariableOp`` inputs)."""
    variables = [tf.Variable(p) for p in params]
    opt.build(variables)

    @tf.function
    def step(gs):
        opt.apply_gradients(zip(gs, variables, strict=True))

    graph = step.get_concrete_function([tf.constant(np.zeros_like(p)) for p in params]).graph
    inner = {id(outer): placeholder for outer, placeholder in graph.captures}
    handles = {inner[id(v.handle)].name for v in variables if id(v.handle) in inner}
    read = {op.inputs[0].name for op in graph.get_operations() if op.type == "ReadVariableOp"}
    return Counter(op.type for op in graph.get_operations()), read & handles


@pytest.mark.parametrize("mode", ["function", "function_returning"])
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("SGD", {}),
        ("SGD", {"momentum": 0.9, "nesterov": True}),
        ("Adam", {}),
        ("Adam", {"convention": "optax"}),
        ("RAdam", {}),
        ("RAdam", {"convention": "optax"}),
        ("RAdam", {"degenerated_to_sgd": False}),
        ("Adagrad", {"convention": "keras"}),
        ("Lion", {}),
        ("AdamW", {}),
        ("Lamb", {}),
    ],
)
def test_steps_by_increment_are_bitwise_with_the_reference(name, kwargs, mode):
    """Over seven steps (RAdam's first rectified step is the sixth), NaN and infinities in the
    gradients, per variable and stacked: the reference's bits."""
    spec = getattr(uniopt, name)(lr=0.01, **kwargs)
    params, grads = params_and_grads(STEPS, "float32", shapes=shapes_for(spec, SHAPES))
    grads[2][0].reshape(-1)[:3] = [np.nan, np.inf, -np.inf]
    got = run_adapter(ut.from_spec(spec), params, grads, mode)
    info = get_info(name)
    assert_trajectories(
        got, reference(spec, params, grads), ulp=info.tolerance("tf", "function", info.cases[0].desc)
    )


@pytest.mark.parametrize(("info", "case"), [p for p in per_convention("tf")])
def test_every_optimizer_and_convention_in_float64(info, case):
    """Every optimizer and convention, float64, in ``tf.function``: the reference's bits whether
    its rule is stepped by increment or not (both paths run here)."""
    spec = info.make(case)
    params, grads = params_and_grads(4, "float64", shapes=shapes_for(spec, SHAPES))
    got = run_adapter(ut.from_spec(spec), params, grads, "function")
    assert_trajectories(got, reference(spec, params, grads), ulp=info.tolerance("tf", "function", case.desc))


@pytest.mark.parametrize(
    ("name", "kwargs", "method"),
    [
        ("SGD", {}, "AssignSubVariableOp"),
        ("Adam", {}, "AssignSubVariableOp"),
        ("Adam", {"convention": "optax"}, "AssignAddVariableOp"),
        ("RAdam", {}, "AssignSubVariableOp"),
        ("RMSprop", {}, "AssignSubVariableOp"),
        ("Adadelta", {"convention": "keras"}, "AssignAddVariableOp"),
        ("NAdam", {}, "AssignSubVariableOp"),
        ("Lion", {}, "AssignSubVariableOp"),
    ],
)
def test_the_parameters_are_not_read(name, kwargs, method):
    """Each parameter is updated by one ``assign_sub`` (``assign_add``), and none is read."""
    params, _ = params_and_grads(1, "float32", shapes=SHAPES)
    ops, read = _traced_ops(getattr(ut, name)(learning_rate=0.01, **kwargs), params)
    assert read == set()
    assert ops[method] == len(params)


CONVENTIONS = ("uniopt", "torch", "keras", "optax", "official")
# the rules (default hyperparameters) whose new parameter is not the parameter plus an increment
# read nowhere else: weight decay (AdamW's; optax's Lion has 1e-3 by default), LAMB's trust ratio,
# Adafactor's relative step, Muon's weight decay and its Adam step's, Schedule-Free's interpolation,
# torch's NAdam (two additions to the parameter), the official RAdam (the parameter kept, and
# decayed, only on the steps that update)
READ_BESIDE = {"AdamW", "Lamb", "Adafactor", "Muon", "ScheduleFreeAdamW"}
READ_BESIDE_IN = {("Lion", "optax"), ("NAdam", "torch"), ("RAdam", "official")}


def _default_specs():
    for info in TABLE:
        for convention in CONVENTIONS:
            try:
                spec = getattr(uniopt, info.name)(lr=0.01, convention=convention)
            except ValueError:  # no such convention for this optimizer
                continue
            yield pytest.param(spec, id=f"{info.name}-{convention}")


@pytest.mark.parametrize("spec", list(_default_specs()))
def test_which_rules_step_by_increment(spec):
    """Every optimizer and convention with its default hyperparameters: stepped by increment
    (no parameter read) unless its rule reads the parameter beside the increment."""
    name = type(spec).__name__
    params, _ = params_and_grads(1, "float32", shapes=[(6, 5)])
    ops, read = _traced_ops(ut.from_spec(spec), params)
    incremented = ops["AssignSubVariableOp"] + ops["AssignAddVariableOp"]
    if name in READ_BESIDE or (name, spec.convention) in READ_BESIDE_IN:
        assert (incremented, len(read)) == (0, 1)
    else:
        assert (incremented, len(read)) == (1, 0)


def test_large_variables_are_assigned_their_new_value():
    """Past ``INCREMENT_MAX_ELEMENTS`` a variable alone is read and assigned as before."""
    limit = _binding.INCREMENT_MAX_ELEMENTS
    params, _ = params_and_grads(1, "float32", shapes=[(limit,), (limit + 1,)])
    ops, read = _traced_ops(ut.Adam(learning_rate=0.01), params)
    assert ops["AssignSubVariableOp"] == 1 and len(read) == 1


@pytest.mark.parametrize(("name", "kwargs"), [("AdamW", {}), ("Lamb", {}), ("Adafactor", {})])
def test_a_rule_reading_the_parameter_assigns_its_new_value(name, kwargs):
    """Decoupled weight decay (``p * decay - d``), LAMB's trust ratio and Adafactor's relative step
    read the parameter: every parameter is read and assigned, none incremented."""
    params, _ = params_and_grads(1, "float32", shapes=SHAPES)
    ops, read = _traced_ops(getattr(ut, name)(learning_rate=0.01, **kwargs), params)
    assert len(read) == len(params)
    assert ops["AssignSubVariableOp"] == ops["AssignAddVariableOp"] == 0


def test_eagerly_and_under_xla_the_new_value_is_assigned():
    opt = ut.SGD(learning_rate=0.5)
    v = tf.Variable([1.0, 2.0])
    opt.apply_gradients([(tf.constant([1.0, 1.0]), v)])  # eagerly
    np.testing.assert_array_equal(v.numpy(), [0.5, 1.5])
    assert not _binding._increment_wanted(opt._spec, tf.float32, {})

    @tf.function(jit_compile=True)
    def xla_wanted():
        return tf.constant(_binding._increment_wanted(opt._spec, tf.float32, {}))

    assert not bool(xla_wanted())


def _probe(build):
    """``increment_of`` on what ``build(stand_in, d)`` returns (the new parameter and slots), in a
    graph of its own."""
    graph = tf.Graph()
    with graph.as_default():
        stand_in = tf.raw_ops.ZerosLike(x=tf.compat.v1.placeholder(tf.float32, [3]))
        d = tf.compat.v1.placeholder(tf.float32, [3])
        new_param, new_slots = build(stand_in, d)
        return _binding.increment_of(stand_in, new_param, new_slots), d


@pytest.mark.parametrize(
    ("build", "method"),
    [
        (lambda p, d: (p - d, {}), "assign_sub"),
        (lambda p, d: (p + d, {}), "assign_add"),
        (lambda p, d: (d + p, {}), "assign_add"),
        (lambda p, d: (p - d * 2.0, {"m": d * 2.0}), "assign_sub"),
    ],
)
def test_increment_forms(build, method):
    found, _ = _probe(build)
    assert found is not None and found[0] == method


@pytest.mark.parametrize(
    "build",
    [
        lambda p, d: (d - p, {}),  # the parameter subtracted
        lambda p, d: (p + p, {}),  # on both sides
        lambda p, d: (p * 0.5 - d, {}),  # read beside the increment (decoupled weight decay)
        lambda p, d: (p - d * p, {}),  # the increment reads it
        lambda p, d: (p - d, {"m": p - d}),  # a slot computed from the parameter
        lambda p, d: (lambda new: (new, {"m": new}))(p - d),  # a slot is the new value
        lambda p, d: (lambda new: (new, {"m": new * 2.0}))(p - d),  # a slot reads the new value
        lambda p, d: (p - tf.reduce_sum(d), {}),  # a 0-d increment: broadcast
        lambda p, d: (p, {}),  # no step
        lambda p, d: (tf.where(d > 0, p - d, p + d), {}),  # a choice of - and +
        lambda p, d: (tf.where(p > 0, p - d, p - 2.0 * d), {}),  # the choice reads it
    ],
)
def test_not_increment_forms(build):
    found, _ = _probe(build)
    assert found is None


def test_a_choice_of_steps_is_the_choice_of_their_increments():
    """``where(c, p - a, p - b)`` is ``p - where(c, a, b)``, bit for bit, both computed by
    TensorFlow's kernels (signed zeros, infinities, NaN, subnormals)."""
    p = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.5, -2.25, 3e-39], np.float32)
    a = np.array([1.0, -0.0, 2.0, np.inf, 1.0, 0.0, -0.0, 1e-45], np.float32)
    b = np.array([-0.0, 0.0, np.nan, 1.0, 2.0, 1e-45, 5e-39, -1.0], np.float32)
    for keep in (True, False):
        graph = tf.Graph()
        with graph.as_default():
            condition = tf.compat.v1.placeholder(tf.bool, [])
            pa, pb, pp = (tf.compat.v1.placeholder(tf.float32, [8]) for _ in range(3))
            stand_in = tf.raw_ops.ZerosLike(x=pa)
            method, increment = _binding.increment_of(
                stand_in, tf.where(condition, stand_in - pa, stand_in - pb), {}
            )
            assert method == "assign_sub"
            new = pp - increment
            old = tf.where(condition, pp - pa, pp - pb)
            with tf.compat.v1.Session(graph=graph) as session:
                got, expected = session.run([new, old], {condition: keep, pa: a, pb: b, pp: p})
        np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_a_choice_keeping_the_parameter_is_no_increment():
    """``where(c, p - a, p)`` would be ``p - where(c, a, +0)``, which TensorFlow's CPU kernels,
    reading subnormals as zeros, compute as 0 for a subnormal ``p`` the choice keeps: not taken."""
    found, _ = _probe(lambda p, d: (tf.where(tf.constant(True), p - d, p), {}))
    assert found is None
    params, _ = params_and_grads(1, "float32", shapes=SHAPES)
    _, read = _traced_ops(ut.RAdam(learning_rate=0.01, degenerated_to_sgd=False), params)
    assert len(read) == len(params)
