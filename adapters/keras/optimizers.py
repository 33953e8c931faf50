"""Keras 3 optimizers that execute the uniopt spec, one per row of the table, on every Keras backend.

Each class is a ``keras.optimizers.Optimizer`` holding one validated spec (``optimizer.spec``).
``build`` creates one Keras variable per spec slot and model variable, of the shape the spec gives
(``spec.slot_shape``: the variable's own except for Adafactor's factored statistics), initialised
by the spec's ``init_slot``; ``update_step`` reads the variable and its slots, calls the spec's
``rule`` with the step's scalars and assigns the results. Keras's base class keeps what it does
around that (gradient clipping, loss scaling, gradient accumulation, EMA, the ``iterations``
counter, tf.distribute), except weight decay: the spec applies its own, so Keras's is switched off
(``exclude_from_weight_decay`` still works).

Nothing here depends on the backend. What does goes through the backend's binding
(:func:`uniopt.keras._binding.binding`): the array namespace the rule runs on (TensorFlow:
:mod:`uniopt.tf.xp`; JAX: uniopt.jax's; torch: uniopt.torch's), the step's scalars (eager and
traced), reading variables and gradients as arrays, and sparse gradients. On TensorFlow these
classes are uniopt.tf's (``uniopt.keras.RAdam is uniopt.tf.RAdam``) and their messages say
``uniopt.tf``; elsewhere ``uniopt.keras``.

The classes are generated from :data:`uniopt.registry.TABLE`: every row with a
:class:`~uniopt.registry.KerasNames` (``keras=``) gets a class named as Keras names it (``Nadam``;
the spec's name, ``NAdam``, is an alias) or, where Keras has none, as the spec (``RAdam``). Its
signature is Keras's: the row's ``positional`` arguments (Keras's own, in Keras's order), then the
base ones (``clipnorm`` ... ``name``), then every other spec field keyword-only, in the spec's field
order, named by the spec. Defaults are the spec's, or :data:`CONVENTION_DEFAULT` where the spec's
default depends on ``convention``. The row's ``names`` (with
:data:`uniopt.registry.KERAS_COMMON_NAMES`) translate Keras's argument names to the spec's, per
class (``RMSprop.KERAS_NAMES["rho"] == "alpha"``, ``Adadelta``'s ``rho`` is ``rho``). A row whose
spec keeps a history or has an evaluation view (Schedule-Free AdamW) gets the base
:class:`uniopt.keras.HistoryOptimizer` (``_history.py``): history variables and train/eval modes;
a row with Keras's routing arguments (Muon) :class:`~uniopt.keras._routed.AdamRoutedOptimizer`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import keras
import numpy as np
from keras.src.optimizers.base_optimizer import BaseOptimizer

from uniopt import Spec
from uniopt._validate import check_state_dtypes_mapping
from uniopt.registry import KERAS_COMMON_NAMES, TABLE, OptimizerInfo

from ._binding import PACKAGE, binding, dtype_name

KERAS_NAMES: dict[str, str] = dict(KERAS_COMMON_NAMES)
"""Keras argument name -> spec hyperparameter, for the names every optimizer shares
(``learning_rate``, ``epsilon``, ``beta_1``, ``beta_2``). Each class's own ``KERAS_NAMES`` adds its
row's names (``uniopt.tf.RMSprop.KERAS_NAMES["rho"] == "alpha"``); any other argument keeps the
spec's name."""

_INDEXED = re.compile(r"(\w+)\[(\d+)\]")


def _class_of(optimizer: Any) -> Any:
    """The uniopt.tf class (or instance) of ``optimizer``: a uniopt.tf class or instance, a spec
    class or instance, or an optimizer's name (``"RMSprop"``, ``"Nadam"``); ``None`` stays ``None``."""
    if optimizer is None:
        return None
    if isinstance(optimizer, str):
        cls = _BY_NAME.get(optimizer)
        if cls is None:
            raise ValueError(f"no {PACKAGE} optimizer named {optimizer!r}; known: {', '.join(_BY_NAME)}")
        return cls
    if isinstance(optimizer, Spec):
        optimizer = type(optimizer)
    if isinstance(optimizer, type) and issubclass(optimizer, Spec):
        if optimizer not in _BY_SPEC:
            raise TypeError(f"no {PACKAGE} optimizer for {optimizer.__name__}")
        return _BY_SPEC[optimizer]
    return optimizer  # a uniopt.tf class or optimizer


def _names_of(optimizer: Any) -> Mapping[str, str]:
    """The Keras-name table of ``optimizer`` (as :func:`_class_of` takes it); ``None``:
    :data:`KERAS_NAMES`."""
    cls = _class_of(optimizer)
    return KERAS_NAMES if cls is None else cls.KERAS_NAMES


def to_spec_kwargs(keras_kwargs: Mapping[str, Any], optimizer: Any = None) -> dict[str, Any]:
    """Keras-named hyperparameters -> the spec's keyword arguments (``beta_1, beta_2 -> betas``).

    ``optimizer`` (a uniopt.tf class, a spec class or instance, or a name such as ``"RMSprop"``)
    selects its row's names (RMSprop's ``rho`` is ``alpha``); without it only the shared
    :data:`KERAS_NAMES` are translated. An argument whose ``None`` Keras reads as a setting (the
    row's ``KerasNames.none_means``) becomes that setting: of its own field (Muon's
    ``adam_weight_decay=None`` is 0), or of another field, its own taking the spec's default
    (Muon's ``rms_rate=None`` is ``adjust_lr_fn="none"`` with the default ``rms_rate``);
    ``ValueError`` if that other field is also given otherwise.
    """
    cls = _class_of(optimizer)
    names = _names_of(optimizer)
    none_means = {} if cls is None else cls.KERAS_NONE_MEANS
    out: dict[str, Any] = {}
    parts: dict[str, dict[int, Any]] = {}
    keras_kwargs = dict(keras_kwargs)
    to_keras = {spec_name: keras_name for keras_name, spec_name in names.items()}
    for name, (field, meaning) in none_means.items():
        if name not in keras_kwargs or keras_kwargs[name] is not None:
            continue
        own = names.get(name, name)
        if own == field:
            keras_kwargs[name] = meaning
            continue
        other = to_keras.get(field, field)
        given = keras_kwargs.get(other, meaning)
        if given != meaning:
            raise ValueError(
                f"{PACKAGE}.{cls.__name__}: {name}=None means {field}={meaning!r}, and "
                f"{other}={given!r} was given too; pass one of them"
            )
        keras_kwargs[other] = meaning
        keras_kwargs[name] = _spec_fields_of(cls)[own].default
    for name, value in keras_kwargs.items():
        target = names.get(name, name)
        indexed = _INDEXED.fullmatch(target)
        if indexed:
            parts.setdefault(indexed[1], {})[int(indexed[2])] = value
        else:
            out[target] = value
    for name, items in parts.items():
        out[name] = tuple(items[i] for i in sorted(items))
    return out


