"""Optimizer state between ``uniopt.jax`` (or optax's own aliases) and :class:`uniopt.PortableState`.

Parameters are the leaves of the parameter pytree in ``jax.tree.leaves`` order (``None`` leaves are
not parameters). A state may be given as the :class:`~uniopt.jax.UnioptState` itself or as any optax
state holding exactly one (e.g. the state of ``optax.chain(clip, uniopt.jax.radam(...))``).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from uniopt import PortableState, Spec
from uniopt.porting import check_compatible, make_state
from uniopt.porting import history_of as history_of_record
from uniopt.registry import OptaxNames

from ._names import ALIASES, MASKS, OPTAX, OPTAX_ONLY, _signed, _target, optax_function, optax_name
from ._transform import Transformation, UnioptState, _is_uniopt, find_state, history_bits, history_of

__all__ = ["export_state", "find_state", "from_optax", "import_state", "to_optax"]

_MAX_COUNT = 2**31 - 1


def _leaves(params: Any) -> tuple[list[Any], Any]:
    return jax.tree.flatten(params)


def _dtype(leaf: Any) -> str:
    """The dtype jax computes a leaf in (float64 becomes float32 without ``jax_enable_x64``)."""
    return str(
        jax.dtypes.canonicalize_dtype(np.asarray(leaf).dtype if not hasattr(leaf, "dtype") else leaf.dtype)
    )


def _spec_of(tx: Transformation | Spec, count: Any = None) -> Spec:
    """The spec with the learning rate in effect (a schedule's value at ``count``)."""
    if isinstance(tx, Spec):
        return tx
    if not isinstance(tx, Transformation):
        raise TypeError(f"expected a uniopt.jax transformation or a uniopt spec, got {type(tx).__name__}")
    if tx.learning_rate is None:
        return tx.spec
    lr = (
        tx.learning_rate(count if count is not None else 0)
        if callable(tx.learning_rate)
        else tx.learning_rate
    )
    return tx.spec.replace(lr=float(lr))


def export_state(tx: Transformation | Spec, state: Any, params: Any) -> PortableState:
    """The state of a ``uniopt.jax`` transformation for ``params`` as a :class:`uniopt.PortableState`.

    ``tx`` gives the spec (a ``Transformation`` or the spec itself); with a schedule or array
    learning rate the record's ``lr`` is the value in effect at the next step. ``step`` is
    ``state.count``; ``history`` the spec's history (:attr:`UnioptState.history`, exact), ``None``
    for a spec without one.
    """
    state = find_state(state)
    count = int(state.count)
    spec = _spec_of(tx, state.count)
    leaves, treedef = _leaves(params)
    names = spec.slot_names()
    if set(state.slots) != set(names):
        raise ValueError(
            f"uniopt.jax.export_state: state slots {sorted(state.slots)}, {spec.name} has {sorted(names)}"
        )
    slot_leaves = {n: treedef.flatten_up_to(state.slots[n]) for n in names}
    slots = [{n: np.array(slot_leaves[n][i], copy=True) for n in names} for i in range(len(leaves))]
    if spec.init_history() is not None and state.history is None:
        raise ValueError(f"uniopt.jax.export_state: {spec.name} keeps a history and the state has none")
    return make_state(
        spec,
        count,
        slots,
        [tuple(np.shape(p)) for p in leaves],
        [_dtype(p) for p in leaves],
        history=history_of(spec, state.history),
    )


def _place(value: np.ndarray, like: Any) -> jax.Array:
    """The array on ``like``'s devices with its sharding (or the default device)."""
    if isinstance(like, jax.Array) and not isinstance(like, jax.core.Tracer):
        return jax.device_put(value, like.sharding)
    return jnp.asarray(value)


def import_state(
    tx: Transformation | Spec,
    state: PortableState,
    params: Any,
    *,
    into: Any = None,
    hyperparameters: bool = True,
) -> Any:
    """The :class:`UnioptState` of ``state`` for ``params`` (slots placed like each parameter).

    Checked first with :func:`uniopt.porting.check_compatible` (optimizer, parameter count, shapes,
    dtypes as jax computes them, slots, the history's fields and, unless ``hyperparameters=False``,
    hyperparameters). The record's history becomes :attr:`UnioptState.history` bit for bit. With
    ``into`` (an optax state holding one ``UnioptState``), returns ``into`` with it replaced.
    """
    owner = "uniopt.jax.import_state"
    leaves, treedef = _leaves(params)
    spec = _spec_of(tx, state.step)
    check_compatible(
        state,
        spec,
        [tuple(np.shape(p)) for p in leaves],
        [_dtype(p) for p in leaves],
        hyperparameters=hyperparameters,
        owner=owner,
    )
    if state.step > _MAX_COUNT:
        raise ValueError(f"{owner}: step {state.step} does not fit uniopt.jax's int32 count")
    history = history_of_record(state, spec)
    new = UnioptState(
        count=jnp.asarray(state.step, jnp.int32),
        slots={
            n: treedef.unflatten([_place(s[n], p) for s, p in zip(state.slots, leaves, strict=True)])
            for n in spec.slot_names()
        },
        history=None if history is None else jnp.asarray(history_bits(history)),
    )
    if into is None:
        return new
    find_state(into)
    return jax.tree.map(lambda node: new if _is_uniopt(node) else node, into, is_leaf=_is_uniopt)


# -- optax's own aliases -------------------------------------------------------------------------


_NATIVE: dict[str, OptaxNames] = {alias: names for alias, names in OPTAX.items() if names.native}
"""optax aliases whose state ports (every factory of the table that optax has): their row's names."""

_SLOTS: dict[str, dict[str, str]] = {alias: dict(names.state) for alias, names in _NATIVE.items()}
"""optax alias -> (field of its state, found in any node of the state -> uniopt slot); ``"step"``
stands for the step count. From the rows' :attr:`uniopt.registry.OptaxNames.state`."""

_SCALED_BY_NEG_LR = {("rmsprop", "trace")}
"""The one field optax keeps scaled: rmsprop's momentum traces learning-rate-scaled steps
(``trace = -lr * momentum_buffer``, ``optax.rmsprop``: ``scale_by_learning_rate`` before ``trace``)."""


def _unsupported(alias: str) -> dict[str, Any]:
    """optax argument -> the only value a ported state can have been built with: optax's default
    of each argument without a spec field (the row's ``only``), and of the weight-decay mask."""
    parameters = inspect.signature(optax_function(alias)).parameters
    names = [*OPTAX_ONLY[alias], *(m for m in MASKS if m in parameters and m not in OPTAX_ONLY[alias])]
    return {name: parameters[name].default for name in names}


def _native_spec(alias: str, kwargs: dict[str, Any], owner: str) -> Spec:
    if alias not in _NATIVE:
        raise ValueError(f"{owner}: alias {alias!r} is not one of {', '.join(_NATIVE)}")
    row = _NATIVE[alias]
    try:
        bound = inspect.signature(optax_function(alias)).bind(**kwargs)
    except TypeError as exc:
        raise TypeError(f"{owner}: {optax_name(alias)}: {exc}") from None
    bound.apply_defaults()
    args = dict(bound.arguments)
    for name, allowed in _unsupported(alias).items():
        if args[name] != allowed:
            raise ValueError(f"{owner}: {optax_name(alias)}({name}={args[name]!r}) has no uniopt counterpart")
    spec_type = ALIASES[alias][0]
    fields: dict[str, Any] = dict(row.fixed)
    if row.default_convention is not None:  # optax's arguments mean that convention's algorithm
        fields["convention"] = row.default_convention
    lr = args["learning_rate"]
    none_lr = spec_type.conventions.get(fields.get("convention", "uniopt"), {}).get("lr")
    if lr is None and none_lr is not None and optax_lr_default_is_none(alias):
        lr = none_lr  # optax.adafactor(learning_rate=None) scales by nothing: lr 1
    if lr is None or callable(lr) or np.ndim(lr) != 0:
        raise ValueError(f"{owner}: learning_rate must be a number (the value in effect), got {lr!r}")
    for arg, (accepts, accepted) in row.narrows.items():
        if arg in args and not accepts(args[arg], fields.get("convention", "uniopt")):
            raise ValueError(f"{owner}: {optax_name(alias)}({arg}={args[arg]!r}): uniopt accepts {accepted}")
    for arg, implied in row.implies.items():
        if args.get(arg) is not None:  # consistent_rms=r: also adjust_lr_fn="match_rms_adamw"
            fields.update(implied)
    for arg, target in row.names.items():
        if arg == "learning_rate" or arg not in args:
            continue
        value = args[arg]
        if value is None and arg in row.implies:
            continue  # optax's None: the field keeps the convention's default (and so do the implied)
        if value is None and bound.signature.parameters[arg].default is None:
            value = 0.0  # optax's default None: off (momentum=None, weight_decay_rate=None)
        value = _signed(target, value)  # clipping_threshold=None stays None: no clipping
        field, index = _target(target)
        if index is None:
            fields[field] = value
        else:
            pair = fields.setdefault(field, [None, None])
            pair[index] = value
    for field, value in fields.items():
        if isinstance(value, list):  # a pair's entries optax has no argument for: the convention's
            default = spec_type.conventions.get(fields.get("convention", "uniopt"), {}).get(field)
            if default is not None:
                fields[field] = [d if v is None else v for v, d in zip(value, default, strict=True)]
    fields = {f: tuple(v) if isinstance(v, list) else v for f, v in fields.items()}
    try:
        return ALIASES[alias][0](lr=float(lr), **fields)
    except ValueError as exc:
        raise ValueError(f"{owner}: {optax_name(alias)}: {exc}") from None


def optax_lr_default_is_none(alias: str) -> bool:
    """Whether optax's ``learning_rate`` of ``alias`` defaults to ``None`` (adafactor: no scaling)."""
    return inspect.signature(optax_function(alias)).parameters["learning_rate"].default is None


def _mapped(alias: str) -> Callable[[Any], bool]:
    """Whether a node of an optax state holds one of ``alias``'s fields (a NamedTuple state)."""
    fields = {*_SLOTS[alias], *_NATIVE[alias].state_hyperparameters}
    return lambda node: hasattr(node, "_fields") and any(f in fields for f in node._fields)


def _is_masked(leaf: Any) -> bool:
    """optax's ``MaskedNode``: where a partitioned or masked transformation keeps no state."""
    return isinstance(leaf, optax.MaskedNode)


def _native_fields(opt_state: Any, alias: str, owner: str, treedef: Any) -> dict[str, Any]:
    """optax field -> its value: the step count, or per parameter (``treedef``'s leaves) the
    field's array, ``None`` where every node holding the field has a ``MaskedNode`` there. A field
    found in several nodes (``optax.contrib.muon``'s ``mu``, in its Muon and its Adam partition) is
    merged: each parameter's array must come from exactly one of them; step counts must agree."""
    found: dict[str, Any] = {}
    is_mapped = _mapped(alias)
    for node in jax.tree.leaves(opt_state, is_leaf=is_mapped):
        if not is_mapped(node):
            continue
        for field in node._fields:
            if field not in _SLOTS[alias]:
                continue
            value = getattr(node, field)
            if _SLOTS[alias][field] == "step":
                if field in found and int(found[field]) != int(value):
                    raise ValueError(
                        f"{owner}: the state holds step counts {int(found[field])} and {int(value)} "
                        f"({type(node).__name__})"
                    )
                found[field] = value  # several equal counts: adafactor's FactoredState and EmaState
                continue
            leaves = [None if _is_masked(v) else v for v in treedef.flatten_up_to(value)]
            if field not in found:
                found[field] = leaves
                continue
            both = [
                i
                for i, (a, b) in enumerate(zip(found[field], leaves, strict=True))
                if a is not None and b is not None
            ]
            if both:
                raise ValueError(
                    f"{owner}: the state holds more than one {field!r} for parameter {both[0]} "
                    f"({type(node).__name__})"
                )
            found[field] = [a if b is None else b for a, b in zip(found[field], leaves, strict=True)]
    return found


def _check_state_hyperparameters(opt_state: Any, alias: str, spec: Spec, owner: str) -> None:
    """``ValueError`` where a field of optax's state holding a hyperparameter
    (:attr:`uniopt.registry.OptaxNames.state_hyperparameters`: ``MuonState.ns_coeffs``) is not the
    spec's value, as optax rounds it (its dtype)."""
    fields = _NATIVE[alias].state_hyperparameters
    is_mapped = _mapped(alias)
    for node in jax.tree.leaves(opt_state, is_leaf=is_mapped):
        for field in getattr(node, "_fields", ()) if is_mapped(node) else ():
            if field in fields:
                held = np.asarray(getattr(node, field))
                expected = np.asarray(getattr(spec, fields[field]), held.dtype)
                if held.shape != expected.shape or not np.array_equal(held, expected):
                    raise ValueError(
                        f"{owner}: {optax_name(alias)}'s state holds {field}={held.tolist()}, and the "
                        f"arguments give {fields[field]}={getattr(spec, fields[field])!r} (pass the "
                        "arguments the optax optimizer was built with)"
                    )


def _momentum_scale(alias: str, field: str, spec: Spec) -> float | None:
    """The factor optax's ``field`` holds the slot scaled by (:data:`_SCALED_BY_NEG_LR`)."""
    return -spec.lr if (alias, field) in _SCALED_BY_NEG_LR else None


def from_optax(
    opt_state: Any, alias: str, params: Any, *, step: int | None = None, **optax_kwargs: Any
) -> PortableState:
    """The state of optax's ``<module>.<alias>(**optax_kwargs)`` as a record with ``convention="optax"``.

    ``optax_kwargs`` are the arguments the optax optimizer was built with (optax's names and
    defaults; ``learning_rate`` a number), translated by the row's names
    (:class:`uniopt.registry.OptaxNames`; optax's ``None`` for a number, ``momentum=None``, is 0).
    Each field of optax's state named in the row's ``state`` (``mu``, ``nu``, ``trace``, ...) is
    read wherever it sits in the state, as is (optax 0.2): e.g. ``ScaleByAdamState`` ``count``,
    ``mu``, ``nu`` are the step, ``exp_avg``, ``exp_avg_sq``; ``TraceState.trace`` is sgd's
    ``momentum_buffer``. ``alias`` may be an optax.contrib one (``"muon"``:
    ``optax.contrib.muon``, whose ``mu`` sits in its Muon partition's ``MuonState`` for the 2-D
    parameters and in its Adam partition's ``ScaleByAdamState`` for the others, ``MaskedNode``
    elsewhere: one slot, ``momentum_buffer``; a matrix's ``exp_avg_sq``, which optax does not keep,
    is zeros; ``MuonState.ns_coeffs`` must be the arguments' ``ns_coeffs``). The one exception:
    rmsprop's ``trace`` is ``-lr * momentum_buffer`` (divided back here, exact when ``lr`` is a
    power of two). States without a ``count`` (sgd,
    rmsprop, adagrad, adadelta) need ``step``. Arguments uniopt cannot represent (``eps_root``,
    ``nesterov`` of adam, ``initial_scale``, ``mask``, ...) must keep their defaults. The optax
    rules differ from uniopt's
    (``eps`` inside the root for rmsprop and adagrad, the rectification threshold, rounding), so a
    run continued under uniopt follows uniopt's rules from there.
    """
    owner = "uniopt.jax.from_optax"
    spec = _native_spec(alias, optax_kwargs, owner)
    leaves, treedef = _leaves(params)
    _check_state_hyperparameters(opt_state, alias, spec, owner)
    slots: list[dict[str, np.ndarray]] = [{} for _ in leaves]
    count = None
    present: set[str] = set()
    for field, value in _native_fields(opt_state, alias, owner, treedef).items():
        slot = _SLOTS[alias][field]
        if slot == "step":
            count = int(value)
            continue
        present.add(slot)
        scale = _momentum_scale(alias, field, spec)
        for i, leaf in enumerate(value):
            if leaf is None:  # optax keeps no such state for this parameter: the spec's placeholder
                continue
            array = np.array(leaf, copy=True)
            array = array if scale is None else np.asarray(array / np.asarray(scale, array.dtype))
            what = f"{owner}: {optax_name(alias)}'s {field!r}"
            slots[i][slot] = _as_dtype(array, _dtype(leaves[i]), what)
    missing = set(spec.slot_names()) - present
    if leaves and missing:
        raise ValueError(
            f"{owner}: {optax_name(alias)}'s state lacks {sorted(missing)} (was it built with these "
            "arguments?)"
        )
    for i, leaf in enumerate(leaves):
        for name in spec.slot_names():
            if name not in slots[i]:  # the Adam slot exp_avg_sq of a matrix under Muon: zeros
                like = np.zeros(np.shape(leaf), _dtype(leaf))
                slots[i][name] = np.asarray(spec.init_slot(name, like, np))
    if count is None:
        if step is None:
            raise ValueError(
                f"{owner}: {optax_name(alias)} keeps no step count; pass step= (the number of steps taken)"
            )
        count = step
    elif step is not None and step != count:
        raise ValueError(f"{owner}: step={step} but the state's count is {count}")
    record = make_state(
        spec,
        count,
        [{n: s[n] for n in spec.slot_names()} for s in slots],
        [tuple(np.shape(p)) for p in leaves],
        [_dtype(p) for p in leaves],
    )
    return dataclasses.replace(record, convention="optax")


def _as_dtype(array: np.ndarray, dtype: str, what: str) -> np.ndarray:
    """``array`` in ``dtype``, where that keeps every value (optax.adafactor's float32 momentum
    of a float64 parameter); ``ValueError`` where it would round."""
    target = np.dtype(jax.dtypes.canonicalize_dtype(jnp.dtype(dtype)))
    if array.dtype == target:
        return array
    cast = array.astype(target)
    if not np.array_equal(cast.astype(array.dtype), array, equal_nan=True):
        raise ValueError(
            f"{what} is {array.dtype} and {target} would round it (uniopt keeps each slot in its "
            f"parameter's dtype, optax.adafactor its momentum in dtype_momentum)"
        )
    return cast


def to_optax(
    state: PortableState, alias: str, params: Any, *, hyperparameters: bool = True, **optax_kwargs: Any
) -> Any:
    """The state of optax's ``<module>.<alias>(**optax_kwargs)`` (``optax.adam``,
    ``optax.contrib.muon``) holding ``state`` (the inverse of :func:`from_optax`; the count
    saturates like optax's). Checked first; ``ValueError`` on a mismatch. A slot optax keeps for no
    node of a parameter (``MaskedNode`` everywhere: Muon's Adam slot ``exp_avg_sq`` of a matrix)
    must hold the spec's initial value, else ``ValueError`` (it would be lost)."""
    owner = "uniopt.jax.to_optax"
    spec = _native_spec(alias, optax_kwargs, owner)
    leaves, treedef = _leaves(params)
    check_compatible(
        state,
        spec,
        [tuple(np.shape(p)) for p in leaves],
        [_dtype(p) for p in leaves],
        hyperparameters=hyperparameters,
        owner=owner,
    )
    template = optax_function(alias)(**optax_kwargs).init(params)

    is_mapped = _mapped(alias)
    written: set[tuple[int, str]] = set()  # (parameter, slot) that optax's state holds

    def fill(node: Any) -> Any:
        if not is_mapped(node):
            return node
        values = {}
        for field in node._fields:
            slot = _SLOTS[alias].get(field)
            if slot is None:
                continue
            if slot == "step":
                values[field] = jnp.asarray(min(state.step, _MAX_COUNT), jnp.int32)
                continue
            scale = _momentum_scale(alias, field, spec)
            kinds = treedef.flatten_up_to(getattr(node, field))  # optax's dtype of each leaf
            out = []
            for i, (s, kind, p) in enumerate(zip(state.slots, kinds, leaves, strict=True)):
                if _is_masked(kind):  # another node holds this parameter's state, or none does
                    out.append(kind)
                    continue
                a = s[slot] if scale is None else np.asarray(s[slot] * np.asarray(scale, s[slot].dtype))
                out.append(_place(_as_dtype(a, str(kind.dtype), f"{owner}: slot {slot!r}"), p))
                written.add((i, slot))
            values[field] = treedef.unflatten(out)
        return node._replace(**values)

    filled = jax.tree.map(fill, template, is_leaf=is_mapped)
    for i, (s, leaf) in enumerate(zip(state.slots, leaves, strict=True)):
        for name in spec.slot_names():
            if (i, name) in written:
                continue
            initial = np.asarray(spec.init_slot(name, np.zeros(np.shape(leaf), _dtype(leaf)), np))
            if not np.array_equal(np.asarray(s[name]), initial):
                raise ValueError(
                    f"{owner}: {optax_name(alias)} keeps no {name!r} for parameter {i} (shape "
                    f"{tuple(np.shape(leaf))}), and the record's is not its initial value: it would be lost"
                )
    return filled
