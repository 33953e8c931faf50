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

from ._transform import Transformation, transformation

__all__ = ["ALIASES", "FACTORIES", "inject_hyperparams", "optax_arguments"]

ALIASES: dict[str, tuple[type[Spec], dict[str, str]]] = {
    # factory: (spec, {optax-style argument: uniopt field}); "betas[i]" is one entry of the pair.
    # Every argument but learning_rate is keyword-only; defaults are uniopt's, and None (where a
    # default depends on ``convention``) takes the convention's default.
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


def _explain(alias: str, message: str) -> str:
    """The core's message, plus which of this factory's arguments it is about."""
    renamed = [
        f"{arg} is uniopt's {target}"
        for arg, target in ALIASES[alias][1].items()
        if arg != target and re.search(rf"(^|\W){re.escape(target)}=", message)
    ]
    return f"{message} [uniopt.jax.{alias}: {'; '.join(renamed)}]" if renamed else message


def _build(alias: str, arguments: dict[str, Any]) -> Transformation:
    spec_type, names = ALIASES[alias]
    for arg, value in arguments.items():
        if arg != "learning_rate" and isinstance(value, jax.Array):
            raise ValueError(
                f"uniopt.jax.{alias}: {arg} is a jax array ({value!r}); only learning_rate may be an "
                "array or a schedule: the other hyperparameters enter the per-step scalars that the "
                f"host computes in float64. With optax.inject_hyperparams use "
                f"uniopt.jax.inject_hyperparams(uniopt.jax.{alias}), which keeps them static."
            )
    kwargs: dict[str, Any] = {}
    for arg, target in names.items():
        field, index = _target(target)
        if index is None:
            kwargs[field] = arguments[arg]
        else:
            kwargs.setdefault(field, [None, None])[index] = arguments[arg]
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    learning_rate = kwargs.pop("lr")
    traced = callable(learning_rate) or isinstance(learning_rate, jax.Array)
    if isinstance(learning_rate, np.ndarray) and learning_rate.shape == ():
        learning_rate = learning_rate.item()  # a 0-d NumPy array is a constant
    try:
        spec = spec_type(**kwargs) if traced else spec_type(lr=learning_rate, **kwargs)
        return transformation(spec, learning_rate if traced else None)
    except ValueError as exc:
        raise ValueError(_explain(alias, str(exc))) from None


def _factory(alias: str) -> Callable[..., Transformation]:
    spec_type, names = ALIASES[alias]
    kind = inspect.Parameter.KEYWORD_ONLY
    parameters = [
        inspect.Parameter(
            arg,
            inspect.Parameter.POSITIONAL_OR_KEYWORD if arg == "learning_rate" else kind,
            default=_spec_default(spec_type, target),
        )
        for arg, target in names.items()
    ]
    signature = inspect.Signature(parameters, return_annotation=Transformation)

    def factory(*args: Any, **kwargs: Any) -> Transformation:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return _build(alias, bound.arguments)

    rows = "\n".join(
        f"        {arg}: uniopt's ``{target}`` (default ``{_spec_default(spec_type, target)!r}``)"
        for arg, target in names.items()
    )
    factory.__signature__ = signature  # type: ignore[attr-defined]
    factory.__name__ = factory.__qualname__ = alias
    factory.__module__ = "uniopt.jax"
    factory.__doc__ = (
        f"{spec_type.name} (:class:`uniopt.{spec_type.__name__}`; {spec_type.reference}) as an optax "
        "transformation whose update includes the learning rate.\n\n"
        "    ``learning_rate`` is a float (bitwise equal to the NumPy reference), an optax schedule or "
        "a 0-d array (the learning rate then enters the per-step scalars in-graph; see docs/jax.md). "
        "The other arguments are Python numbers and bools, validated by the core.\n\n"
        f"    Args:\n{rows}\n\n"
        "    Returns:\n"
        "        :class:`uniopt.jax.Transformation`, an ``optax.GradientTransformationExtraArgs``.\n"
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

    ``optax.inject_hyperparams(uniopt.jax.adam)`` would turn ``b1``, ``eps``, ... into float32
    arrays in the state; uniopt needs them as host numbers (they enter float64 scalars), so only
    the learning rate is injected. ``state.hyperparams["learning_rate"]`` can then be changed at
    run time.
    """
    extra = {static_args} if isinstance(static_args, str) else set(static_args)
    names = set(inspect.signature(inner_factory).parameters) - {"learning_rate"}
    return optax.inject_hyperparams(
        inner_factory, static_args=tuple(sorted(names | extra)), hyperparam_dtype=hyperparam_dtype
    )