def to_keras_kwargs(spec_kwargs: Mapping[str, Any], optimizer: Any = None) -> dict[str, Any]:
    """The inverse of :func:`to_spec_kwargs` (same ``optimizer``): a field holding the setting
    another argument's ``None`` stands for (``adjust_lr_fn="none"``) is written as that ``None``
    (``rms_rate=None``) where the argument's own field holds its default (else both are written as
    they are); an argument whose ``None`` is a value of its own field (Muon's
    ``adam_weight_decay=None``, no decay: 0) keeps the value."""
    cls = _class_of(optimizer)
    to_keras = {spec_name: keras_name for keras_name, spec_name in _names_of(optimizer).items()}
    out: dict[str, Any] = {}
    for name, value in spec_kwargs.items():
        if isinstance(value, tuple) and f"{name}[0]" in to_keras:
            for i, item in enumerate(value):
                out[to_keras[f"{name}[{i}]"]] = item
        else:
            out[to_keras.get(name, name)] = value
    for keras_name, (field, meaning) in ({} if cls is None else cls.KERAS_NONE_MEANS).items():
        own = _names_of(optimizer).get(keras_name, keras_name)
        if own == field:  # None is a value of the field itself (no decay: 0), which is kept
            continue
        default = _spec_fields_of(cls)[own].default
        if spec_kwargs.get(field) == meaning and spec_kwargs.get(own, default) == default:
            out.pop(to_keras.get(field, field))
            out[keras_name] = None
    return out


def _spec_fields_of(cls: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls.spec_class)}


def _with_keras_name(error: ValueError, cls: type[UnioptOptimizer]) -> ValueError:
    """The core's message, plus the Keras argument's name where it differs from the spec's."""
    message = str(error)
    field = re.match(r"\w+: ([\w\[\]]+)=", message)
    to_keras = {spec_name: keras_name for keras_name, spec_name in cls.KERAS_NAMES.items()}
    if field and field[1] in to_keras:
        message += f" ({PACKAGE}.{cls.__name__} argument {to_keras[field[1]]})"
    return ValueError(message)


