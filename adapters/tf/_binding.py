"""The TensorFlow binding of the uniopt Keras optimizers (:mod:`uniopt.keras._binding` says what a
binding provides).

The rule runs on :mod:`uniopt.tf.xp`; the step's scalars come from :mod:`uniopt.tf._scalars`
(host eagerly; a table, ``tf.numpy_function`` or, under XLA, affine tables when traced); an
``tf.IndexedSlices`` gradient of a spec whose sparse rule is ``"rows"`` updates only its rows;
a spec with a history calls the host once per step (``tf.numpy_function`` when traced); under XLA,
which cannot call the host, its float64 formula runs in-graph (:func:`history_in_graph`). No update
math lives here.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from uniopt import Spec
from uniopt.keras._binding import assign_each, float64_history_variables
from uniopt.sparse import sparse_rule

from . import xp
from ._scalars import has_terms, in_graph_scalars, in_xla_context, scalar_source

EXACT_LR_DTYPE = "float64"
"""A float learning rate is held in a float64 variable (Keras's own is float32)."""
MODE_DTYPE = "int64"
"""The dtype of Schedule-Free's ``train_mode`` variable."""


def as_array(x: Any, dtype: Any = None) -> tf.Tensor:
    """A tensor of ``x`` (a Keras or TF variable, a tensor, ``IndexedSlices`` densified), cast to
    ``dtype``."""
    tensor = tf.convert_to_tensor(x)
    return tensor if dtype is None else tf.cast(tensor, dtype)


def zeros(shape: Any, dtype: Any) -> tf.Tensor:
    return tf.zeros(shape, dtype=dtype)


def dtype_name(dtype: Any) -> str | None:
    """``tf.as_dtype(dtype).name`` (a name, a ``tf.DType`` or a NumPy dtype); ``None`` if none."""
    try:
        return tf.as_dtype(dtype).name
    except TypeError:
        return None


def is_variable(value: Any) -> bool:
    return isinstance(value, tf.Variable)


def namespace(optimizer: Any, array: Any) -> Any:
    """:mod:`uniopt.tf.xp`, eagerly, in ``tf.function`` and under XLA."""
    return xp


def slot_namespace() -> Any:
    return xp


def eager() -> bool:
    return tf.executing_eagerly()


def trace_key() -> Any:
    """What keys a traced step's cached scalars: the graph (``None`` eagerly)."""
    return None if tf.executing_eagerly() else id(tf.compat.v1.get_default_graph())


SCALARS_BEFORE_THE_LOOP = False  # each update_step takes its scalars (no before_update_loop)


def host_calls_refused() -> bool:
    """XLA cannot call the host (``tf.numpy_function``)."""
    return in_xla_context()


def xla_refusal(optimizer: Any, specs: list[Spec]) -> str | None:
    """Why ``specs``' scalars cannot be computed in the XLA function being traced (``None`` where
    they can, or where nothing is traced for XLA); asked before anything is built or changed."""
    if not in_xla_context():
        return None
    owner = f"uniopt.tf.{type(optimizer).__name__}"
    for spec in specs:
        why = scalar_source(spec, "float64").xla_refusal(owner)
        if why is not None:
            return why
    return None


def run_if(condition: Any, body: Callable[[], None]) -> None:
    """``body()`` (assignments) where ``condition`` holds: a ``tf.cond`` when traced."""
    if tf.executing_eagerly():
        if bool(condition):
            body()
        return

    def then() -> tf.Tensor:
        body()
        return tf.constant(True)

    tf.cond(condition, then, lambda: tf.constant(False))


def scalars(optimizer: Any, spec: Spec, dtype: str, learning_rate: Any, exact_lr: bool) -> Any:
    """The spec's scalars for this step (:mod:`uniopt.tf._scalars`): eagerly from the host; traced,
    cached per graph, spec, dtype and learning-rate tensor within one ``apply``. Under
    ``convention="keras"`` the learning rate goes through float32 first."""
    del exact_lr  # the float64 variable holds the float exactly
    source = scalar_source(spec, dtype)
    as_keras = tf.float32 if spec.convention == "keras" else None
    if tf.executing_eagerly():
        step = int(keras.ops.convert_to_numpy(optimizer.iterations)) + 1
        lr = tf.cast(learning_rate, as_keras) if as_keras else learning_rate
        return source.eager(step, float(keras.ops.convert_to_numpy(lr)))
    graph = tf.compat.v1.get_default_graph()
    key = (id(graph), spec, dtype, id(learning_rate))
    hit = optimizer._uniopt_cache.entries.get(key)
    if hit is not None and hit[0] is graph:
        return hit[1]
    step = tf.cast(tf.convert_to_tensor(optimizer.iterations), tf.int64) + 1
    # a Python number (what a callable learning rate returns) as float64, the float it is, as the
    # eager step reads it (tf.convert_to_tensor would round it to float32 first)
    lr = learning_rate if tf.is_tensor(learning_rate) else tf.constant(learning_rate, tf.float64)
    lr = tf.cast(lr, as_keras) if as_keras else lr
    values = source.traced(step, lr, type(optimizer).__name__)
    optimizer._uniopt_cache.entries[key] = (graph, values)
    return values


GROUP_MIN_VARIABLES = 8
"""The fewest variables of one group (:func:`update_groups`) stepped stacked."""
GROUP_MAX_ELEMENTS: int | None = 1 << 11
"""The most elements a variable of a group stepped stacked may have (``None``: no limit). Stacking
saves TensorFlow's cost per op and per variable, which only small variables notice; on larger ones
each op's cost is its arithmetic, and stacking adds a copy of every array and temporaries the size
of the whole group. Measured in ``tf.function`` (TensorFlow 2.21, 2-core AMD EPYC, Zen 3), float32,
ms a step, stacked against per variable: Adam on 256 variables of 32x32 12.7 and 16.6, 64 of 32x64
2.8 and 3.1, 128 of 45x45 8.0 and 7.5, 64 of 64x64 5.0 and 4.8, 16 of 256x256 9.1 and 5.5, 16 of
1260x1250 (the benchmark's large set) 497 and 122; Lion, whose rule has more ops, on 128 of 45x45
5.5 and 5.8, 64 of 64x64 4.6 and 4.0. Until 2026-12-07 there was no limit, and the large set's
``tf.function`` step was stacked."""
GROUP_MIN_RULE_OPS = 4
"""The fewest TensorFlow ops (constants aside) a rule must make for its group to be stepped
stacked: below, the stacking and unstacking cost more than the ops they save. Measured in
``tf.function`` on 2000 float32 variables of shape (20, 25), TensorFlow 2.21, 2-core Intel Xeon,
per-variable against stacked, ms a step: SGD (2 ops) 14.4 and 15.5, SGD with momentum (5) 29.5
and 28.2, Adagrad (10) 30.8 and 28.8, Adamax (10) 49.9 and 41.4, RMSprop (12) 36.7 and 29.7, Adam
(16) 52.7 and 43.0, NAdam (19) 59.2 and 40.2, Lion (18, the bit-level ``sign``) 50.5 and 33.9,
Adadelta (22) 62.5 and 44.0 (docs/tf.md, "Many small variables")."""


def update_groups(
    optimizer: Any, distribution: Any, grads_and_vars: list[Any], learning_rate: Any
) -> list[Any]:
    """Step together, in ``tf.function``, the variables whose rule can run on them stacked, and
    return the ``(gradient, variable)`` pairs left to Keras's loop of ``update_step``.

    TensorFlow runs a traced step op by op, and on many small variables the cost per op, not the
    arithmetic, is the step (docs/tf.md, "Many small variables"). Variables of one group share the
    spec (:meth:`~UnioptOptimizer._spec_for`), dtype, static shape and slot dtypes, have a dense
    gradient and are listed once; the spec is elementwise (:attr:`uniopt.Spec.elementwise`), so
    its rule on the stacked arrays (``tf.stack``) computes each element with the same ops as on
    each variable: the same bits. The new values are unstacked and assigned as ``update_step``
    assigns them.
    Only in ``tf.function`` without XLA, under no ``tf.distribute`` strategy, with
    ``update_step`` not overridden, for groups of at least :data:`GROUP_MIN_VARIABLES` variables of
    at most :data:`GROUP_MAX_ELEMENTS` elements each whose rule makes at least
    :data:`GROUP_MIN_RULE_OPS` ops; the other variables go to the loop."""
    from uniopt.keras.optimizers import UnioptOptimizer

    if (
        tf.executing_eagerly()
        or in_xla_context()
        or tf.distribute.has_strategy()
        or distribution is not tf.distribute.get_strategy()
        or type(optimizer).update_step is not UnioptOptimizer.update_step
    ):
        return grads_and_vars
    groups: dict[Any, list[Any]] = {}
    rest = []
    listed = Counter(id(variable) for _, variable in grads_and_vars)
    for gradient, variable in grads_and_vars:
        # a variable listed twice is stepped twice, in order, by the loop (stacked, both steps
        # would read its old value and one assignment would overwrite the other)
        slots = optimizer.slots(variable)
        key = _group_key(optimizer, gradient, variable, slots) if listed[id(variable)] == 1 else None
        if key is None:
            rest.append((gradient, variable))
        else:
            groups.setdefault(key, []).append((gradient, variable, slots))
    for key, members in groups.items():
        too_large = GROUP_MAX_ELEMENTS is not None and math.prod(key[2]) > GROUP_MAX_ELEMENTS
        if (
            len(members) < GROUP_MIN_VARIABLES
            or too_large
            or not _update_stacked(optimizer, key, members, learning_rate)
        ):
            rest.extend((gradient, variable) for gradient, variable, _ in members)
    return rest


def _group_key(optimizer: Any, gradient: Any, variable: Any, slots: dict[str, Any]) -> tuple[Any, ...] | None:
    """What variables stepped together share (:func:`update_groups`): the spec, the dtype, the
    shape and each slot's name and dtype; ``None`` for one stepped alone: a sparse or missing
    gradient, a spec that is not elementwise, a shape not fully known, a gradient whose static
    shape is not the variable's (unknown, or another: ``update_step`` reshapes it or refuses it
    as for a variable alone), a slot (of ``slots``, the variable's) without a variable or not
    shaped like the variable."""
    spec = optimizer._spec_for(variable)
    if not type(spec).elementwise or not tf.is_tensor(gradient) or isinstance(gradient, tf.IndexedSlices):
        return None
    shape = variable.shape
    if not shape.is_fully_defined() or gradient.shape != shape:
        # a gradient of another or an unknown static shape takes update_step's own handling (a
        # reshape, or its error): stacked, it would broadcast or fail in tf.stack instead
        return None
    if any(v is None or v.shape != shape for v in slots.values()):
        return None
    slot_dtypes = tuple((name, tf.as_dtype(v.dtype)) for name, v in slots.items())
    return spec, tf.as_dtype(variable.dtype), tuple(shape.as_list()), slot_dtypes


def _update_stacked(optimizer: Any, key: tuple[Any, ...], members: list[Any], learning_rate: Any) -> bool:
    """One group's step (:func:`update_groups`; ``key`` from :func:`_group_key`, ``members`` its
    ``(gradient, variable, slots)``); ``False``, with nothing built, where its rule makes fewer
    than :data:`GROUP_MIN_RULE_OPS` ops (:func:`_rule_ops`)."""
    spec, dtype, _, slot_dtypes = key
    sc = optimizer._scalars(spec, dtype.name, learning_rate)
    if _rule_ops(spec, sc, dtype, slot_dtypes) < GROUP_MIN_RULE_OPS:
        return False
    grad = tf.stack([as_array(g, dtype) for g, _, _ in members])
    slots = {name: tf.stack([as_array(s[name]) for _, _, s in members]) for name, _ in slot_dtypes}
    first_slots = members[0][2]
    # the parameters not read where the rule allows it (update_by_increment)
    found = None
    if _increment_wanted(spec, dtype, first_slots):
        found = _rule_by_increment(spec, dtype, first_slots, grad, slots, sc)
    if found is None:
        param = tf.stack([as_array(v) for _, v, _ in members])
        value, new_slots = spec.rule(param, grad, slots, sc, xp)
        assign = optimizer.assign
    else:
        method, value, new_slots = found
        assign = getattr(optimizer, method)
    for name, new in new_slots.items():
        for (_, _, s), part in zip(members, tf.unstack(new), strict=True):
            optimizer.assign(s[name], part)
    for (_, variable, _), part in zip(members, tf.unstack(value), strict=True):
        assign(variable, part)
    return True


_RULE_OPS: dict[Any, int] = {}


def _rule_ops(spec: Spec, sc: Any, dtype: tf.DType, slot_dtypes: tuple[Any, ...]) -> int:
    """How many ops (constants and inputs aside) ``spec``'s rule makes on one variable of ``dtype``
    with slots of ``slot_dtypes``: counted once per spec and dtypes, by tracing the rule on
    placeholders in a graph of its own that is never run (``sc``, the step's scalars, captured)."""
    key = (spec, dtype, slot_dtypes)
    if key not in _RULE_OPS:
        from tensorflow.python.framework.func_graph import FuncGraph

        probe = FuncGraph("uniopt_rule_ops")
        with probe.as_default():
            param = tf.compat.v1.placeholder(dtype, [1])
            grad = tf.compat.v1.placeholder(dtype, [1])
            slots = {name: tf.compat.v1.placeholder(d, [1]) for name, d in slot_dtypes}
            spec.rule(param, grad, slots, sc, xp)
        _RULE_OPS[key] = sum(op.type not in ("Const", "Placeholder") for op in probe.get_operations())
    return _RULE_OPS[key]


# -- a parameter updated by its increment (tf.function without XLA) ------------------------------

INCREMENT_MAX_ELEMENTS = 1 << 11
"""The most elements a variable stepped alone by its increment (:func:`update_by_increment`) may
have; a stacked group's variables have at most :data:`GROUP_MAX_ELEMENTS` each. The increment saves
ops, which only small variables notice; on large ones the in-place ``AssignSubVariableOp`` was
slower than the ``Sub`` and assignment it replaces: measured in ``tf.function`` (TensorFlow 2.21,
2-core AMD EPYC, Zen 3, float32, interleaved), Adam on 8 variables of 1260x1250 and 8 of 1,575,000
elements, medians of two runs 229 and 164 ms a step by increment against 207 and 148 ms."""

_INCREMENT_FITS: dict[Any, bool] = {}
"""Per spec, dtype and slot dtypes: whether its rule's new parameter was found to be the parameter
plus or minus an increment (:func:`increment_of`); a spec not yet tried is tried."""


def _increment_key(spec: Spec, dtype: Any, slots: dict[str, Any]) -> tuple[Any, ...]:
    return spec, tf.as_dtype(dtype), tuple((name, tf.as_dtype(v.dtype)) for name, v in slots.items())


def _increment_wanted(spec: Spec, dtype: Any, slots: dict[str, Any]) -> bool:
    """Whether to run the rule on a stand-in for the parameter: traced without XLA, every slot a
    variable, the spec not already found to read its parameter otherwise."""
    if tf.executing_eagerly() or in_xla_context() or any(v is None for v in slots.values()):
        return False
    return _INCREMENT_FITS.get(_increment_key(spec, dtype, slots), True)


def _stand_in(grad: tf.Tensor) -> tf.Tensor:
    """Zeros like ``grad`` from a ``ZerosLike`` op, which, unlike ``tf.zeros_like`` of a static
    shape, is no constant of the graph: the rule's ops see an array, not a constant (the guards of
    :mod:`uniopt.tf.xp` treat constants apart), and the graph holds no array of zeros."""
    return tf.raw_ops.ZerosLike(x=grad)


def increment_of(
    stand_in: tf.Tensor, new_param: tf.Tensor, new_slots: dict[str, Any]
) -> tuple[str, tf.Tensor] | None:
    """``("assign_sub", d)`` where the rule, run on ``stand_in`` for the parameter, returned
    ``stand_in - d``, ``("assign_add", d)`` for ``stand_in + d`` or ``d + stand_in``, and read the
    stand-in nowhere else; ``None`` otherwise (the parameter is then assigned its new value).

    A choice between two such results (``where(c, p - a, p - b)``, RAdam's rectified and
    unrectified steps traced) is the choice between their increments, ``p - where(c, a, b)``, built
    here from the rule's own ``a`` and ``b`` (a select copies bits). A branch that is ``p`` itself
    (RAdam with ``degenerated_to_sgd=False``) is not taken as ``p - 0``: TensorFlow's CPU kernels
    treat subnormal inputs as zeros, so ``p - 0`` would flush a subnormal ``p`` the choice keeps.
    Nothing else may read the stand-in or the ops between it and the new parameter (no slot is
    computed from them), and ``d`` is shaped and typed like the stand-in.

    ``variable.assign_sub(d)`` computes ``variable - d`` elementwise (TensorFlow's
    ``AssignSubVariableOp``, ``AssignAddVariableOp`` for ``+``: one IEEE operation per element, as
    the ``Sub`` and ``AddV2`` ops they replace, on the same CPU threads): the same bits as assigning
    the rule's new parameter, without reading the parameter into the graph, computing the new value
    apart and assigning it."""
    seen: list[Any] = []
    found = _increment(stand_in, new_param, seen)
    if found is None:
        return None
    ops = {id(op) for op in seen}
    for op in seen:
        if any(id(c) not in ops for c in op.outputs[0].consumers()):
            return None
    if any(id(c) not in ops for c in stand_in.consumers()):
        return None
    outputs = {t.ref() for op in seen for t in op.outputs}
    if any(tf.is_tensor(v) and v.ref() in outputs for v in new_slots.values()):
        return None
    kind, increment = found
    if increment.dtype != stand_in.dtype or increment.shape != stand_in.shape:
        return None
    return ("assign_sub" if kind == "Sub" else "assign_add"), increment


def _increment(stand_in: tf.Tensor, value: tf.Tensor, seen: list[Any]) -> tuple[str, tf.Tensor] | None:
    """``(kind, d)`` for ``value = stand_in - d`` (kind ``"Sub"``) or ``stand_in + d`` (``"AddV2"``);
    the ops passed are added to ``seen``; ``None`` for any other form (:func:`increment_of`)."""
    op = value.op
    if op.type in ("Sub", "AddV2"):
        first, second = (t.ref() == stand_in.ref() for t in op.inputs)
        if first == second or (op.type == "Sub" and not first):  # both or neither; d - parameter
            return None
        seen.append(op)
        return op.type, op.inputs[1] if first else op.inputs[0]
    if op.type != "SelectV2":
        return None
    condition, *branches = op.inputs
    if stand_in.ref() == condition.ref():
        return None
    found = [_increment(stand_in, branch, seen) for branch in branches]
    if any(f is None for f in found) or found[0][0] != found[1][0]:  # another form, or - beside +
        return None
    seen.append(op)
    return found[0][0], tf.where(condition, found[0][1], found[1][1])


def update_by_increment(
    optimizer: Any, spec: Spec, gradient: Any, variable: Any, slot_vars: dict[str, Any], learning_rate: Any
) -> bool:
    """In ``tf.function`` without XLA, step ``variable`` (of at most :data:`INCREMENT_MAX_ELEMENTS`
    elements) by the rule's increment (:func:`increment_of`): the rule runs on a stand-in for the
    parameter (:func:`_stand_in`), and where its new parameter is ``stand_in - d`` (or ``+ d``)
    and the stand-in is read nowhere else, the slots are assigned and the variable
    ``assign_sub(d)`` (``assign_add``); ``True``.
    Otherwise ``False``, nothing assigned: the ops built feed nothing that runs (TensorFlow prunes
    them from the function) and ``update_step`` runs the rule on the parameter; the spec, dtype and
    slot dtypes are then not tried again.

    On many small variables TensorFlow's cost per op is the step (docs/tf.md, "Many small
    variables"): this saves the parameter's read and the new value's own op (``Sub`` and
    ``AssignVariableOp`` become one ``AssignSubVariableOp``, as Keras's optimizers assign)."""
    dtype = tf.as_dtype(variable.dtype)
    shape = tf.TensorShape(variable.shape)
    if not shape.is_fully_defined() or shape.num_elements() > INCREMENT_MAX_ELEMENTS:
        return False
    if not _increment_wanted(spec, dtype, slot_vars):  # before any op is built
        return False
    grad = optimizer._dense_gradient(gradient, dtype, shape.as_list(), xp)
    slots = {name: as_array(v) for name, v in slot_vars.items()}
    sc = optimizer._scalars(spec, dtype.name, learning_rate)
    found = _rule_by_increment(spec, dtype, slot_vars, grad, slots, sc)
    if found is None:
        return False
    method, increment, new_slots = found
    for name, value in new_slots.items():
        optimizer.assign(slot_vars[name], value)
    getattr(optimizer, method)(variable, increment)
    return True


def _rule_by_increment(
    spec: Spec, dtype: tf.DType, slot_vars: dict[str, Any], grad: tf.Tensor, slots: dict[str, Any], sc: Any
) -> tuple[str, tf.Tensor, dict[str, Any]] | None:
    """The rule run on a stand-in for the parameter (:func:`_stand_in`; the callers ask
    :func:`_increment_wanted` first), and ``(method, d, new_slots)`` where its new parameter has an
    increment (:func:`increment_of`; whether it had is kept per spec, dtype and slot dtypes);
    ``None`` otherwise (the ops built feed nothing that runs)."""
    stand_in = _stand_in(grad)
    new_param, new_slots = spec.rule(stand_in, grad, slots, sc, xp)
    found = increment_of(stand_in, new_param, new_slots)
    _INCREMENT_FITS[_increment_key(spec, dtype, slot_vars)] = found is not None
    return None if found is None else (*found, new_slots)


def update_sparse(optimizer: Any, spec: Spec, gradient: Any, variable: Any, learning_rate: Any) -> bool:
    """An ``IndexedSlices`` gradient: the ``"rows"`` sparse rule updates its rows
    (:func:`_update_rows`, not under XLA, which has no ``tf.unique``); any other is densified by
    the dense path (``False``)."""
    if not isinstance(gradient, tf.IndexedSlices):
        return False
    optimizer._warn_densified()
    if sparse_rule(spec) == "rows" and not in_xla_context():
        _update_rows(optimizer, spec, gradient, variable, learning_rate)
        return True
    return False


def _update_rows(optimizer: Any, spec: Spec, gradient: Any, variable: Any, learning_rate: Any) -> None:
    """The ``"rows"`` sparse rule (:mod:`uniopt.sparse`) of an ``IndexedSlices`` gradient:
    repeated indices summed (``tf.unique``, ``tf.math.unsorted_segment_sum``, as the densified
    gradient sums them), the touched rows of the variable and of every slot gathered, the
    spec's rule run on them, and written back as ``IndexedSlices`` through ``optimizer.assign``
    (``scatter_update``, as Keras's own sparse updates); the other rows are not touched.

    Traced, the rows are taken after the scalars (a control dependency): the graph is then one
    chain, which TensorFlow runs on the calling thread; two independent branches went to its
    thread pool, and the step took 0.40 ms instead of 0.15 ms (1,000,000 x 64 float32, 32 rows,
    2-core CPU)."""
    sc = optimizer._scalars(spec, tf.as_dtype(variable.dtype).name, learning_rate)
    after = [v for v in sc if tf.is_tensor(v)][:1] if not tf.executing_eagerly() else []
    with tf.control_dependencies(after):
        indices, position = tf.unique(gradient.indices)
    values = tf.cast(gradient.values, variable.dtype)
    grad = tf.math.unsorted_segment_sum(values, position, tf.shape(indices)[0])
    slot_vars = optimizer.slots(variable)
    param = tf.gather(_tf_variable(variable), indices)
    slots = {name: tf.gather(_tf_variable(v), indices) for name, v in slot_vars.items()}
    new_param, new_slots = spec.rule(param, grad, slots, sc, xp)
    for name, value in new_slots.items():
        optimizer.assign(slot_vars[name], tf.IndexedSlices(value, indices))
    optimizer.assign(variable, tf.IndexedSlices(new_param, indices))


def _tf_variable(variable: Any) -> Any:
    """The ``tf.Variable`` behind a Keras variable (``tf.gather`` reads only the rows it takes)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


# -- a spec with a history (uniopt.keras._history) -----------------------------------------------


history_variables = float64_history_variables


def history_values(optimizer: Any) -> tuple[float, ...]:
    return tuple(float(v.numpy()) for v in optimizer._uniopt_history)


def history_assign(optimizer: Any, values: tuple[float, ...]) -> None:
    assign_each(optimizer._uniopt_history, values)


def history_step(
    optimizer: Any, compute: Callable[..., list[Any]], learning_rate: Any, types: list[str]
) -> tuple[list[Any], list[Any], Any]:
    """``compute(step, lr, history)`` on the host: eagerly directly, traced in one
    ``tf.numpy_function``; returns the next history (float64 values to assign), the scalars
    (``types``: their dtypes, in order) and the cache key of this step."""
    fields = len(optimizer._uniopt_history)

    def call(step: Any, lr: Any, bits: Any) -> list[np.ndarray]:
        after, *out = compute(int(step), float(lr), tuple(float(v) for v in np.asarray(bits, np.float64)))
        return [np.asarray(after, np.float64), *out]

    bits = tf.stack([tf.convert_to_tensor(v) for v in optimizer._uniopt_history])
    if tf.executing_eagerly():
        step = int(keras.ops.convert_to_numpy(optimizer.iterations)) + 1
        lr = float(keras.ops.convert_to_numpy(learning_rate))
        results = [tf.constant(v) for v in call(step, lr, bits.numpy())]
        key: Any = None
    else:
        step = tf.cast(tf.convert_to_tensor(optimizer.iterations), tf.int64) + 1
        lr = tf.cast(tf.convert_to_tensor(learning_rate), tf.float64)
        out_types = [tf.float64, *(tf.as_dtype(d) for d in types)]
        results = tf.numpy_function(call, [step, lr, bits], out_types, stateful=True)
        results[0].set_shape([fields])
        for tensor in results[1:]:
            tensor.set_shape([])
        key = id(tf.compat.v1.get_default_graph())
    return [results[0][i] for i in range(fields)], list(results[1:]), key


def history_in_graph(
    optimizer: Any, specs: list[Spec], dtypes: list[str], learning_rate: Any
) -> tuple[list[Any], list[Any], Any] | None:
    """:func:`history_step` without the host, for XLA: each spec's
    :meth:`~uniopt.Spec.scalars_from_terms` in-graph in float64
    (:func:`uniopt.tf._scalars.in_graph_scalars`) from the history variables, rounded once to each
    dtype; the next history is ``specs[0]``'s. ``None`` when a spec has no such formula."""
    if not all(map(has_terms, specs)):
        return None
    step = tf.cast(tf.convert_to_tensor(optimizer.iterations), tf.int64) + 1
    lr = tf.cast(tf.convert_to_tensor(learning_rate), tf.float64)
    kind = type(optimizer._spec.init_history())
    before = kind(*(tf.convert_to_tensor(v) for v in optimizer._uniopt_history))
    after, out = None, []
    for spec in specs:
        values, new = in_graph_scalars(spec, step, lr, before)
        after = new if after is None else after
        for dtype in dtypes:
            out.extend(scalar_source(spec, dtype).rounded(values, step))
    return list(after), out, id(tf.compat.v1.get_default_graph())


def initialize_in_first_step(optimizer: Any, spec: Spec, initial: list[tuple[Any, Any, str]]) -> None:
    """Assign each ``(slot, variable, name)`` the spec's initial value of slot ``name`` from the
    variable's value, in-graph and only while ``optimizer.iterations`` is 0 (a ``tf.cond``; the
    slots were created as zeros inside an XLA function, see :mod:`uniopt.keras._history`)."""

    def assign() -> None:
        for slot, variable, name in initial:
            slot.assign(spec.init_slot(name, as_array(variable, slot.dtype), xp))

    run_if(tf.equal(optimizer.iterations, 0), assign)


def history_guard(optimizer: Any, message: str, lr_message: str, apply: Callable[[], Any]) -> Any:
    """``apply()`` unless the optimizer is in eval mode or its learning rate is out of range:
    eagerly (and when a ``tf.function`` is traced) ``RuntimeError``/``ValueError``; in a traced
    function called later, TensorFlow's ``InvalidArgumentError`` from in-graph checks that every
    op of the step waits for. XLA drops such checks: there a step in eval mode first switches the
    variables back to train mode in-graph (the optimizer's ``_train_before_an_xla_step``), and a
    learning rate out of range is not checked."""
    import math

    with tf.init_scope():  # eagerly, or when a tf.function is traced: the mode now
        if int(optimizer._uniopt_mode.numpy()) != 1:
            raise RuntimeError(message)
    lr = tf.cast(optimizer._get_current_learning_rate(), tf.float64)
    if tf.executing_eagerly():
        if not (math.isfinite(float(lr)) and float(lr) >= 0):
            raise ValueError(f"{lr_message} {float(lr)!r}")
        return apply()
    if in_xla_context():  # XLA drops assertions: a step in eval mode goes back to train mode first
        optimizer._train_before_an_xla_step()
        return apply()
    check = tf.debugging.Assert(tf.equal(optimizer._uniopt_mode.value, 1), [message])
    lr_check = tf.debugging.Assert(tf.logical_and(tf.math.is_finite(lr), lr >= 0), [lr_message, lr])
    with tf.control_dependencies([check, lr_check]):
        return apply()
