"""Keras 3 optimizers (TensorFlow backend) that execute the uniopt spec.

Each class is a ``keras.optimizers.Optimizer`` holding one validated spec (``optimizer.spec``).
``build`` creates one Keras variable per spec slot and model variable, initialised by the spec's
``init_slot``; ``update_step`` reads the variable and its slots, calls the spec's ``rule`` through
the TF namespace :mod:`uniopt.tf.xp` with the step's scalars (:mod:`uniopt.tf._scalars`) and assigns
the results. Keras's base class keeps what it does around that (gradient clipping, loss scaling,
gradient accumulation, EMA, the ``iterations`` counter, tf.distribute), except weight decay: the
spec applies its own, so Keras's is switched off (``exclude_from_weight_decay`` still works).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import keras
import numpy as np
import tensorflow as tf

import uniopt
from uniopt import Spec

from . import xp
from ._scalars import scalar_source

__all__ = [
    "KERAS_NAMES",
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "RAdam",
    "RMSprop",
    "UnioptOptimizer",
    "from_spec",
]

KERAS_NAMES: dict[str, str] = {
    "learning_rate": "lr",
    "epsilon": "eps",
    "rho": "alpha",
    "beta_1": "betas[0]",
    "beta_2": "betas[1]",
}
"""Keras argument name -> spec hyperparameter. Every other argument keeps the spec's name."""

_SPEC_TO_KERAS = {spec_name: keras_name for keras_name, spec_name in KERAS_NAMES.items()}
_INDEXED = re.compile(r"(\w+)\[(\d+)\]")


