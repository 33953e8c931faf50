"""Optimizer state between the uniopt Keras optimizers (or Keras's own) and :class:`uniopt.PortableState`,
on every Keras backend.

Parameters are the model variables in the order given (``model.trainable_variables``). The step is
Keras's ``optimizer.iterations``; the record's ``lr`` is the learning rate in effect. Nothing here
depends on the backend: Keras's variables, ``keras.ops.convert_to_numpy`` (bfloat16 through ml_dtypes)
and ``Variable.assign`` are the same on TensorFlow, JAX and torch, and a slot's dtype is read through the
backend's binding. These are ``uniopt.keras.export_state``, ``import_state``, ``from_keras`` and
``to_keras``, and on TensorFlow ``uniopt.tf``'s (the same functions); messages name them
``uniopt.tf.*`` on TensorFlow and ``uniopt.keras.*`` elsewhere, as the optimizers name themselves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import array_api_compat.numpy as npx
import keras
import numpy as np

from uniopt import PortableState, Spec, registry
from uniopt.porting import check_compatible, history_of, make_state
from uniopt.registry import TABLE, OptimizerInfo

from ._binding import PACKAGE, dtype_name
from ._history import HistoryOptimizer
from .optimizers import _BY_SPEC, UnioptOptimizer

__all__ = ["export_state", "from_keras", "import_state", "to_keras"]


def _shape(variable: Any) -> tuple[int, ...]:
    return tuple(int(n) for n in variable.shape)


def _dtype(variable: Any) -> str:
    return keras.backend.standardize_dtype(variable.dtype)


def _numpy(variable: Any) -> np.ndarray:
    return np.array(keras.ops.convert_to_numpy(variable), copy=True)


def _learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def _check_portable(optimizer: keras.optimizers.Optimizer, owner: str) -> None:
    """Refuse Keras features whose state a record does not hold."""
    if optimizer.gradient_accumulation_steps:
        raise ValueError(
            f"{owner}: gradient_accumulation_steps keeps accumulators a PortableState does not hold"
        )
    if optimizer.use_ema:
        raise ValueError(f"{owner}: use_ema keeps moving averages a PortableState does not hold")


def _spec(optimizer: UnioptOptimizer, variables: Sequence[Any], owner: str) -> Spec:
    spec = optimizer.spec
    for i, v in enumerate(variables):
        if optimizer.built and optimizer._portable_spec_for(v) is not spec:
            raise ValueError(
                f"{owner}: variable {i} ({v.path}) is excluded from weight decay; a PortableState holds "
                "one set of hyperparameters"
            )
    return spec.replace(lr=_uniopt_learning_rate(optimizer))


def _uniopt_learning_rate(optimizer: UnioptOptimizer) -> float:
    """The learning rate in effect: a float learning rate is the spec's ``lr`` exactly, also where a
    float32 variable holds ``float32(lr)`` (Keras on JAX without ``jax_enable_x64``, which has no
    float64: :meth:`UnioptOptimizer._float_learning_rate`); a schedule's is its value at the next
    step, as the optimizer reads it (``optimizer.learning_rate``)."""
    if optimizer._dynamic_learning_rate():
        return _learning_rate(optimizer)
    return optimizer._float_learning_rate()


def _slot_variables(optimizer: UnioptOptimizer, variables: Sequence[Any], owner: str) -> list[dict[str, Any]]:
    out = []
    for i, v in enumerate(variables):
        try:
            out.append(optimizer.slots(v))
        except (KeyError, ValueError):
            raise ValueError(
                f"{owner}: variable {i} ({v.path}) is not one this optimizer was built for"
            ) from None
    return out


def _slot_value(slot: Any, variable: Any) -> np.ndarray:
    """A slot variable's value; a slot kept in no variable (``None``: Muon's ``velocity`` of a
    variable its Muon step takes, as Keras keeps none) is the zeros the rule passes through."""
    return np.zeros(_shape(variable), _numpy(variable).dtype) if slot is None else _numpy(slot)


def _check_unkept(state: PortableState, kept: Sequence[dict[str, Any]], owner: str, where: str) -> None:
    """Refuse a record whose slot is not zeros where the optimizer keeps no variable for it (the
    value would be lost): before anything is assigned."""
    for i, (slots, variables) in enumerate(zip(state.slots, kept, strict=True)):
        for name, value in slots.items():
            if variables[name] is None and np.any(np.asarray(value) != 0):
                raise ValueError(
                    f"{owner}: the record's {name} of variable {i} is not zeros, and {where} keeps no "
                    f"variable for it (it steps that variable with its Muon step, which reads no "
                    f"{name}); nothing was assigned"
                )


def export_state(optimizer: UnioptOptimizer, variables: Sequence[Any]) -> PortableState:
    """The state of a uniopt Keras optimizer for ``variables`` as a :class:`uniopt.PortableState`.

    An optimizer not built yet has step 0 and the spec's initial slots. A spec with a history
    (Schedule-Free AdamW) records it from the optimizer's history variables, exactly. Raises
    ``ValueError`` for state a record does not hold (gradient accumulation, EMA, variables excluded
    from weight decay) and for a Schedule-Free optimizer in eval mode.
    """
    owner = f"{PACKAGE}.export_state"
    if not isinstance(optimizer, UnioptOptimizer):
        raise TypeError(
            f"{owner}: expected a {PACKAGE} optimizer, got {type(optimizer).__name__}; for a Keras "
            f"optimizer use {PACKAGE}.from_keras"
        )
    _check_portable(optimizer, owner)
    variables = list(variables)
    spec = _spec(optimizer, variables, owner)
    names = spec.slot_names()
    history = _history_of(optimizer, owner)
    if optimizer.built:
        slots = [
            {n: _slot_value(s[n], v) for n in names}
            for v, s in zip(variables, _slot_variables(optimizer, variables, owner), strict=True)
        ]
        step = int(keras.ops.convert_to_numpy(optimizer.iterations))
    else:
        slots = [{n: np.asarray(spec.init_slot(n, _numpy(v), npx)) for n in names} for v in variables]
        step = 0
    return make_state(
        spec, step, slots, [_shape(v) for v in variables], [_dtype(v) for v in variables], history=history
    )


def _history_of(optimizer: UnioptOptimizer, owner: str) -> Any:
    """The spec's history of a :class:`~uniopt.keras.HistoryOptimizer` (``None`` for every other
    optimizer, and for a convention that keeps none), refused in eval mode: a record continues
    training, whose parameters are y."""
    if not isinstance(optimizer, HistoryOptimizer):
        return None
    _check_train_mode(optimizer, owner)
    return optimizer.history()


def _check_train_mode(optimizer: UnioptOptimizer, owner: str) -> None:
    if isinstance(optimizer, HistoryOptimizer) and not optimizer.train_mode:
        raise ValueError(
            f"{owner}: the optimizer is in eval mode (the variables hold x); call optimizer.train() "
            "first: the state continues training, from the parameters y"
        )


def import_state(
    optimizer: UnioptOptimizer,
    state: PortableState,
    variables: Sequence[Any],
    *,
    hyperparameters: bool = True,
) -> None:
    """Load ``state`` into a uniopt Keras optimizer for ``variables`` (built here if it is not).

    Everything is checked before any variable is assigned: the optimizer, variable count, shapes,
    dtypes, slots, the history (a spec that keeps one needs it; Schedule-Free AdamW), train mode
    (a Schedule-Free optimizer in eval mode is refused), hyperparameters (unless
    ``hyperparameters=False``) and that a built optimizer tracks these variables. Then
    ``iterations``, every slot variable and the history variables are assigned. A slot the record
    holds in another dtype than its variable's (a bfloat16 ``exp_avg``: ``PortableState.slot_dtypes``)
    needs an optimizer built with that ``state_dtypes``; ``ValueError`` naming it otherwise, never a
    rounding or widening. ``TypeError`` for an optimizer that is not a uniopt one (Keras's own:
    :func:`to_keras`).
    """
    owner = f"{PACKAGE}.import_state"
    if not isinstance(optimizer, UnioptOptimizer):
        raise TypeError(
            f"{owner}: expected a {PACKAGE} optimizer, got {type(optimizer).__name__}; for a Keras "
            f"optimizer use {PACKAGE}.to_keras"
        )
    _check_portable(optimizer, owner)
    variables = list(variables)
    spec = _spec(optimizer, variables, owner)
    shapes, dtypes = [_shape(v) for v in variables], [_dtype(v) for v in variables]
    check_compatible(state, spec, shapes, dtypes, hyperparameters=hyperparameters, owner=owner)
    _check_train_mode(optimizer, owner)
    history = history_of(state, spec)
    if optimizer.built:
        kept = _slot_variables(optimizer, variables, owner)
        _check_unkept(state, kept, owner, "this optimizer")
    else:
        optimizer.build(variables)
        kept = _slot_variables(optimizer, variables, owner)
        _check_unkept(state, kept, owner, "this optimizer")
    for i, (slots, slot_vars) in enumerate(zip(state.slots, kept, strict=True)):  # before any assign
        for name, value in slots.items():
            have = None if slot_vars[name] is None else dtype_name(slot_vars[name].dtype)
            if have is not None and have != str(value.dtype):
                raise ValueError(
                    f"{owner}: parameter {i} slot {name!r} is {value.dtype} in the state and {have} in "
                    f"this optimizer; build it with state_dtypes={dict(state.slot_dtypes[i]) or None!r} "
                    "(the state's slot dtypes, PortableState.slot_dtypes)"
                )
    for slots, slot_vars in zip(state.slots, kept, strict=True):
        for name, value in slots.items():
            if slot_vars[name] is not None:
                slot_vars[name].assign(value)
    if history is not None:
        optimizer._set_history(history)
    optimizer.iterations.assign(state.step)


# -- Keras's own optimizers ----------------------------------------------------------------------


class _Slot(NamedTuple):
    attribute: str  # the Keras optimizer's list of variables
    to_uniopt: Callable[[np.ndarray, float], np.ndarray]  # (value, lr) -> uniopt's quantity
    to_keras: Callable[[np.ndarray, float], np.ndarray]


def _same() -> tuple[Callable, Callable]:
    return (lambda x, lr: x), (lambda x, lr: x)


def _scaled(factor: Callable[[float], float]) -> tuple[Callable, Callable]:
    """Keras keeps ``factor(lr) * uniopt's buffer``."""
    return (
        lambda x, lr: np.asarray(x / np.asarray(factor(lr), x.dtype)),
        lambda x, lr: np.asarray(x * np.asarray(factor(lr), x.dtype)),
    )


