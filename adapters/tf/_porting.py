"""Optimizer state between ``uniopt.tf`` (or Keras's own optimizers) and :class:`uniopt.PortableState`.

Parameters are the model variables in the order given (``model.trainable_variables``). The step is
Keras's ``optimizer.iterations``; the record's ``lr`` is the learning rate in effect.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import array_api_compat.numpy as npx
import keras
import numpy as np

import uniopt
from uniopt import PortableState, Spec
from uniopt.porting import check_compatible, make_state

from .optimizers import UnioptOptimizer

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
        if optimizer.built and optimizer._spec_for(v) is not spec:
            raise ValueError(
                f"{owner}: variable {i} ({v.path}) is excluded from weight decay; a PortableState holds "
                "one set of hyperparameters"
            )
    return spec.replace(lr=_learning_rate(optimizer))


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


def export_state(optimizer: UnioptOptimizer, variables: Sequence[Any]) -> PortableState:
    """The state of a ``uniopt.tf`` optimizer for ``variables`` as a :class:`uniopt.PortableState`.

    An optimizer not built yet has step 0 and the spec's initial slots. Raises ``ValueError`` for
    state a record does not hold (gradient accumulation, EMA, variables excluded from weight decay).
    """
    owner = "uniopt.tf.export_state"
    if not isinstance(optimizer, UnioptOptimizer):
        raise TypeError(
            f"{owner}: expected a uniopt.tf optimizer, got {type(optimizer).__name__}; for a Keras "
            "optimizer use uniopt.tf.from_keras"
        )
    _check_portable(optimizer, owner)
    variables = list(variables)
    spec = _spec(optimizer, variables, owner)
    names = spec.slot_names()
    if optimizer.built:
        slots = [{n: _numpy(s[n]) for n in names} for s in _slot_variables(optimizer, variables, owner)]
        step = int(keras.ops.convert_to_numpy(optimizer.iterations))
    else:
        slots = [{n: np.asarray(spec.init_slot(n, _numpy(v), npx)) for n in names} for v in variables]
        step = 0
    return make_state(spec, step, slots, [_shape(v) for v in variables], [_dtype(v) for v in variables])


def import_state(
    optimizer: UnioptOptimizer,
    state: PortableState,
    variables: Sequence[Any],
    *,
    hyperparameters: bool = True,
) -> None:
    """Load ``state`` into a ``uniopt.tf`` optimizer for ``variables`` (built here if it is not).

    Everything is checked before any variable is assigned: the optimizer, variable count, shapes,
    dtypes, slots, hyperparameters (unless ``hyperparameters=False``) and that a built optimizer
    tracks these variables. Then ``iterations`` and every slot variable are assigned.
    """
    owner = "uniopt.tf.import_state"
    if not isinstance(optimizer, UnioptOptimizer):
        raise TypeError(
            f"{owner}: expected a uniopt.tf optimizer, got {type(optimizer).__name__}; for a Keras "
            "optimizer use uniopt.tf.to_keras"
        )
    _check_portable(optimizer, owner)
    variables = list(variables)
    spec = _spec(optimizer, variables, owner)
    shapes, dtypes = [_shape(v) for v in variables], [_dtype(v) for v in variables]
    check_compatible(state, spec, shapes, dtypes, hyperparameters=hyperparameters, owner=owner)
    if optimizer.built:
        _slot_variables(optimizer, variables, owner)
    else:
        optimizer.build(variables)
    for slots, slot_vars in zip(state.slots, _slot_variables(optimizer, variables, owner), strict=True):
        for name, value in slots.items():
            slot_vars[name].assign(value)
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


_KERAS_SLOTS: dict[type[Spec], dict[str, _Slot]] = {
    uniopt.Adam: {
        "exp_avg": _Slot("_momentums", *_same()),
        "exp_avg_sq": _Slot("_velocities", *_same()),
        "max_exp_avg_sq": _Slot("_velocity_hats", *_same()),
    },
    uniopt.SGD: {"momentum_buffer": _Slot("momentums", *_scaled(lambda lr: -lr))},
    uniopt.RMSprop: {
        "square_avg": _Slot("_velocities", *_same()),
        "grad_avg": _Slot("_average_gradients", *_same()),
        "momentum_buffer": _Slot("_momentums", *_scaled(lambda lr: lr)),
    },
    uniopt.Adagrad: {"sum": _Slot("_accumulators", *_same())},
}
_KERAS_SLOTS[uniopt.AdamW] = _KERAS_SLOTS[uniopt.Adam]


def _native_spec(optimizer: keras.optimizers.Optimizer, owner: str) -> Spec:
    """The uniopt spec with a Keras optimizer's hyperparameters (Keras's meaning, see from_keras)."""
    if isinstance(optimizer, UnioptOptimizer):
        raise TypeError(
            f"{owner}: {type(optimizer).__name__} is a uniopt optimizer; use uniopt.tf.export_state"
        )
    _check_portable(optimizer, owner)
    lr = _learning_rate(optimizer)
    wd = float(optimizer.weight_decay or 0.0)
    o = optimizer
    if isinstance(o, keras.optimizers.Adam):  # AdamW is an Adam
        betas = (float(o.beta_1), float(o.beta_2))
        kwargs = {"lr": lr, "betas": betas, "eps": float(o.epsilon), "amsgrad": bool(o.amsgrad)}
        return uniopt.AdamW(weight_decay=wd, **kwargs) if wd else uniopt.Adam(**kwargs)
    if wd:
        raise ValueError(
            f"{owner}: Keras's weight_decay={wd} is decoupled; uniopt's {type(o).__name__} decays through "
            "the gradient (L2), so the record could not say what was run"
        )
    if isinstance(o, keras.optimizers.SGD):
        return uniopt.SGD(lr=lr, momentum=float(o.momentum), nesterov=bool(o.nesterov))
    if isinstance(o, keras.optimizers.RMSprop):
        return uniopt.RMSprop(
            lr=lr,
            alpha=float(o.rho),
            eps=float(o.epsilon),
            momentum=float(o.momentum),
            centered=bool(o.centered),
        )
    if isinstance(o, keras.optimizers.Adagrad):
        return uniopt.Adagrad(
            lr=lr, eps=float(o.epsilon), initial_accumulator_value=float(o.initial_accumulator_value)
        )
    raise TypeError(f"{owner}: {type(o).__name__} is not one of Keras's Adam, AdamW, SGD, RMSprop, Adagrad")


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
    """The state of Keras's ``Adam``, ``AdamW``, ``SGD``, ``RMSprop`` or ``Adagrad`` as a record
    with ``convention="keras"``.

    Conventions assumed (Keras 3): ``learning_rate``, ``beta_1``/``beta_2``, ``epsilon``, ``rho``,
    ``momentum``, ``nesterov``, ``centered``, ``amsgrad`` and ``initial_accumulator_value`` map to
    the spec's fields with Keras's values; Keras's ``weight_decay`` is decoupled (``p -= lr*wd*p``),
    so Adam with a decay is recorded as AdamW and the other optimizers refuse it. Slots: Adam's
    ``momentums``/``velocities``/``velocity_hats`` are ``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq``;
    RMSprop's ``velocities``/``average_gradients`` are ``square_avg``/``grad_avg``; Adagrad's
    ``accumulators`` are ``sum``; SGD's ``momentums`` hold velocities ``-lr * momentum_buffer`` and
    RMSprop's ``momentums`` ``lr * momentum_buffer`` (divided back here with the current lr, exact
    when it is a power of two). ``iterations`` is the step. Keras's rules differ from uniopt's
    (``epsilon`` in the "epsilon hat" form or inside the root, defaults), so a run continued under
    uniopt follows uniopt's rules from there.
    """
    owner = "uniopt.tf.from_keras"
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
            slots.append(
                {n: _KERAS_SLOTS[type(spec)][n].to_uniopt(_numpy(lists[n][index]), spec.lr) for n in names}
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
    owner = "uniopt.tf.to_keras"
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
    for slots, index in zip(state.slots, indices, strict=True):
        for name, value in slots.items():
            lists[name][index].assign(_KERAS_SLOTS[type(spec)][name].to_keras(value, spec.lr))
    optimizer.iterations.assign(state.step)