def to_spec_kwargs(keras_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Keras-named hyperparameters -> the spec's keyword arguments (``beta_1, beta_2 -> betas``)."""
    out: dict[str, Any] = {}
    parts: dict[str, dict[int, Any]] = {}
    for name, value in keras_kwargs.items():
        target = KERAS_NAMES.get(name, name)
        indexed = _INDEXED.fullmatch(target)
        if indexed:
            parts.setdefault(indexed[1], {})[int(indexed[2])] = value
        else:
            out[target] = value
    for name, items in parts.items():
        out[name] = tuple(items[i] for i in sorted(items))
    return out


def to_keras_kwargs(spec_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`to_spec_kwargs`."""
    out: dict[str, Any] = {}
    for name, value in spec_kwargs.items():
        if isinstance(value, tuple) and f"{name}[0]" in _SPEC_TO_KERAS:
            for i, item in enumerate(value):
                out[_SPEC_TO_KERAS[f"{name}[{i}]"]] = item
        else:
            out[_SPEC_TO_KERAS.get(name, name)] = value
    return out


def _with_keras_name(error: ValueError, owner: str) -> ValueError:
    """The core's message, plus the Keras argument's name where it differs from the spec's."""
    message = str(error)
    field = re.match(r"\w+: ([\w\[\]]+)=", message)
    if field and field[1] in _SPEC_TO_KERAS:
        message += f" (uniopt.tf.{owner} argument {_SPEC_TO_KERAS[field[1]]})"
    return ValueError(message)


class _SlotInit:
    """A Keras initializer giving the spec's initial value of one slot."""

    def __init__(self, spec: Spec, name: str):
        self.spec, self.name = spec, name

    def __call__(self, shape: Any, dtype: Any = None) -> tf.Tensor:
        return self.spec.init_slot(self.name, tf.zeros(shape, dtype=dtype), xp)


def _no_lr() -> float:  # pragma: no cover - replaced before any use
    raise AssertionError("placeholder learning rate")


class _TraceCache:
    """Scalars computed once per traced graph, dtype and spec within one ``apply`` (not tracked)."""

    def __init__(self) -> None:
        self.entries: dict[tuple, tuple[Any, Any]] = {}


_FROZEN = "_uniopt_frozen"


class _ConventionDefault:
    """Signature default of a hyperparameter whose default depends on ``convention``."""

    def __repr__(self) -> str:
        return "<the convention's default>"


CONVENTION_DEFAULT: Any = _ConventionDefault()


class UnioptOptimizer(keras.optimizers.Optimizer):
    """Base of the uniopt Keras optimizers: a Keras optimizer whose update is ``spec.rule``.

    Subclasses set ``spec_class`` and declare the Keras-style signature; every hyperparameter is
    translated by :data:`KERAS_NAMES` and validated by the spec (the core's ``ValueError``). The
    hyperparameters are fixed at construction (the spec is frozen); ``learning_rate`` stays
    settable as in Keras, and may be a float, a ``LearningRateSchedule`` or a callable.

    ``convention`` picks whose formulas and defaults the spec follows: ``"uniopt"`` (default),
    ``"torch"``, ``"keras"``, ``"optax"`` (and ``"official"`` for RAdam). Arguments left at
    :data:`CONVENTION_DEFAULT` take that convention's default, so
    ``uniopt.tf.RMSprop(convention="keras")`` is ``keras.optimizers.RMSprop()``'s algorithm.

    Positional arguments are Keras's, in the order of Keras's own class (``keras/src/optimizers/``),
    base arguments (``clipnorm`` ... ``name``) included; arguments Keras lacks are keyword-only.
    ``weight_decay=None`` means 0 (``AdamW`` raises ``ValueError``, as Keras's AdamW does). With
    ``convention="keras"``: a ``learning_rate`` that is not a float, schedule or callable raises
    ``ValueError`` (Keras's check); flags given as 0 or 1 are read as bools; and the learning rate is
    rounded through float32 at every step however it was set (float, ``optimizer.learning_rate =``,
    callable, schedule), as Keras's float32 learning-rate variable holds it.
    """

    spec_class: ClassVar[type[Spec]]
    # whether weight_decay=None means 0, as in Keras's base optimizer (its AdamW refuses None)
    weight_decay_none_is_zero: ClassVar[bool] = True
    # whether Keras's own update of an IndexedSlices gradient with repeated indices equals the
    # update of the densified gradient (duplicates summed): SGD's is linear in the gradient; the
    # others scatter-add each slice's square into their moments
    sparse_duplicates_match_keras: ClassVar[bool] = False
    # arguments Keras refuses unless they are Python floats (a tensor or NumPy scalar included):
    # passed to the spec as given, whose keras convention makes the same check
    keras_checks_float: ClassVar[tuple[str, ...]] = ()

    def __init__(self, learning_rate: Any, **kwargs: Any):
        owner = f"uniopt.tf.{type(self).__name__}"
        hyper_names = {n for f in dataclasses.fields(self.spec_class) for n in _keras_names(f.name)}
        hyper_names.discard("learning_rate")
        # a 1-element tensor or array hyperparameter (beta_1=tf.constant(0.9)) is its value, as
        # Keras's ops read it
        hyper = {
            k: v if k in self.keras_checks_float else _host_scalar(v)
            for k, v in ((k, kwargs.pop(k)) for k in list(kwargs) if k in hyper_names)
        }
        if "weight_decay" in hyper and hyper["weight_decay"] is None:
            if not self.weight_decay_none_is_zero:
                raise ValueError(  # keras.optimizers.AdamW's refusal, in its words
                    f"{owner}: Argument `weight_decay` must be a float. Received: weight_decay=None "
                    "(expected weight_decay >= 0)"
                )
            hyper["weight_decay"] = 0.0  # Keras's "no weight decay"
        hyper = {k: v for k, v in hyper.items() if v is not CONVENTION_DEFAULT}  # the spec fills them
        dynamic = isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule) or callable(
            learning_rate
        )
        spec_kwargs = to_spec_kwargs(hyper)
        keras_convention = spec_kwargs.get("convention") == "keras"
        if keras_convention:  # Keras reads its flags by truth value: nesterov=1, amsgrad=0 work there
            for field in dataclasses.fields(self.spec_class):
                value = spec_kwargs.get(field.name)
                if field.type in ("bool", bool) and _is_zero_or_one(value):
                    spec_kwargs[field.name] = bool(value)
        if not dynamic and learning_rate is not CONVENTION_DEFAULT:
            if keras_convention and not isinstance(learning_rate, float):
                raise ValueError(  # keras.optimizers.Optimizer's own check, same wording
                    f"{owner}: Argument `learning_rate` should be float, or an instance of "
                    "LearningRateSchedule, or a callable (that takes in the current iteration value "
                    f"and returns the corresponding learning rate value). Received instead: "
                    f"learning_rate={learning_rate!r}"
                )
            spec_kwargs["lr"] = learning_rate
        try:
            spec = self.spec_class(**spec_kwargs)
        except ValueError as exc:
            raise _with_keras_name(exc, type(self).__name__) from None
        except TypeError as exc:  # an argument the spec does not know
            raise ValueError(f"{owner}: {exc}") from None
        # a float lr goes to a float64 variable of ours (below), so Keras must not make its floatx one
        super().__init__(learning_rate=learning_rate if dynamic else _no_lr, weight_decay=None, **kwargs)
        if not dynamic:
            self._learning_rate = self._exact_learning_rate_variable(float(spec.lr))
        self._spec = spec
        self._spec_without_decay = spec.replace(weight_decay=0.0) if spec.weight_decay != 0 else spec
        self._uniopt_cache = _TraceCache()
        self.weight_decay = float(spec.weight_decay)
        for name, value in to_keras_kwargs(self._hyperparameters()).items():
            setattr(self, name, value)
        setattr(self, _FROZEN, True)

    # -- construction -------------------------------------------------------------------------
    def _hyperparameters(self) -> dict[str, Any]:
        """The spec's hyperparameters other than lr (which Keras keeps in ``learning_rate``)."""
        return {k: v for k, v in self._spec.hyperparameters.items() if k != "lr"}

    def _exact_learning_rate_variable(self, lr: float) -> Any:
        """A float learning rate lives in a float64 variable: the spec's lr exactly, in checkpoints
        and in ``get_config`` (Keras's own is ``floatx``, which would round 0.01 to float32). It is
        tracked where Keras tracks its own, right after ``iterations``."""
        with keras.name_scope(self.name, caller=self):
            variable = keras.Variable(
                lr, name="learning_rate", dtype="float64", trainable=False, aggregation="only_first_replica"
            )
        self._track_variable(variable)
        return variable

    @property
    def learning_rate(self) -> Any:
        return keras.optimizers.Optimizer.learning_rate.fget(self)

    @learning_rate.setter
    def learning_rate(self, learning_rate: Any) -> None:
        """Keras's setter; under ``convention="keras"`` a value assigned to the learning-rate
        variable is stored rounded through float32, as Keras's float32 variable stores it, so a
        callback reading the rate back and compounding it (``LearningRateScheduler(lambda e, lr:
        lr * 0.9)``) sees Keras's values."""
        spec = self.__dict__.get("_spec")
        if (
            spec is not None
            and spec.convention == "keras"
            and not callable(learning_rate)
            and not isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)
        ):
            learning_rate = float(np.float32(keras.ops.convert_to_numpy(learning_rate)))
        keras.optimizers.Optimizer.learning_rate.fset(self, learning_rate)

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, _FROZEN, False) and (name == "weight_decay" or name in self._keras_hyper_names()):
            raise AttributeError(
                f"uniopt.tf.{type(self).__name__}: {name} is fixed at construction (the spec is "
                "frozen); build a new optimizer, e.g. from_config({**get_config(), ...})"
            )
        super().__setattr__(name, value)

    def _keras_hyper_names(self) -> set[str]:
        return set(to_keras_kwargs(self._hyperparameters()))

    @property
    def spec(self) -> Spec:
        """The uniopt spec this optimizer executes (with a schedule, its ``lr`` is not used)."""
        return self._spec

    # -- Keras contract -----------------------------------------------------------------------
    def build(self, variables: list[Any]) -> None:
        if self.built:
            return
        super().build(variables)
        self._uniopt_slots = {
            name: self.add_optimizer_variables(variables, name, initializer=_SlotInit(self._spec, name))
            for name in self._spec.slot_names()
        }

    def slots(self, variable: Any) -> dict[str, Any]:
        """The spec's slots of model ``variable``, keyed by the core's slot names (e.g. exp_avg)."""
        index = self._get_variable_index(variable)
        return {name: self._uniopt_slots[name][index] for name in self._spec.slot_names()}

    def apply(self, grads: Any, trainable_variables: Any = None) -> Any:
        self._uniopt_cache.entries.clear()
        try:
            return super().apply(grads, trainable_variables)
        finally:
            self._uniopt_cache.entries.clear()

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        if isinstance(gradient, tf.IndexedSlices):
            self._warn_densified()
        spec = self._spec_for(variable)
        slot_vars = self.slots(variable)
        param = tf.convert_to_tensor(variable)
        grad = tf.cast(tf.convert_to_tensor(gradient), param.dtype)
        slots = {name: tf.convert_to_tensor(v) for name, v in slot_vars.items()}
        sc = self._scalars(spec, param.dtype, learning_rate)
        new_param, new_slots = spec.rule(param, grad, slots, sc, xp)
        for name, value in new_slots.items():
            self.assign(slot_vars[name], value)
        self.assign(variable, new_param)

    def _warn_densified(self) -> None:
        """Once per optimizer, under ``convention="keras"``: say how a sparse gradient's update can
        differ from Keras's (see docs/tf.md, "IndexedSlices gradients")."""
        if self._spec.convention != "keras" or self.sparse_duplicates_match_keras:
            return
        if getattr(self, "_uniopt_warned_sparse", False):
            return
        self._uniopt_warned_sparse = True
        name = type(self).__name__
        warnings.warn(
            f"uniopt.tf.{name}: an IndexedSlices gradient is densified (repeated indices summed) "
            f"before the update; keras.optimizers.{name} adds each slice's square to its moments "
            "separately, so rows with repeated indices (embedding lookups) get different values",
            UserWarning,
            stacklevel=3,
        )

    def _spec_for(self, variable: Any) -> Spec:
        """The spec, or the same spec without weight decay for variables excluded from it."""
        if self._spec is self._spec_without_decay or self._use_weight_decay(variable):
            return self._spec
        return self._spec_without_decay

    def _scalars(self, spec: Spec, dtype: tf.DType, learning_rate: Any) -> Any:
        """The spec's scalars for this step. Under ``convention="keras"`` the learning rate first
        goes through float32, however it was given (float, ``optimizer.learning_rate = x``, a
        callable, a schedule), as Keras's float32 learning-rate variable and schedules hold it."""
        source = scalar_source(spec, dtype.name)
        as_keras = tf.float32 if spec.convention == "keras" else None
        if tf.executing_eagerly():
            step = int(keras.ops.convert_to_numpy(self.iterations)) + 1
            lr = tf.cast(learning_rate, as_keras) if as_keras else learning_rate
            return source.eager(step, float(keras.ops.convert_to_numpy(lr)))
        graph = tf.compat.v1.get_default_graph()
        key = (id(graph), spec, dtype.name, id(learning_rate))
        hit = self._uniopt_cache.entries.get(key)
        if hit is not None and hit[0] is graph:
            return hit[1]
        step = tf.cast(tf.convert_to_tensor(self.iterations), tf.int64) + 1
        lr = tf.convert_to_tensor(learning_rate)
        lr = tf.cast(lr, as_keras) if as_keras else lr
        scalars = source.traced(step, lr, type(self).__name__)
        self._uniopt_cache.entries[key] = (graph, scalars)
        return scalars

    def _apply_weight_decay(self, variables: Any) -> None:
        """Keras's weight decay is off: the spec's rule applies ``weight_decay`` itself."""

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(to_keras_kwargs(self._hyperparameters()))
        return config