# Slots Keras keeps rescaled (declared exceptions; every other slot is the same quantity under the
# attribute the row's KerasNames.slots names): SGD's momentums are velocities -lr * momentum_buffer,
# RMSprop's momentums lr * momentum_buffer
_RESCALED: dict[tuple[str, str], tuple[Callable, Callable]] = {
    ("SGD", "momentum_buffer"): _scaled(lambda lr: -lr),
    ("RMSprop", "momentum_buffer"): _scaled(lambda lr: lr),
}
# Keras's weight decay is decoupled (p -= lr*wd*p): specs whose weight_decay is decoupled too, and
# the spec a decayed Keras optimizer is recorded as where its own spec's decay is L2 (declared)
_DECOUPLED_SPECS = ("AdamW", "Lion")
_DECOUPLED_TWIN = {"Adam": "AdamW"}
# rows whose Keras optimizer is recorded with convention="keras" in the spec itself (declared):
# Schedule-Free AdamW's averaging, Adafactor's slots (Keras's r, c, v are the keras convention's)
# Muon's (Keras's Muon and AdamW steps, its momentums and adam_velocities)
_KERAS_CONVENTION_RECORDS = ("ScheduleFreeAdamW", "Adafactor", "Muon")

_KERAS_SLOTS: dict[type[Spec], dict[str, _Slot]] = {
    info.spec: {
        slot: _Slot(attribute, *_RESCALED.get((info.name, slot), _same()))
        for slot, attribute in info.keras.slots.items()
    }
    for info in TABLE
    if info.keras is not None and info.keras.native is not None
}
"""Spec -> its slots in Keras's optimizer (attribute, conversions), from the table."""
_ROWS_BY_KERAS = {info.keras.native: info for info in TABLE if info.keras is not None and info.keras.native}


