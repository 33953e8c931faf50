"""The optax-style factories, all generated from one declared name mapping (:data:`ALIASES`)."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
import optax

import uniopt
from uniopt import Spec

from ._transform import Injected, Transformation, transformation

__all__ = ["ALIASES", "FACTORIES", "OPTAX_ONLY", "POSITIONAL", "inject_hyperparams", "optax_arguments"]

ALIASES: dict[str, tuple[type[Spec], dict[str, str]]] = {
    # factory: (spec, {optax-style argument: uniopt field}); "betas[i]" is one entry of the pair.
    # optax's arguments come in optax's order (POSITIONAL), the others are keyword-only; defaults
    # are uniopt's, and None takes the convention's default.
    "sgd": (
        uniopt.SGD,
        {
            "learning_rate": "lr",
            "momentum": "momentum",
            "nesterov": "nesterov",
            "dampening": "dampening",
            "weight_decay": "weight_decay",
            "maximize": "maximize",
            "convention": "convention",
        },
    ),
    "adagrad": (
        uniopt.Adagrad,
        {
            "learning_rate": "lr",
            "initial_accumulator_value": "initial_accumulator_value",
            "eps": "eps",
            "lr_decay": "lr_decay",
            "weight_decay": "weight_decay",
            "maximize": "maximize",
            "convention": "convention",
        },
    ),
    "rmsprop": (
        uniopt.RMSprop,
        {
            "learning_rate": "lr",
            "decay": "alpha",
            "eps": "eps",
            "centered": "centered",
            "momentum": "momentum",
            "weight_decay": "weight_decay",
            "maximize": "maximize",
            "convention": "convention",
        },
    ),
    **{
        name: (
            spec,
            {
                "learning_rate": "lr",
                "b1": "betas[0]",
                "b2": "betas[1]",
                "eps": "eps",
                "weight_decay": "weight_decay",
                "amsgrad": "amsgrad",
                "maximize": "maximize",
                "convention": "convention",
            },
        )
        for name, spec in (("adam", uniopt.Adam), ("adamw", uniopt.AdamW))
    },
    "radam": (
        uniopt.RAdam,
        {
            "learning_rate": "lr",
            "b1": "betas[0]",
            "b2": "betas[1]",
            "eps": "eps",
            "weight_decay": "weight_decay",
            "decoupled_weight_decay": "decoupled_weight_decay",
            "degenerated_to_sgd": "degenerated_to_sgd",
            "maximize": "maximize",
            "convention": "convention",
        },
    ),
}

POSITIONAL: dict[str, tuple[str, ...]] = {
    # optax's positional arguments, in optax's order (optax 0.2.8); the factory's other arguments
    # (optax's keyword-only ones, then uniopt's own) are keyword-only
    "sgd": ("learning_rate", "momentum", "nesterov", "accumulator_dtype"),
    "adagrad": ("learning_rate", "initial_accumulator_value", "eps"),
    "rmsprop": (
        "learning_rate",
        "decay",
        "eps",
        "initial_scale",
        "eps_in_sqrt",
        "centered",
        "momentum",
        "nesterov",
        "bias_correction",
    ),
    "adam": ("learning_rate", "b1", "b2", "eps", "eps_root", "mu_dtype"),
    "adamw": ("learning_rate", "b1", "b2", "eps", "eps_root", "mu_dtype", "weight_decay", "mask"),
    "radam": ("learning_rate", "b1", "b2", "eps", "eps_root", "threshold"),
}

_EPS_INSIDE = ("optax", "keras")  # conventions whose RMSprop adds eps inside the square root
_RECTIFY_FROM_5 = ("optax", "official")  # conventions whose RAdam rectifies from rho_t >= 5

OPTAX_ONLY: dict[str, dict[str, tuple[Callable[[Any, str], bool], str]]] = {
    # optax arguments without a spec field: (accepts(value, convention), the accepted values). Each
    # defaults to None, optax's default meaning (so optax.inject_hyperparams leaves it static).
    # mu_dtype/accumulator_dtype: None, or a dtype checked against each parameter's at init.
    "sgd": {"accumulator_dtype": (lambda v, c: True, "None")},
    "adagrad": {},
    "rmsprop": {
        "initial_scale": (lambda v, c: v is None or v == 0, "None or 0.0 (optax's default)"),
        "eps_in_sqrt": (
            lambda v, c: v is None or bool(v) == (c in _EPS_INSIDE),
            "None (the convention's placement: inside the root with convention='optax' or 'keras', "
            "outside otherwise) or that placement as a bool",
        ),
        "nesterov": (lambda v, c: v is False, "False (RMSprop has no Nesterov momentum in uniopt)"),
        "bias_correction": (lambda v, c: v is False, "False (optax's default)"),
    },
    **{
        name: {
            "eps_root": (lambda v, c: v is None or v == 0, "None or 0.0 (optax's default)"),
            "mu_dtype": (lambda v, c: True, "None"),
            "nesterov": (lambda v, c: v is False, "False (use uniopt's Adam; NAdam is not in uniopt)"),
        }
        for name in ("adam", "adamw")
    },
    "radam": {
        "eps_root": (lambda v, c: v is None or v == 0, "None or 0.0 (optax's default)"),
        "threshold": (
            lambda v, c: v is None or (v == 5 and c in _RECTIFY_FROM_5),
            "None (the convention's threshold) or 5.0 with convention='optax' or 'official' "
            "(rectified where rho_t >= 5; uniopt and torch: rho_t > 5)",
        ),
        "nesterov": (lambda v, c: v is False, "False (optax's default)"),
    },
}

_INITIAL_STATE = ("initial_accumulator_value",)  # fields read by init, not by the step

_STATE_DTYPE = ("mu_dtype", "accumulator_dtype")  # optax's dtype of the optimizer state
_SUPPORTS_MASK = ("adamw",)  # factories whose optax alias has mask= (it masks the weight decay)

_TARGET = re.compile(r"^(?P<field>\w+)(\[(?P<index>\d)\])?$")


def _target(target: str) -> tuple[str, int | None]:
    match = _TARGET.match(target)
    if match is None:
        raise ValueError(f"bad mapping target {target!r}")
    index = match.group("index")
    return match.group("field"), None if index is None else int(index)


def _spec_default(spec: type[Spec], target: str) -> Any:
    field, index = _target(target)
    default = {f.name: f.default for f in dataclasses.fields(spec)}[field]
    return default if index is None else default[index]


def _default(alias: str, arg: str) -> Any:
    """The factory's default for ``arg``: the spec's, except that ``None`` ("the spec's default for
    the convention") stands for numbers optax has no argument for or defaults to ``None``, so that
    ``optax.inject_hyperparams`` does not turn them into arrays."""
    spec_type, names = ALIASES[alias]
    if arg not in names:  # OPTAX_ONLY and mask: optax's bool default where every convention has it
        default = inspect.signature(getattr(optax, alias)).parameters[arg].default
        accepts = OPTAX_ONLY[alias].get(arg, (lambda v, c: False, ""))[0]
        return default if isinstance(default, bool) and accepts(default, "uniopt") else None
    default = _spec_default(spec_type, names[arg])
    if isinstance(default, (bool, str)) or arg == "learning_rate":
        return default
    if arg in POSITIONAL[alias] and arg != "momentum":
        return default
    return None


def _explain(alias: str, message: str) -> str:
    """The core's message, plus which of this factory's arguments it is about."""
    renamed = [
        f"{arg} is uniopt's {target}"
        for arg, target in ALIASES[alias][1].items()
        if arg != target and re.search(rf"(^|\W){re.escape(target)}=", message)
    ]
    return f"{message} [uniopt.jax.{alias}: {'; '.join(renamed)}]" if renamed else message


def _check_optax_only(alias: str, arguments: dict[str, Any]) -> None:
    convention = arguments.get("convention", "uniopt")
    for arg, (accepts, accepted) in OPTAX_ONLY[alias].items():
        value = arguments[arg]
        if isinstance(value, jax.Array):
            raise ValueError(
                f"uniopt.jax.{alias}: {arg} is a jax array; uniopt accepts only {arg}={accepted} "
                f"(with optax.inject_hyperparams, leave {arg} out or list it in static_args)"
            )
        if arg in _STATE_DTYPE:
            if value is not None:
                try:
                    np.dtype(value)
                except TypeError:
                    raise TypeError(f"uniopt.jax.{alias}: {arg}={value!r} is not a dtype") from None
            continue
        if not accepts(value, convention):
            raise ValueError(
                f"uniopt.jax.{alias}: {arg}={value!r} with convention={convention!r} is not "
                f"supported; expected {arg}={accepted}"
            )


def _host_number(value: Any) -> Any:
    """A 0-d NumPy array as its Python number (a constant); anything else unchanged."""
    if isinstance(value, np.ndarray) and value.shape == ():
        return value.item()
    return value


_GIVEN_NONE = object()


def _build(alias: str, arguments: dict[str, Any]) -> Transformation:
    spec_type, names = ALIASES[alias]
    _check_optax_only(alias, arguments)
    mask = arguments.get("mask")
    if mask is not None and not (callable(mask) or jax.tree.leaves(mask) or mask == {}):
        raise TypeError(f"uniopt.jax.{alias}: mask must be a pytree of bools or a callable; got {mask!r}")
    kwargs: dict[str, Any] = {}
    arrays: list[tuple[str, int | None, jax.Array]] = []  # hyperparameters given as jax arrays
    for arg, target in names.items():
        field, index = _target(target)
        value = _host_number(arguments[arg])
        if arg != "learning_rate" and isinstance(value, jax.Array):
            if field in _INITIAL_STATE:
                raise ValueError(
                    f"uniopt.jax.{alias}: {arg} is a jax array; it sets the initial state, so pass it "
                    f"as a number (with optax.inject_hyperparams: static_args=({arg!r},))"
                )
            if getattr(value, "shape", ()) != ():
                raise ValueError(
                    f"uniopt.jax.{alias}: {arg} must be a number or a 0-d array; got shape {value.shape}"
                )
            arrays.append((field, index, value))
            if index is not None:
                kwargs.setdefault(field, [None, None])  # the entry takes the spec's default
            continue
        if value is None and _default(alias, arg) is None:
            value = None  # the spec's default for the convention
        elif value is None:
            value = _GIVEN_NONE  # refused by the core's check of that field
        if index is None:
            if value is not None:
                kwargs[field] = None if value is _GIVEN_NONE else value
        else:
            kwargs.setdefault(field, [None, None])[index] = value
    for field, value in list(kwargs.items()):
        if isinstance(value, list):  # a pair: entries left out take the spec's default entry
            default = _spec_default(spec_type, field)
            pairs = zip(value, default, strict=True)
            kwargs[field] = tuple(d if v is None else None if v is _GIVEN_NONE else v for v, d in pairs)
    learning_rate = kwargs.pop("lr", None)
    traced = callable(learning_rate) or isinstance(learning_rate, jax.Array)
    if not traced and learning_rate is not None:
        kwargs["lr"] = learning_rate
    try:
        spec = spec_type(**kwargs)
        injected = None
        if arrays:
            spec, injected = _injected(spec, arrays)
        return transformation(
            spec,
            learning_rate if traced else None,
            mask=mask,
            injected=injected,
            state_dtype=next(((a, arguments[a]) for a in _STATE_DTYPE if a in arguments), None),
        )
    except ValueError as exc:
        raise ValueError(_explain(alias, str(exc))) from None


def _injected(base: Spec, arrays: list[tuple[str, int | None, jax.Array]]) -> tuple[Spec, Injected]:
    """The spec whose structure runs hyperparameters given as jax arrays, and their values' specs.

    The structure must not depend on the arrays' values (they are traced under ``jax.jit``): each
    array field takes a nonzero stand-in (its default if nonzero, else 0.5), so a zero-or-not
    choice (momentum's buffer, weight decay's branch) is the nonzero one, as optax's aliases keep
    a momentum trace whenever ``momentum`` is given. The values enter only the per-step scalars.
    """
    stand_in: dict[str, Any] = {}
    for field, index, _ in arrays:
        current = stand_in.get(field, getattr(base, field))
        if index is None:
            stand_in[field] = current if current != 0 else 0.5
        else:
            pair = list(current)
            pair[index] = pair[index] if pair[index] != 0 else 0.5
            stand_in[field] = tuple(pair)
    template = base.replace(**stand_in)

    def make(values: tuple[float, ...]) -> Spec:
        fields: dict[str, Any] = {}
        for (field, index, _), value in zip(arrays, values, strict=True):
            if index is None:
                fields[field] = value
            else:
                pair = list(fields.get(field, getattr(template, field)))
                pair[index] = value
                fields[field] = tuple(pair)
        return template.replace(**fields)

    concrete = [a for _, _, a in arrays if not isinstance(a, jax.core.Tracer)]
    if len(concrete) == len(arrays):
        make(tuple(float(a) for a in concrete))  # validate now: ValueError naming the field
    return template, Injected(tuple(a for _, _, a in arrays), make)


def _factory(alias: str) -> Callable[..., Transformation]:
    spec_type, names = ALIASES[alias]
    optax_params = inspect.signature(getattr(optax, alias)).parameters
    positional = POSITIONAL[alias]
    keyword = [a for a in optax_params if a not in positional]  # optax's keyword-only ones
    keyword += [a for a in names if a not in positional and a not in keyword]
    POK, KW = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
    parameters = [inspect.Parameter(a, POK, default=_default(alias, a)) for a in positional]
    parameters += [inspect.Parameter(a, KW, default=_default(alias, a)) for a in keyword]
    signature = inspect.Signature(parameters, return_annotation=Transformation)

    def factory(*args: Any, **kwargs: Any) -> Transformation:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return _build(alias, bound.arguments)

    def describe(arg: str) -> str:
        if arg in names:
            field = names[arg]
            return f"uniopt's ``{field}`` (default ``{_default(alias, arg)!r}``" + (
                ": the convention's)" if _default(alias, arg) is None else ")"
            )
        if arg == "mask":
            return (
                "a pytree of bools like the parameters, or a callable ``params -> pytree``: where "
                "``False``, no weight decay (as ``optax.adamw``)"
            )
        return f"optax's; accepted: {OPTAX_ONLY[alias][arg][1]}"

    rows = "\n".join(f"        {p.name}: {describe(p.name)}" for p in parameters)
    factory.__signature__ = signature  # type: ignore[attr-defined]
    factory.__name__ = factory.__qualname__ = alias
    factory.__module__ = "uniopt.jax"
    factory.__doc__ = (
        f"{spec_type.name} (:class:`uniopt.{spec_type.__name__}`; {spec_type.reference}) as an optax "
        f"transformation whose update includes the learning rate; ``optax.{alias}``'s arguments in "
        "optax's order, then uniopt's own (keyword-only).\n\n"
        "    ``learning_rate`` is a float (bitwise equal to the NumPy reference), an optax schedule or "
        "a 0-d array (the learning rate then enters the per-step scalars in-graph; see docs/jax.md). "
        "Other numeric arguments are Python numbers, or 0-d jax arrays (as "
        "``optax.inject_hyperparams`` passes them; their per-step scalars are computed on the host). "
        "``None`` takes the convention's default. Validated by the core: ``ValueError`` naming the "
        "argument; optax's arguments uniopt cannot honour raise ``ValueError`` naming the accepted "
        "values.\n\n"
        f"    Args:\n{rows}\n\n"
        "    Returns:\n"
        "        :class:`uniopt.jax.Transformation`, an ``optax.GradientTransformationExtraArgs``.\n\n"
        f"    Source: optax/_src/alias.py (``optax.{alias}``); "
        f"src/uniopt/{spec_type.__module__.split('.')[-1]}.py.\n"
    )
    return factory


FACTORIES: dict[str, Callable[..., Transformation]] = {alias: _factory(alias) for alias in ALIASES}


def optax_arguments(spec: Spec) -> tuple[str, dict[str, Any]]:
    """The factory name and its arguments that build ``spec`` (the mapping read backwards)."""
    for alias, (spec_type, names) in ALIASES.items():
        if type(spec) is spec_type:
            hp = spec.hyperparameters
            out = {}
            for arg, target in names.items():
                field, index = _target(target)
                out[arg] = hp[field] if index is None else hp[field][index]
            return alias, out
    raise KeyError(f"no uniopt.jax factory for {type(spec).__name__}")


def inject_hyperparams(
    inner_factory: Callable[..., Any],
    static_args: str | Iterable[str] = (),
    hyperparam_dtype: Any = None,
) -> Callable[..., optax.GradientTransformationExtraArgs]:
    """``optax.inject_hyperparams`` with every argument but ``learning_rate`` static.

    Plain ``optax.inject_hyperparams(uniopt.jax.adam)`` works too, but injects ``b1``, ``b2``, ...
    as arrays (float32 for float32 parameters), whose per-step scalars the host computes through a
    callback at every step. Here only the learning rate is injected: the other hyperparameters stay
    host numbers (no callback; bitwise equal to the NumPy reference).
    ``state.hyperparams["learning_rate"]`` can be changed at run time.
    """
    extra = {static_args} if isinstance(static_args, str) else set(static_args)
    names = set(inspect.signature(inner_factory).parameters) - {"learning_rate"}
    return optax.inject_hyperparams(
        inner_factory, static_args=tuple(sorted(names | extra)), hyperparam_dtype=hyperparam_dtype
    )