def _keras_names(spec_field: str) -> list[str]:
    names = [k for k, v in KERAS_NAMES.items() if v == spec_field or v.startswith(f"{spec_field}[")]
    return names or [spec_field]


def _is_zero_or_one(value: Any) -> bool:
    """An integer (or NumPy bool) 0 or 1 that is not already a Python bool."""
    return isinstance(value, (int, np.integer, np.bool_)) and not isinstance(value, bool) and value in (0, 1)


def _host_scalar(value: Any) -> Any:
    """A 1-element tensor, variable or array as its Python value; anything else unchanged."""
    if isinstance(value, (tf.Tensor, tf.Variable, keras.Variable, np.ndarray)) and np.size(value) == 1:
        return np.asarray(keras.ops.convert_to_numpy(value)).item()
    return value


def _np_scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _arguments(scope: dict[str, Any]) -> dict[str, Any]:
    """A subclass ``__init__``'s arguments (its ``locals()``) as keywords for the base ``__init__``."""
    named = {k: v for k, v in scope.items() if k not in ("self", "__class__", "kwargs")}
    return {**named, **scope["kwargs"]}


_register = keras.saving.register_keras_serializable(package="uniopt")


@_register
class SGD(UnioptOptimizer):
    """:class:`uniopt.SGD` (momentum, Nesterov, dampening) as a Keras optimizer.

    Defaults are uniopt's: ``learning_rate=1e-3`` (Keras 0.01). The momentum buffer holds gradients,
    not lr-scaled velocities as in Keras's SGD, so the two agree only for a constant lr;
    ``convention="keras"`` is Keras's SGD (velocities, decoupled weight decay, ``learning_rate=0.01``).
    """

    spec_class = uniopt.SGD
    sparse_duplicates_match_keras = True
    keras_checks_float = ("momentum",)

    def __init__(
        self,
        learning_rate=CONVENTION_DEFAULT,
        momentum=0.0,
        nesterov=False,
        weight_decay=0.0,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        *,
        dampening=0.0,
        maximize=False,
        convention="uniopt",
        **kwargs,
    ):
        super().__init__(**_arguments(locals()))