def _row_of(optimizer: keras.optimizers.Optimizer, owner: str) -> OptimizerInfo:
    """The table row of a Keras optimizer: its class or the nearest Keras base class the table names
    (keras.optimizers.AdamW before Adam)."""
    for cls in type(optimizer).__mro__:
        info = _ROWS_BY_KERAS.get(cls.__name__)
        if info is not None and getattr(keras.optimizers, cls.__name__, None) is cls:
            return info
    known = ", ".join(_ROWS_BY_KERAS)
    raise TypeError(f"{owner}: {type(optimizer).__name__} is not one of Keras's {known}")


def _native_spec(optimizer: keras.optimizers.Optimizer, owner: str) -> Spec:
    """The uniopt spec with a Keras optimizer's hyperparameters (Keras's meaning, see from_keras):
    the row's Keras arguments read back from the optimizer and renamed by the row's names."""
    if isinstance(optimizer, UnioptOptimizer):
        raise TypeError(
            f"{owner}: {type(optimizer).__name__} is a uniopt optimizer; use {PACKAGE}.export_state"
        )
    _check_portable(optimizer, owner)
    info = _row_of(optimizer, owner)
    fields = {f.name: f for f in dataclasses.fields(info.spec)}
    names = _BY_SPEC[info.spec].KERAS_NAMES
    keras_kwargs: dict[str, Any] = {"learning_rate": _learning_rate(optimizer)}
    skipped = ("learning_rate", "weight_decay", *info.keras.inert, *info.keras.routing)
    for name in (*info.keras.positional, *info.keras.positional_after_base):
        if name not in skipped:
            keras_kwargs[name] = _read_back(optimizer, name, fields[names.get(name, name).split("[")[0]])
    kwargs = _BY_SPEC[info.spec].to_spec_kwargs(keras_kwargs)
    # Schedule-Free AdamW: uniopt's convention keeps a history that Keras's (uniform averaging,
    # c = 1/t) does not, so Keras's optimizer is recorded with its own convention, decay included
    keras_rules = info.name in _KERAS_CONVENTION_RECORDS
    if keras_rules:
        kwargs["convention"] = "keras"
    wd = float(optimizer.weight_decay or 0.0)
    if wd and not keras_rules:
        if info.name in _DECOUPLED_TWIN:
            info = registry.get(_DECOUPLED_TWIN[info.name])
        elif "decoupled_weight_decay" in fields:
            kwargs["decoupled_weight_decay"] = True
        elif info.name not in _DECOUPLED_SPECS:
            raise ValueError(
                f"{owner}: Keras's weight_decay={wd} is decoupled; uniopt's {info.name} decays "
                "through the gradient (L2), so the record could not say what was run"
            )
    if "weight_decay" in fields:
        kwargs["weight_decay"] = wd
    # what Keras fixes without an argument (NAdam's momentum_decay=1): the keras convention's values
    for name, value in info.spec.conventions.get("keras", {}).items():
        kwargs.setdefault(name, value)
    return info.spec(**kwargs)