class _SlotInit:
    """A Keras initializer giving the spec's initial value of one slot: from zeros of the model
    variable's shape (``param_shape``; the slot's own shape, ``spec.slot_shape``, may differ:
    Adafactor's factored statistics) and the dtype, or, given ``reference`` (the model variable),
    from its value (Schedule-Free's ``z`` is a copy of the parameter)."""

    def __init__(self, spec: Spec, name: str, reference: Any = None, param_shape: Any = None):
        self.spec, self.name, self.reference, self.param_shape = spec, name, reference, param_shape

    def __call__(self, shape: Any, dtype: Any = None) -> Any:
        b = binding()
        if self.reference is None:
            param_shape = shape if self.param_shape is None else self.param_shape
            value = self.spec.init_slot(self.name, b.zeros(param_shape, dtype), b.slot_namespace())
        else:
            value = self.spec.init_slot(self.name, b.as_array(self.reference, dtype), b.slot_namespace())
        if tuple(int(n) for n in value.shape) != tuple(int(n) for n in shape):
            raise ValueError(  # pragma: no cover - the spec's init_slot and slot_shape disagree
                f"{self.spec.name}: init_slot({self.name!r}) gave shape {tuple(value.shape)}, the "
                f"variable has {tuple(shape)}"
            )
        return value


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

    Subclasses (generated from the table, see the module docstring) set ``spec_class`` and the
    row's Keras names (``KERAS_NAMES``) and declare the Keras-style signature; every hyperparameter
    is translated by ``KERAS_NAMES`` and validated by the spec (the core's ``ValueError``). The
    hyperparameters are fixed at construction (the spec is frozen); ``learning_rate`` stays
    settable as in Keras, and may be a float, a ``LearningRateSchedule`` or a callable.

    ``convention`` picks whose formulas and defaults the spec follows: ``"uniopt"`` (default),
    ``"torch"``, ``"keras"``, ``"optax"`` (and ``"official"`` for RAdam). Arguments left at
    :data:`CONVENTION_DEFAULT` take that convention's default, so
    ``uniopt.tf.RMSprop(convention="keras")`` is ``keras.optimizers.RMSprop()``'s algorithm.

    Positional arguments are Keras's, in the order of Keras's own class (``keras/src/optimizers/``),
    base arguments (``clipnorm`` ... ``name``) included; arguments Keras lacks are keyword-only.
    ``weight_decay=None`` means 0 (``AdamW`` raises ``ValueError``, as Keras's AdamW does).
    ``state_dtypes`` (keyword only, kept in ``get_config`` where given): slot name -> dtype
    (``"bfloat16"``, ``"float16"``, ``"float32"``, a ``tf.DType``) for the slots of
    ``Spec.lower_precision_slots`` (Adam's ``exp_avg``, ...) whose Keras variables are created in
    that dtype, which every variable's dtype must hold exactly (checked at ``build``, before any
    slot variable exists; ``ValueError`` naming the slot, the variable and the accepted dtypes);
    the step widens such a slot exactly and assigns its new value rounded once to nearest, ties
    to even (docs/conventions.md, "Lower-precision state"). With
    ``convention="keras"``: a ``learning_rate`` that is not a float, schedule or callable raises
    ``ValueError`` (Keras's check); flags given as 0 or 1 are read as bools; and the learning rate is
    rounded through float32 at every step however it was set (float, ``optimizer.learning_rate =``,
    callable, schedule), as Keras's float32 learning-rate variable holds it.
    """

    spec_class: ClassVar[type[Spec]]
    # Keras argument -> spec field: the row's KerasNames.all_names restricted to the spec's fields
    KERAS_NAMES: ClassVar[Mapping[str, str]] = KERAS_NAMES
    # whether weight_decay=None means 0, as in Keras's base optimizer (its AdamW refuses None)
    weight_decay_none_is_zero: ClassVar[bool] = True
    # whether Keras's own update of an IndexedSlices gradient with repeated indices equals the
    # update of the densified gradient (duplicates summed): SGD's is linear in the gradient; the
    # others scatter-add each slice's square into their moments
    sparse_duplicates_match_keras: ClassVar[bool] = False
    # arguments Keras refuses unless they are Python floats (a tensor or NumPy scalar included):
    # passed to the spec as given, whose keras convention makes the same check
    keras_checks_float: ClassVar[tuple[str, ...]] = ()
    # Keras flags that change nothing in Keras's optimizer either (the row's KerasNames.inert):
    # flag -> Keras's default; accepted as bools, kept as attributes and in get_config
    KERAS_INERT: ClassVar[Mapping[str, bool]] = {}
    # Keras argument whose None means a setting of another field (KerasNames.none_means)
    KERAS_NONE_MEANS: ClassVar[Mapping[str, tuple[str, Any]]] = {}
    # spec slot -> the name of its Keras variable (KerasNames.variables; default: the slot's name)
    KERAS_VARIABLES: ClassVar[Mapping[str, str]] = {}

    def __init__(self, learning_rate: Any, **kwargs: Any):
        owner = f"{PACKAGE}.{type(self).__name__}"
        inert = {k: kwargs.pop(k) for k in list(kwargs) if k in self.KERAS_INERT}
        state_dtypes = kwargs.pop("state_dtypes", None)
        hyper_names = {n for f in dataclasses.fields(self.spec_class) for n in self._keras_names(f.name)}
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
        _fill_pairs(hyper, type(self))
        hyper = {k: v for k, v in hyper.items() if v is not CONVENTION_DEFAULT}  # the spec fills them
        dynamic = isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule) or callable(
            learning_rate
        )
        spec_kwargs = to_spec_kwargs(hyper, type(self))
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
            raise _with_keras_name(exc, type(self)) from None
        except TypeError as exc:  # an argument the spec does not know
            raise ValueError(f"{owner}: {exc}") from None
        state_dtypes = _state_dtypes(owner, spec, state_dtypes)
        for name, value in inert.items():
            if keras_convention and _is_zero_or_one(value):
                value = inert[name] = bool(value)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(
                    f"{owner}: {name}={value!r} is not a bool (it changes nothing: Keras's "
                    f"{type(self).__name__} reads it, and its step size is the same either way)"
                )
            inert[name] = bool(value)
        # a float lr goes to a float64 variable of ours (below), so Keras must not make its floatx one
        super().__init__(learning_rate=learning_rate if dynamic else _no_lr, weight_decay=None, **kwargs)
        if not dynamic:
            self._learning_rate = self._exact_learning_rate_variable(float(spec.lr))
        self._spec = spec
        self._state_dtypes = state_dtypes
        self._spec_without_decay = spec.replace(weight_decay=0.0) if spec.weight_decay != 0 else spec
        self._uniopt_cache = _TraceCache()
        self.weight_decay = float(spec.weight_decay)
        for name, value in to_keras_kwargs(self._hyperparameters(), type(self)).items():
            setattr(self, name, value)
        for name, default in self.KERAS_INERT.items():
            setattr(self, name, inert.get(name, default))
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
                lr,
                name="learning_rate",
                dtype=binding().EXACT_LR_DTYPE,
                trainable=False,
                aggregation="only_first_replica",
            )
        self._track_variable(variable)
        return variable

    def _float_learning_rate(self) -> float:
        """The float learning rate the variable stands for: its value, or the spec's ``lr`` where a
        float32 variable (JAX without x64, which has no float64) holds ``float32(spec.lr)``."""
        value = float(keras.ops.convert_to_numpy(self._learning_rate))
        if dtype_name(self._learning_rate.dtype) == "float32" and np.float32(value) == np.float32(
            self._spec.lr
        ):
            return float(self._spec.lr)
        return value

    @property
    def learning_rate(self) -> Any:
        """Keras's getter (``BaseOptimizer.learning_rate``: the schedule's value at this step, the
        callable's value or the variable), the body itself rather than ``property.fget``, which
        ``torch.compile`` cannot trace: a graph break in Keras's torch train step under
        ``fit(jit_compile=True)``."""
        return self._get_current_learning_rate()

    @learning_rate.setter
    def learning_rate(self, learning_rate: Any) -> None:
        """Keras's setter, after the check the constructor makes: a value (not a schedule or a
        callable) must be a real number the spec accepts as ``lr`` (``ValueError`` naming
        ``learning_rate`` and the range otherwise, with the rate unchanged: a negative or NaN rate
        would train, and the model saved with it would not load). Under ``convention="keras"`` a
        value assigned to the learning-rate variable is stored rounded through float32, as Keras's
        float32 variable stores it, so a callback reading the rate back and compounding it
        (``LearningRateScheduler(lambda e, lr: lr * 0.9)``) sees Keras's values."""
        spec = self.__dict__.get("_spec")
        if (
            spec is not None
            and not callable(learning_rate)
            and not isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule)
        ):
            try:
                value = _host_scalar(learning_rate)
            except Exception:  # a traced value (no host value to check): Keras's setter alone
                value = None
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                try:
                    spec.replace(lr=float(value))
                except ValueError as exc:
                    raise _with_keras_name(exc, type(self)) from None
            if spec.convention == "keras":
                learning_rate = float(np.float32(keras.ops.convert_to_numpy(learning_rate)))
        keras.optimizers.Optimizer.learning_rate.fset(self, learning_rate)

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, _FROZEN, False) and (name == "weight_decay" or name in self._keras_hyper_names()):
            raise AttributeError(
                f"{PACKAGE}.{type(self).__name__}: {name} is fixed at construction (the spec is "
                "frozen); build a new optimizer, e.g. from_config({**get_config(), ...})"
            )
        super().__setattr__(name, value)

    def _keras_hyper_names(self) -> set[str]:
        return (
            set(to_keras_kwargs(self._hyperparameters(), type(self)))
            | set(self.KERAS_INERT)
            | set(self.KERAS_NONE_MEANS)
            | {field for field, _ in self.KERAS_NONE_MEANS.values()}
        )

    @classmethod
    def _keras_names(cls, spec_field: str) -> list[str]:
        """The Keras arguments setting ``spec_field`` (``betas``: ``beta_1``, ``beta_2``)."""
        names = [k for k, v in cls.KERAS_NAMES.items() if v == spec_field or v.startswith(f"{spec_field}[")]
        return names or [spec_field]

    @classmethod
    def to_spec_kwargs(cls, keras_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """This optimizer's Keras-named hyperparameters -> the spec's (:func:`to_spec_kwargs`)."""
        return to_spec_kwargs(keras_kwargs, cls)

    @classmethod
    def to_keras_kwargs(cls, spec_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The spec's hyperparameters -> this optimizer's Keras names (:func:`to_keras_kwargs`)."""
        return to_keras_kwargs(spec_kwargs, cls)

    @property
    def spec(self) -> Spec:
        """The uniopt spec this optimizer executes (with a schedule, its ``lr`` is not used)."""
        return self._spec

    # -- Keras contract -----------------------------------------------------------------------
    def build(self, variables: list[Any]) -> None:
        """Keras's ``build``, then one variable per spec slot and model variable, of the shape the
        spec gives (``spec.slot_shape``: the variable's own, except for Adafactor's factored
        statistics and placeholders), in the variable's dtype, initialised by ``spec.init_slot``;
        ``None`` for a variable Keras overwrites with its gradient. A slot shaped like its variable
        is made as Keras makes its own (``add_optimizer_variables``: named ``<path>_<slot>``, the
        variable's layout); any other under the same name."""
        if self.built:
            return
        self._check_state_dtypes(variables)
        super().build(variables)
        spec = self._spec
        if type(spec).slot_shape is Spec.slot_shape:  # every slot shaped like its variable
            self._uniopt_slots = {
                name: self.add_optimizer_variables(variables, name, initializer=_SlotInit(spec, name))
                for name in spec.slot_names()
            }
            return
        self._uniopt_slots = {
            name: [self._slot_variable(v, name) for v in variables] for name in spec.slot_names()
        }

    def _slot_variable(self, variable: Any, name: str) -> Any:
        """Slot ``name`` of model ``variable`` (see :meth:`build`)."""
        if self._overwrite_variable_with_gradient(variable):
            return None
        shape = tuple(int(n) for n in variable.shape)
        slot_shape = self._spec.slot_shape(name, shape)
        initializer = _SlotInit(self._spec, name, param_shape=shape)
        if slot_shape == shape:
            return self.add_variable_from_reference(variable, name, initializer=initializer)
        path = getattr(variable, "path", None) or str(variable.name).replace(":", "_")
        return self.add_variable(
            shape=slot_shape,
            initializer=initializer,
            dtype=variable.dtype,
            name=f"{path.replace('/', '_')}_{name}",
        )

    @property
    def state_dtypes(self) -> dict[str, str]:
        """The slots stored in another dtype than their variable's (``state_dtypes``), by name."""
        return dict(self._state_dtypes)

    def _check_state_dtypes(self, variables: list[Any]) -> None:
        """``ValueError`` before any slot variable exists where a slot of ``state_dtypes`` cannot be
        stored in its dtype beside a variable (:meth:`uniopt.Spec.slot_dtype_refusal`: a slot the
        spec keeps in the variable's dtype, a dtype wider than the variable's, float16 beside
        bfloat16), naming the variable."""
        for v in variables:
            if not self._state_dtypes or self._overwrite_variable_with_gradient(v):
                continue
            for name, dtype in self._state_dtypes.items():
                why = self._spec.slot_dtype_refusal(name, dtype, dtype_name(v.dtype))
                if why is not None:
                    path = getattr(v, "path", None) or v.name
                    raise ValueError(
                        f"{PACKAGE}.{type(self).__name__}: state_dtypes[{name!r}]={dtype!r} for variable "
                        f"{path!r} of dtype {dtype_name(v.dtype)}: {why}"
                    )

    def add_variable_from_reference(
        self, reference_variable: Any, name: Any = None, initializer: Any = "zeros"
    ):
        """Keras's ``add_variable_from_reference`` (named ``<path>_<name>``, the variable's shape and
        layout), in the dtype ``state_dtypes`` gives the slot named ``name`` (its Keras variable
        name, :attr:`KERAS_VARIABLES`); Keras's (the variable's dtype) otherwise."""
        slot = {self.KERAS_VARIABLES.get(n, n): n for n in self._spec.slot_names()}.get(name, name)
        dtype = self._state_dtypes.get(slot)
        if dtype is None or dtype == dtype_name(reference_variable.dtype):
            return super().add_variable_from_reference(reference_variable, name, initializer=initializer)
        if hasattr(reference_variable, "path"):  # Keras's naming (keras/src/optimizers/base_optimizer.py)
            prefix = reference_variable.path.replace("/", "_")
        else:
            prefix = str(reference_variable.name).replace("/", "_").replace(":", "_")
        return self.add_variable(
            shape=reference_variable.shape,
            initializer=initializer,
            dtype=dtype,
            name=f"{prefix}_{name or 'var'}",
            layout=getattr(reference_variable, "_layout", None),
        )

    def slots(self, variable: Any) -> dict[str, Any]:
        """The spec's slots of model ``variable``, keyed by the core's slot names (e.g. exp_avg)."""
        index = self._get_variable_index(variable)
        return {name: self._uniopt_slots[name][index] for name in self._spec.slot_names()}

    def apply(self, grads: Any, trainable_variables: Any = None) -> Any:
        self._check_xla()
        self._uniopt_cache.entries.clear()
        if trainable_variables is not None:  # read once (a generator), here and by Keras's apply
            trainable_variables = list(trainable_variables)
        # outside the try block: under torch.compile its host call is a graph break, which dynamo
        # cannot resume from inside one (it would run this frame eagerly)
        self._before_apply(grads, trainable_variables)
        try:
            return super().apply(grads, trainable_variables)
        finally:
            self._uniopt_cache.entries.clear()

    def _before_apply(self, grads: Any, trainable_variables: Any) -> None:
        """The step's scalars computed when ``apply`` is called (:meth:`_scalars_when_applied`) where
        the binding computes them there, on the variables ``apply`` updates (those given, else the
        optimizer's own), once the optimizer is built (its first ``apply`` builds
        it, and the loop's scalars come from ``before_update_loop``), where there are gradients
        (else Keras's ``apply`` does nothing) and where the learning rate is no callable
        (:meth:`_called_learning_rate`)."""
        if not binding().SCALARS_BEFORE_THE_LOOP or not self.built or len(grads) == 0:
            return
        if self._called_learning_rate():
            return
        self._scalars_when_applied(
            self._trainable_variables if trainable_variables is None else trainable_variables
        )

    def _scalars_when_applied(self, variables: list[Any]) -> None:
        """The step's scalars of ``variables``, from the binding's ``before_apply``."""
        binding().before_apply(self, variables)

    def _check_xla(self) -> None:
        """Under TensorFlow's XLA, a ``ValueError`` saying why this optimizer's scalars cannot be
        computed there, before anything is built or changed (the binding's ``xla_refusal``)."""
        if binding().host_calls_refused():
            specs = {id(s): s for s in (self._spec, self._spec_without_decay)}.values()
            why = binding().xla_refusal(self, list(specs))
            if why is not None:
                raise ValueError(why)

    def _backend_update_step(self, grads: Any, trainable_variables: Any, learning_rate: Any) -> None:
        """Keras's loop of :meth:`update_step` over the variables, after the binding's
        ``before_update_loop`` where it has one (torch: every spec and dtype's scalars from the
        host at once, so that ``torch.compile`` traces the loop whole)."""
        b = binding()
        if b.SCALARS_BEFORE_THE_LOOP:
            b.before_update_loop(self, trainable_variables, learning_rate)
        return super()._backend_update_step(grads, trainable_variables, learning_rate)

    def _distributed_tf_update_step(self, distribution: Any, grads_and_vars: Any, learning_rate: Any) -> None:
        """TensorFlow's loop of :meth:`update_step` over the variables
        (``keras/src/backend/tensorflow/optimizer.py``; only that backend calls it), after the
        binding has stepped the groups of variables it runs stacked
        (:func:`uniopt.tf._binding.update_groups`)."""
        rest = binding().update_groups(self, distribution, list(grads_and_vars), learning_rate)
        return super()._distributed_tf_update_step(distribution, rest, learning_rate)

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        spec = self._spec_for(variable)
        b = binding()
        if b.update_sparse(self, spec, gradient, variable, learning_rate):
            return None
        slot_vars = self.slots(variable)
        if b.update_by_increment(self, spec, gradient, variable, slot_vars, learning_rate):
            return None
        param = b.as_array(variable)
        xp = b.namespace(self, param)
        grad = self._dense_gradient(gradient, param.dtype, param.shape, xp)
        # a slot without a variable (Muon's velocity of a variable its Muon step takes, as Keras
        # keeps none) is one the rule does not read: its initial value, passed through
        slots = {
            name: spec.init_slot(name, param, xp) if v is None else b.as_array(v)
            for name, v in slot_vars.items()
        }
        sc = self._scalars(spec, dtype_name(variable.dtype), learning_rate)
        new_param, new_slots = spec.rule(param, grad, slots, sc, xp)
        for name, value in new_slots.items():
            if slot_vars[name] is not None:
                self.assign(slot_vars[name], value)
        self.assign(variable, new_param)
        return None

    def _dense_gradient(self, gradient: Any, dtype: Any, shape: Any, xp: Any) -> Any:
        """The backend's array of a dense ``gradient`` cast to ``dtype`` and of ``shape`` (the
        parameter's), as the spec's rule takes it (``xp``: the rule's namespace)."""
        grad = binding().as_array(gradient, dtype)
        if getattr(grad.shape, "rank", 0) is None or tuple(grad.shape) != tuple(shape):
            # a gradient traced without its static shape (TensorFlow: an IndexedSlices gradient
            # densified in a graph, as LossScaleOptimizer's unscaling does, or a tf.function
            # argument of unknown rank, whose TensorShape cannot be iterated): the variable's shape,
            # which the rules that sum along an axis need (an error if the sizes differ)
            grad = xp.reshape(grad, tuple(shape))
        return grad

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
            f"{PACKAGE}.{name}: an IndexedSlices gradient's repeated indices are summed before "
            f"the update (docs/sparse.md); keras.optimizers.{name} updates its slots from each slice "
            "separately, so rows with repeated indices (embedding lookups) get different values",
            UserWarning,
            stacklevel=3,
        )

    def _spec_for(self, variable: Any) -> Spec:
        """The spec, or the same spec without weight decay for variables excluded from it."""
        if self._spec is self._spec_without_decay or self._use_weight_decay(variable):
            return self._spec
        return self._spec_without_decay

    def _portable_spec_for(self, variable: Any) -> Spec:
        """The spec whose hyperparameters a record of this variable's state would hold: that of
        :meth:`_spec_for` (a subclass may run a variant that is not a hyperparameter of its own:
        Muon's Adam step for a matrix chosen by its path, :mod:`uniopt.tf._routed`)."""
        return self._spec_for(variable)

    def _scalars(self, spec: Spec, dtype: str, learning_rate: Any) -> Any:
        """The spec's scalars for this step in ``dtype`` (a name), from the backend's binding. Under
        ``convention="keras"`` the learning rate first goes through float32, however it was given
        (float, ``optimizer.learning_rate = x``, a callable, a schedule), as Keras's float32
        learning-rate variable and schedules hold it."""
        exact = not self._dynamic_learning_rate()
        return binding().scalars(self, spec, dtype, learning_rate, exact)

    def _called_learning_rate(self) -> bool:
        """Whether the learning rate is a callable taking no argument (not a schedule, a function
        of the step count): it may give another value at each call, so the step's scalars are
        computed from the value Keras passes to its update loop, read once, and never from a
        second call (``_before_apply``)."""
        lr = self._learning_rate
        return self._dynamic_learning_rate() and not isinstance(
            lr, keras.optimizers.schedules.LearningRateSchedule
        )

    def _dynamic_learning_rate(self) -> bool:
        """Whether the learning rate is a schedule or a callable (else the float variable)."""
        lr = self._learning_rate
        return isinstance(lr, keras.optimizers.schedules.LearningRateSchedule) or (
            callable(lr) and not isinstance(lr, keras.Variable)
        )

    def _apply_weight_decay(self, variables: Any) -> None:
        """Keras's weight decay is off: the spec's rule applies ``weight_decay`` itself."""

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        if not self._dynamic_learning_rate():
            config["learning_rate"] = self._float_learning_rate()
        config.update(to_keras_kwargs(self._hyperparameters(), type(self)))
        config.update({name: getattr(self, name) for name in self.KERAS_INERT})
        if self._state_dtypes:  # only where given: a config without it is Keras's own keys
            config["state_dtypes"] = dict(self._state_dtypes)
        return config


_STATE_DTYPE_NAMES = ("bfloat16", "float16", "float32", "float64")


def _state_dtypes(owner: str, spec: Spec, value: Any) -> dict[str, str]:
    """``state_dtypes`` as the optimizer keeps it (and ``get_config`` writes it): slot name -> dtype
    name. ``None`` is ``{}``; a dtype may be a name, a ``tf.DType`` or a NumPy dtype. ``ValueError``
    for a value that is not such a mapping, a name that is not one of the spec's slots (as the
    core's ``init(slot_dtypes=...)``), or a dtype that is not a real floating one; each dtype is
    checked against each variable at ``build`` (:meth:`UnioptOptimizer._check_state_dtypes`)."""
    if value is None:
        return {}
    check_state_dtypes_mapping(owner, value, spec.lower_precision_slots, "'bfloat16'")
    narrow = ", ".join(spec.lower_precision_slots) or "none"
    unknown = sorted(set(value) - set(spec.slot_names()))
    if unknown:
        raise ValueError(
            f"{owner}: state_dtypes names {', '.join(map(repr, unknown))}, not a slot of this optimizer "
            f"with these hyperparameters; its slots: {', '.join(spec.slot_names()) or 'none'} (those it "
            f"may store narrower: {narrow})"
        )
    out = {}
    for name, dtype in value.items():
        found = binding().dtype_name(dtype)
        if found not in _STATE_DTYPE_NAMES:
            raise ValueError(
                f"{owner}: state_dtypes[{name!r}]={dtype!r}; expected a real floating dtype "
                f"({', '.join(_STATE_DTYPE_NAMES)}), one each variable's dtype holds exactly"
            )
        out[name] = found
    return out


def _fill_pairs(hyper: dict[str, Any], cls: type[UnioptOptimizer]) -> None:
    """A pair the spec takes whole (Adafactor's ``eps``) but Keras as two arguments
    (``epsilon_1``, ``epsilon_2``), given in part: the entries left at :data:`CONVENTION_DEFAULT`
    become the chosen convention's (``convention`` as given, else ``"uniopt"``) entries, in place."""
    given: dict[str, set[int]] = {}
    for name, value in hyper.items():
        indexed = _INDEXED.fullmatch(cls.KERAS_NAMES.get(name, name))
        if indexed and value is not CONVENTION_DEFAULT:
            given.setdefault(indexed[1], set()).add(int(indexed[2]))
    convention = hyper.get("convention", "uniopt")
    defaults = cls.spec_class.conventions.get(convention, {}) if isinstance(convention, str) else {}
    for name, value in hyper.items():
        indexed = _INDEXED.fullmatch(cls.KERAS_NAMES.get(name, name))
        if indexed and value is CONVENTION_DEFAULT and indexed[1] in given and indexed[1] in defaults:
            hyper[name] = defaults[indexed[1]][int(indexed[2])]


def _is_zero_or_one(value: Any) -> bool:
    """An integer (or NumPy bool) 0 or 1 that is not already a Python bool."""
    return isinstance(value, (int, np.integer, np.bool_)) and not isinstance(value, bool) and value in (0, 1)


def _host_scalar(value: Any) -> Any:
    """A 1-element tensor, variable or array as its Python value; anything else unchanged."""
    array_like = isinstance(value, (keras.Variable, np.ndarray)) or keras.ops.is_tensor(value)
    if (array_like or binding().is_variable(value)) and np.size(value) == 1:
        return np.asarray(keras.ops.convert_to_numpy(value)).item()
    return value


def _np_scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


_register = keras.saving.register_keras_serializable(package="uniopt")

# Keras's base-optimizer arguments after ``weight_decay``, in Keras's order (clipnorm ... name)
_BASE_ARGUMENTS: tuple[inspect.Parameter, ...] = tuple(
    p
    for name, p in inspect.signature(BaseOptimizer.__init__).parameters.items()
    if p.kind is p.POSITIONAL_OR_KEYWORD and name not in ("self", "learning_rate", "weight_decay")
)

# What the docstring says beyond what the table holds (documentation only: a row needs none)
_NOTES: dict[str, str] = {
    "SGD": "The momentum buffer holds gradients, not lr-scaled velocities as in Keras's SGD, so the "
    'two agree only for a constant lr; ``convention="keras"`` is Keras\'s SGD (velocities, '
    "decoupled weight decay).",
    "Adagrad": "``epsilon`` is added outside the square root (Keras: inside); ``lr_decay`` as in PyTorch.",
    "RMSprop": "``epsilon`` is added outside the square root (Keras: inside); the momentum buffer "
    "does not include the learning rate.",
    "Adam": '``epsilon`` is added to the bias-corrected ``sqrt(v_hat)`` (Keras: the "epsilon hat" '
    "form). ``weight_decay`` is L2 (added to the gradient), as in PyTorch's Adam; use "
    ":class:`AdamW` for decoupled decay.",
    "ScheduleFreeAdamW": "The model's variables hold y (where gradients are taken); ``eval()`` and "
    "``train()`` switch them to x (where to evaluate) and back, ``apply`` is refused in eval mode, "
    "``evaluating()`` and the callback ``uniopt.tf.EvalAtX`` evaluate at x and restore y exactly. "
    "The history (``history()``) and the mode are optimizer variables. XLA (``jit_compile=True``) "
    'is refused: the scalars come from the host. See docs/tf.md, "Schedule-Free AdamW".',
    "Adafactor": "The slots are the spec's, of its shapes (``spec.slot_shape``): ``row_var`` "
    "``(..., n, 1)``, ``col_var`` ``(..., 1, m)`` and ``variance`` (0-d placeholders where unused) "
    "for uniopt's and torch's conventions; Keras's ``r`` ``(..., n)``, ``c`` ``(..., m)`` and "
    "``v`` (the variable's shape) for ``convention=\"keras\"``. ``clip_threshold`` is the spec's "
    "``d`` (``>= 1``; ``> 0`` with the keras convention, as Keras takes it). XLA "
    "(``jit_compile=True``) is refused: the scalars come from the host. The keras convention sums "
    "its row and column means in the spec's pairwise order (Keras: ``reduce_mean``'s), so it "
    "follows Keras's Adafactor within a few ulp, not bit for bit. See "
    "docs/optimizers/adafactor.md.",
    "Muon": 'Keras\'s own: ``convention="keras"`` is the default. A variable takes the Adam step '
    "when it is not 2-D, when ``exclude_embeddings`` and its lowercased path contains "
    '``"embedding"``, or when a pattern of ``exclude_layers`` is found in its path '
    "(``_should_use_adamw``, as Keras decides); a matrix picked by its path runs the spec with "
    "``adam_2d=True``. Slots are Keras's: a ``momentum`` per variable and a ``velocity`` only for "
    "those the Adam step takes (``slots(v)['exp_avg_sq']`` is ``None`` otherwise). The products are "
    'TensorFlow\'s ``matmul`` (``matmul="exact"``: the same bits on every backend, at a cost); the '
    "Frobenius norm sums in the spec's pairwise order (Keras's in TensorFlow's), so the Muon step is "
    "within the native row's measured bound of Keras's, the Adam steps bit for bit. "
    'See docs/tf.md, "Muon", and docs/optimizers/muon.md.',
    "AdamW": "Decoupled weight decay, ``p *= 1 - lr*wd``; ``epsilon`` on the bias-corrected "
    '``sqrt(v_hat)`` (Keras: the "epsilon hat" form).',
}


def _spec_fields(info: OptimizerInfo) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(info.spec)}


def _row_names(info: OptimizerInfo) -> dict[str, str]:
    """The row's Keras argument -> spec field, for the fields the spec has."""
    fields = _spec_fields(info)
    return {k: v for k, v in info.keras.all_names.items() if v.split("[")[0] in fields}


def _field_default(field: dataclasses.Field, index: int | None) -> Any:
    """A spec field's default (one entry of a pair); :data:`CONVENTION_DEFAULT` where it is ``None``."""
    default = field.default
    if default is None:
        return CONVENTION_DEFAULT
    return default[index] if index is not None else default


def _keras_parameters(info: OptimizerInfo) -> list[inspect.Parameter]:
    """The generated ``__init__``'s parameters, ``self`` first (see the module docstring)."""
    fields, names = _spec_fields(info), _row_names(info)
    inert = dict(info.keras.inert)
    routing = dict(info.keras.routing)

    def parameter(keras_name: str) -> inspect.Parameter:
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        if keras_name in inert:  # a Keras flag without a spec field (Adafactor's relative_step)
            return inspect.Parameter(keras_name, kind, default=inert.pop(keras_name))
        if keras_name in routing:  # chooses each variable's step by its path (Muon's exclude_layers)
            return inspect.Parameter(keras_name, kind, default=routing.pop(keras_name))
        target = names.get(keras_name, keras_name)
        indexed = _INDEXED.fullmatch(target)
        field_name, index = (indexed[1], int(indexed[2])) if indexed else (target, None)
        if field_name not in fields:
            raise TypeError(
                f"the keras names of {info.name} list {keras_name!r}, which is no field of "
                f"{info.spec.__name__}"
            )
        return inspect.Parameter(keras_name, kind, default=_field_default(fields[field_name], index))

    positional = [parameter(n) for n in info.keras.positional]
    after_base = [parameter(n) for n in info.keras.positional_after_base]
    keras_positional = {*info.keras.positional, *info.keras.positional_after_base}
    keyword_only = []
    for field_name, field in fields.items():
        keras_names = [k for k, v in names.items() if v == field_name or v.startswith(f"{field_name}[")]
        for keras_name in keras_names or [field_name]:
            if keras_name in keras_positional:
                continue
            target = names.get(keras_name, keras_name)
            indexed = _INDEXED.fullmatch(target)
            default = _field_default(field, int(indexed[2]) if indexed else None)
            if field_name == "convention" and info.keras.default_convention is not None:
                default = info.keras.default_convention
            keyword_only.append(
                inspect.Parameter(keras_name, inspect.Parameter.KEYWORD_ONLY, default=default)
            )
    keyword_only += [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d) for n, d in inert.items()
    ]
    keyword_only += [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d) for n, d in routing.items()
    ]
    return [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        *positional,
        *_BASE_ARGUMENTS,
        *after_base,
        *keyword_only,
        inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]