@_register
class Adagrad(UnioptOptimizer):
    """:class:`uniopt.Adagrad` as a Keras optimizer.

    Defaults are uniopt's (PyTorch's): ``learning_rate=1e-2`` (Keras 1e-3),
    ``initial_accumulator_value=0.0`` (Keras 0.1), ``epsilon=1e-10`` added outside the square
    root (Keras 1e-7 inside); ``lr_decay`` as in PyTorch. ``convention="keras"`` is Keras's Adagrad
    with its defaults.
    """

    spec_class = uniopt.Adagrad

    def __init__(
        self,
        learning_rate=CONVENTION_DEFAULT,
        initial_accumulator_value=CONVENTION_DEFAULT,
        epsilon=CONVENTION_DEFAULT,
        weight_decay=0.0,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        *,
        lr_decay=0.0,
        maximize=False,
        convention="uniopt",
        **kwargs,
    ):
        super().__init__(**_arguments(locals()))


@_register
class RMSprop(UnioptOptimizer):
    """:class:`uniopt.RMSprop` (centered, momentum) as a Keras optimizer.

    Defaults are uniopt's (PyTorch's): ``learning_rate=1e-2`` (Keras 1e-3), ``rho=0.99`` (Keras
    0.9), ``epsilon=1e-8`` outside the square root (Keras 1e-7 inside); the momentum buffer does not
    include the learning rate.
    """

    spec_class = uniopt.RMSprop

    def __init__(
        self,
        learning_rate=CONVENTION_DEFAULT,
        rho=CONVENTION_DEFAULT,
        momentum=0.0,
        epsilon=CONVENTION_DEFAULT,
        centered=False,
        weight_decay=0.0,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        *,
        maximize=False,
        convention="uniopt",
        **kwargs,
    ):
        super().__init__(**_arguments(locals()))