def _read_back(optimizer: keras.optimizers.Optimizer, name: str, field: dataclasses.Field) -> Any:
    """A Keras argument read back from the optimizer, as the spec field's type: a bool, an int
    (Muon's ``ns_steps``), a float, or ``None`` where Keras keeps one (Muon's ``rms_rate=None``,
    ``adam_weight_decay=None``: the row's ``none_means``)."""
    value = getattr(optimizer, name)
    if value is None:
        return None
    if field.type in ("bool", bool):
        return bool(value)
    if field.type in ("int", int):
        return int(value)
    return float(value)


def _native_lists(optimizer: keras.optimizers.Optimizer, spec: Spec, owner: str) -> dict[str, list[Any]]:
    out = {}
    for name in spec.slot_names():
        slot = _KERAS_SLOTS[type(spec)][name]
        variables = getattr(optimizer, slot.attribute, None)
        if variables is None:
            raise ValueError(
                f"{owner}: {type(optimizer).__name__} has no {slot.attribute} (an unknown Keras version)"
            )
        out[name] = variables
    return out


def from_keras(optimizer: keras.optimizers.Optimizer, variables: Sequence[Any]) -> PortableState:
    """The state of one of Keras's optimizers the table names (``Adam``, ``AdamW``, ``SGD``,
    ``RMSprop``, ``Adagrad``, ``Adamax``, ``Nadam``, ``Adadelta``, ``Lion``, ``Lamb``,
    ``ScheduleFreeAdamW``, ``Adafactor``, ``Muon``) as a record with ``convention="keras"``.

    Conventions assumed (Keras 3): the arguments of the row's ``KerasNames.positional`` are read
    back from the optimizer and map to the spec's fields by the class's ``KERAS_NAMES``
    (``learning_rate``, ``beta_1``/``beta_2``, ``epsilon``, RMSprop's ``rho`` -> ``alpha``, ...),
    with Keras's values. Keras's ``weight_decay`` is decoupled (``p -= lr*wd*p``): Adam with a decay
    is recorded as AdamW, NAdam with ``decoupled_weight_decay=True``, AdamW and Lion as they are,
    and the other optimizers (whose uniopt decay is L2) refuse it. Slots are read from the lists of
    variables the row's ``KerasNames.slots`` names, as they are, except SGD's ``momentums``, which
    hold velocities ``-lr * momentum_buffer``, and RMSprop's ``momentums``, ``lr *
    momentum_buffer`` (divided back here with the current lr, exact when it is a power of two).
    Schedule-Free AdamW and Adafactor are recorded with the spec's keras convention itself (its
    rules and slots: Adafactor's ``_r``, ``_c``, ``_v`` are the keras convention's ``r``, ``c``,
    ``v``; Keras's int32 0-d dummies ``r`` and ``c`` of a vector or scalar are the spec's
    placeholders, zeros, and :func:`to_keras` leaves them as they are); Adafactor's
    ``relative_step`` changes nothing in Keras and is not recorded. Muon is recorded with the keras
    convention too: its ``momentums`` are ``momentum_buffer``, its ``adam_velocities``
    ``exp_avg_sq``, zeros where Keras keeps none (a variable its Muon step takes, whose velocity the
    rule never reads); ``rms_rate=None`` is ``adjust_lr_fn="none"``; ``exclude_layers`` and
    ``exclude_embeddings`` choose steps by variable path and are not recorded (a record holds state,
    not routing), and :func:`to_keras` refuses a record whose velocity of such a variable is not
    zeros.
    ``iterations`` is the step (Nadam's ``_u_product`` is a function of it). Keras's rules differ
    from uniopt's (``epsilon`` in the "epsilon hat" form or inside the root, defaults), so a run
    continued under uniopt follows uniopt's rules from there.
    """
    owner = f"{PACKAGE}.from_keras"
    spec = _native_spec(optimizer, owner)
    variables = list(variables)
    names = spec.slot_names()
    if not optimizer.built:
        slots = [{n: np.asarray(spec.init_slot(n, _numpy(v), npx)) for n in names} for v in variables]
        step = 0
    else:
        lists = _native_lists(optimizer, spec, owner)
        slots = []
        for i, v in enumerate(variables):
            try:
                index = optimizer._get_variable_index(v)
            except KeyError:
                raise ValueError(
                    f"{owner}: variable {i} ({v.path}) is not one this optimizer was built for"
                ) from None
            in_use = spec.slots_in_use(_shape(v))
            slots.append(
                {
                    n: _KERAS_SLOTS[type(spec)][n].to_uniopt(_numpy(lists[n][index]), spec.lr)
                    if n in in_use and lists[n][index] is not None
                    # a placeholder (Adafactor's r and c of a vector: Keras's int32 dummies), or a
                    # slot Keras keeps no variable for (Muon's velocity of a Muon-stepped variable)
                    else np.asarray(spec.init_slot(n, _numpy(v), npx))
                    for n in names
                }
            )
        step = int(keras.ops.convert_to_numpy(optimizer.iterations))
    record = make_state(spec, step, slots, [_shape(v) for v in variables], [_dtype(v) for v in variables])
    return dataclasses.replace(record, convention="keras")