def _make_init(signature: inspect.Signature, qualname: str, base: type[UnioptOptimizer]) -> Any:
    """An ``__init__`` with ``signature`` (for ``inspect.signature``, ``help()`` and positional
    calls) passing every argument to ``base.__init__`` (:meth:`UnioptOptimizer.__init__` or a
    subclass's) by keyword."""

    def init(self: UnioptOptimizer, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        del arguments["self"]
        extra = arguments.pop("kwargs")
        base.__init__(self, **arguments, **extra)

    init.__signature__ = signature  # type: ignore[attr-defined]
    init.__name__, init.__qualname__, init.__module__ = "__init__", f"{qualname}.__init__", __name__
    return init


def _value(value: Any) -> str:
    return "None" if value is None else repr(value)


def _docstring(info: OptimizerInfo, cls_name: str, parameters: list[inspect.Parameter]) -> str:
    """The class docstring: what the spec is, its Keras names, defaults per convention, notes."""
    spec, keras_names = info.spec, info.keras
    summary = (spec.__doc__ or spec.name).strip().splitlines()[0].rstrip(".")
    summary = summary.replace("(see the module docstring)", f"(the math: :mod:`{spec.__module__}`)")
    lines = [f":class:`uniopt.{spec.name}` as a Keras optimizer: {summary}.", ""]
    if spec.reference:
        lines.append(f"Reference: {spec.reference}.")
    if keras_names.native:
        lines.append(
            f'Keras\'s own: ``keras.optimizers.{keras_names.native}``; ``convention="keras"`` is its '
            "algorithm, with its defaults, op for op."
        )
    else:
        lines.append("Keras 3 ships none; the arguments are named as Keras would name them.")
    names = _row_names(info)
    renamed = ", ".join(f"``{k}`` -> ``{v}``" for k, v in names.items() if k != v)
    lines.append(f"Keras arguments -> spec fields: {renamed}; every other argument has the spec's name.")
    if keras_names.inert:
        lines.append(
            "Accepted as Keras does and without effect, as in Keras's own optimizer: "
            + ", ".join(f"``{n}``" for n in keras_names.inert)
            + " (a bool, kept in ``get_config``)."
        )
    if keras_names.routing:
        lines.append(
            "Keras's arguments choosing each variable's step by its path: "
            + ", ".join(f"``{n}``" for n in keras_names.routing)
            + " (see the notes)."
        )
    keyword_only = [p.name for p in parameters if p.kind is p.KEYWORD_ONLY]
    if keyword_only:
        lines.append(
            "Keyword-only (Keras has no such argument): " + ", ".join(f"``{n}``" for n in keyword_only) + "."
        )
    lines.append("")
    to_keras = {v: k for k, v in names.items()}
    default = keras_names.default_convention or "uniopt"
    conventions = [c for c in spec.conventions if c != default]
    lines.append(
        f'Defaults are {"uniopt" if default == "uniopt" else "Keras"}\'s (``convention="{default}"``); '
        "``convention=`` "
        + ", ".join(f"``{c!r}``" for c in conventions)
        + " picks that framework's formulas and, for arguments left at ``CONVENTION_DEFAULT``, its "
        "defaults:"
    )
    lines.append("")
    for convention, defaults in spec.conventions.items():
        spelled = []
        for field_name, value in defaults.items():
            if isinstance(value, tuple):
                parts = [
                    f"{to_keras.get(f'{field_name}[{i}]', f'{field_name}[{i}]')}={v!r}"
                    for i, v in enumerate(value)
                ]
                spelled.extend(parts)
            else:
                spelled.append(f"{to_keras.get(field_name, field_name)}={_value(value)}")
        lines.append(
            f"* ``{convention}``: " + (", ".join(spelled) if spelled else "the signature's defaults")
        )
    if not keras_names.weight_decay_none_is_zero:
        lines += ["", f"``weight_decay=None`` raises ``ValueError``, as Keras's {cls_name} does."]
    note = _NOTES.get(info.name)
    if note:
        lines += ["", note]
    return "\n".join(lines)


def _make_class(info: OptimizerInfo) -> type[UnioptOptimizer]:
    """The uniopt.tf class of one table row (registered as ``uniopt>{name}`` for Keras's saving)."""
    keras_names = info.keras
    name = keras_names.native or info.name
    parameters = _keras_parameters(info)
    base = UnioptOptimizer
    if info.spec.has_eval_view or any(
        info.spec(convention=c).init_history() is not None for c in info.spec.conventions
    ):  # a history and train/eval views (Schedule-Free AdamW): uniopt.tf._history
        from ._history import HistoryOptimizer

        base = HistoryOptimizer
    if keras_names.routing:  # variables routed to the spec's Adam step by their paths (Muon)
        from ._routed import AdamRoutedOptimizer

        base = AdamRoutedOptimizer
    namespace = {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": _docstring(info, name, parameters),
        "__init__": _make_init(inspect.Signature(parameters), name, base),
        "spec_class": info.spec,
        "KERAS_NAMES": _row_names(info),
        "weight_decay_none_is_zero": keras_names.weight_decay_none_is_zero,
        "sparse_duplicates_match_keras": keras_names.sparse_duplicates_match_keras,
        "keras_checks_float": tuple(keras_names.checks_float),
        "KERAS_INERT": dict(keras_names.inert),
        "KERAS_NONE_MEANS": dict(keras_names.none_means),
        "KERAS_VARIABLES": dict(keras_names.variables),
        "KERAS_ROUTING": dict(keras_names.routing),
    }
    return _register(type(name, (base,), namespace))


_CLASSES: tuple[type[UnioptOptimizer], ...] = tuple(
    _make_class(info) for info in TABLE if info.keras is not None
)
_BY_SPEC: dict[type[Spec], type[UnioptOptimizer]] = {cls.spec_class: cls for cls in _CLASSES}
_ALIASES: dict[str, type[UnioptOptimizer]] = {
    cls.spec_class.name: cls for cls in _CLASSES if cls.__name__ != cls.spec_class.name
}
"""The spec's name where Keras names the class otherwise (``NAdam`` for ``Nadam``)."""
_BY_NAME: dict[str, type[UnioptOptimizer]] = {**{cls.__name__: cls for cls in _CLASSES}, **_ALIASES}
globals().update(_BY_NAME)

OPTIMIZERS: tuple[str, ...] = tuple(cls.__name__ for cls in _CLASSES)
"""The names of the generated classes, in table order (aliases not included)."""


def from_spec(spec: Spec, **keras_kwargs: Any) -> UnioptOptimizer:
    """The Keras optimizer executing ``spec``; ``keras_kwargs`` are base-optimizer arguments
    (``clipnorm``, ``use_ema``, ``name``, ...) or a ``learning_rate`` schedule replacing ``spec.lr``."""
    try:
        cls = _BY_SPEC[type(spec)]
    except KeyError:
        raise TypeError(f"no {PACKAGE} optimizer for {type(spec).__name__}") from None
    kwargs = {k: _np_scalar(v) for k, v in to_keras_kwargs(spec.hyperparameters, cls).items()}
    kwargs.update(keras_kwargs)
    return cls(**kwargs)


__all__ = [  # generated from the table
    "CONVENTION_DEFAULT",
    "KERAS_NAMES",
    "OPTIMIZERS",
    "UnioptOptimizer",
    "from_spec",
    "to_keras_kwargs",
    "to_spec_kwargs",
    *sorted(_BY_NAME),
]