@_register
class Adam(UnioptOptimizer):
    """:class:`uniopt.Adam` (AMSGrad, L2 weight decay) as a Keras optimizer.

    Defaults are uniopt's: ``epsilon=1e-8`` added to the bias-corrected ``sqrt(v_hat)`` (Keras: 1e-7
    in the "epsilon hat" form). ``weight_decay`` is L2 (added to the gradient), as in PyTorch's Adam;
    use :class:`AdamW` for decoupled decay.
    """

    spec_class = uniopt.Adam

    def __init__(
        self,
        learning_rate=1e-3,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=CONVENTION_DEFAULT,
        amsgrad=False,
        weight_decay=CONVENTION_DEFAULT,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        *,
        maximize=False,
        convention="uniopt",
        **kwargs,
    ):
        super().__init__(**_arguments(locals()))


@_register
class AdamW(UnioptOptimizer):
    """:class:`uniopt.AdamW` (decoupled weight decay, ``p *= 1 - lr*wd``) as a Keras optimizer.

    Defaults are uniopt's: ``weight_decay=1e-2`` (Keras 0.004), ``epsilon=1e-8`` (Keras 1e-7, eps-hat).
    """

    spec_class = uniopt.AdamW
    weight_decay_none_is_zero = False

    def __init__(
        self,
        learning_rate=1e-3,
        weight_decay=CONVENTION_DEFAULT,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=CONVENTION_DEFAULT,
        amsgrad=False,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        *,
        maximize=False,
        convention="uniopt",
        **kwargs,
    ):
        super().__init__(**_arguments(locals()))


@_register
class RAdam(UnioptOptimizer):
    """:class:`uniopt.RAdam` (rectified Adam; Keras 3 ships none) as a Keras optimizer.

    Rectifies when rho_t > 5 (PyTorch), eps on ``sqrt(v_hat)``, momentum step on unrectified steps
    unless ``degenerated_to_sgd=False``; ``decoupled_weight_decay=True`` for ``p *= 1 - lr*wd``.
    """

    spec_class = uniopt.RAdam

    def __init__(
        self,
        learning_rate=1e-3,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        weight_decay=0.0,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name=None,
        *,
        decoupled_weight_decay=False,
        degenerated_to_sgd=CONVENTION_DEFAULT,
        maximize=False,
        convention="uniopt",
        **kwargs,
    ):
        super().__init__(**_arguments(locals()))


_BY_SPEC: dict[type[Spec], type[UnioptOptimizer]] = {
    cls.spec_class: cls for cls in (SGD, Adagrad, RMSprop, Adam, AdamW, RAdam)
}


def from_spec(spec: Spec, **keras_kwargs: Any) -> UnioptOptimizer:
    """The Keras optimizer executing ``spec``; ``keras_kwargs`` are base-optimizer arguments
    (``clipnorm``, ``use_ema``, ``name``, ...) or a ``learning_rate`` schedule replacing ``spec.lr``."""
    try:
        cls = _BY_SPEC[type(spec)]
    except KeyError:
        raise TypeError(f"no uniopt.tf optimizer for {type(spec).__name__}") from None
    kwargs = {k: _np_scalar(v) for k, v in to_keras_kwargs(spec.hyperparameters).items()}
    kwargs.update(keras_kwargs)
    return cls(**kwargs)