def to_keras(
    state: PortableState,
    optimizer: keras.optimizers.Optimizer,
    variables: Sequence[Any],
    *,
    hyperparameters: bool = True,
) -> None:
    """Load a record into a Keras optimizer of the same algorithm (the inverse of :func:`from_keras`;
    built here if it is not). Checked first; nothing is assigned on a mismatch."""
    owner = f"{PACKAGE}.to_keras"
    spec = _native_spec(optimizer, owner)
    variables = list(variables)
    shapes, dtypes = [_shape(v) for v in variables], [_dtype(v) for v in variables]
    check_compatible(state, spec, shapes, dtypes, hyperparameters=hyperparameters, owner=owner)
    if not optimizer.built:
        optimizer.build(variables)
    lists = _native_lists(optimizer, spec, owner)
    indices = []
    for i, v in enumerate(variables):
        try:
            indices.append(optimizer._get_variable_index(v))
        except KeyError:
            raise ValueError(
                f"{owner}: variable {i} ({v.path}) is not one this optimizer was built for"
            ) from None
    _check_unkept(
        state, [{n: lists[n][index] for n in lists} for index in indices], owner, "Keras's optimizer"
    )
    for slots, index, shape in zip(state.slots, indices, shapes, strict=True):
        in_use = spec.slots_in_use(shape)
        for name, value in slots.items():
            # placeholders stay Keras's own (Adafactor's dummy r and c); Keras keeps no variable for
            # Muon's velocity of a Muon-stepped variable (the record's is zeros: checked above)
            if name in in_use and lists[name][index] is not None:
                lists[name][index].assign(_KERAS_SLOTS[type(spec)][name].to_keras(value, spec.lr))
    if isinstance(optimizer, keras.optimizers.Nadam):
        _replay_nadam_u_product(optimizer, state.step)
    optimizer.iterations.assign(state.step)


def _replay_nadam_u_product(optimizer: keras.optimizers.Nadam, step: int) -> None:
    """Keras's Nadam keeps one more variable, ``_u_product`` (the product of its momentum schedule,
    a function of the step alone): set it to what ``step`` steps leave there, by Keras's own
    expression (``keras/src/optimizers/nadam.py``, ``_backend_update_step``), step by step, in the
    variable's dtype (a declared exception: no slot of a parameter holds it)."""
    u_product = optimizer._u_product
    u_product.assign(1.0)
    for t in range(1, step + 1):
        power = keras.ops.power(0.96, keras.ops.cast(t, u_product.dtype))
        u_product.assign(u_product * optimizer.beta_1 * (1.0 - 0.5 * power))
