"""The optax-style factories, all generated from the table's optax names.

Each row of :data:`uniopt.registry.TABLE` lists its factories in ``optax=``
(:class:`uniopt.registry.OptaxNames`: the factory's name, its argument -> spec field mapping,
optax's positional order, the optax arguments without a spec field and what uniopt accepts for
them, spec fields the factory fixes); :data:`FACTORIES` holds one factory per entry, so a new row
is a new factory with no edit here.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from uniopt import Spec
from uniopt.registry import TABLE, OptaxNames

from ._transform import Injected, Transformation, transformation

__all__ = [
    "ALIASES",
    "FACTORIES",
    "MASKS",
    "OPTAX",
    "OPTAX_ONLY",
    "POSITIONAL",
    "inject_hyperparams",
    "optax_arguments",
    "optax_function",
]

OPTAX: dict[str, OptaxNames] = {names.alias: names for info in TABLE for names in info.optax}
"""Factory name -> its row's :class:`uniopt.registry.OptaxNames` (every row that has one)."""

ALIASES: dict[str, tuple[type[Spec], dict[str, str]]] = {
    names.alias: (info.spec, dict(names.names)) for info in TABLE for names in info.optax
}
"""Factory -> (spec, {optax-style argument: uniopt field}), from the table; ``"betas[i]"`` is one
entry of the pair. optax's arguments come in optax's order (:data:`POSITIONAL`), the others are
keyword-only; defaults are uniopt's, and ``None`` takes the convention's default."""

POSITIONAL: dict[str, tuple[str, ...]] = {alias: tuple(n.positional) for alias, n in OPTAX.items()}
"""optax's positional arguments, in optax's order (optax 0.2.8); the factory's other arguments
(optax's keyword-only ones, then uniopt's own) are keyword-only."""

OPTAX_ONLY: dict[str, dict[str, tuple[Callable[[Any, str], bool], str]]] = {
    alias: dict(n.only) for alias, n in OPTAX.items()
}
"""optax arguments without a spec field: ``(accepts(value, convention), the accepted values)``.
Each defaults to ``None``, optax's default meaning (so ``optax.inject_hyperparams`` leaves it
static), or optax's own bool default where every convention accepts it. ``mu_dtype`` and
``accumulator_dtype``: ``None``, or a real floating dtype (else ``ValueError``; not a dtype:
``TypeError``), checked against each parameter's at init (:meth:`uniopt.Spec.slot_dtype_refusal`)."""

_INITIAL_STATE = ("initial_accumulator_value",)  # fields read by init, not by the step
_STRUCTURE = {  # fields the rule reads as Python values (not through the per-step scalars): what each decides
    "min_dim_size_to_factor": "the state's layout",
    "ns_steps": "the number of Newton-Schulz iterations",
    "rms_rate": "the shape scale, computed on the host from the parameter's shape",
}

_STATE_DTYPE = ("mu_dtype", "accumulator_dtype", "dtype_momentum")  # optax's dtype of the state
MASKS = ("mask", "weight_decay_mask")
"""optax's names of the weight-decay mask (``optax.adamw``'s ``mask``, ``optax.adadelta``'s
``weight_decay_mask``): a factory whose optax alias has one passes it on as :func:`transformation`'s
``mask``."""

_TARGET = re.compile(r"^(?P<sign>-?)(?P<field>\w+)(\[(?P<index>\d)\])?$")


def _target(target: str) -> tuple[str, int | None]:
    """``(field, index)`` of a mapping target (``"betas[0]"``, ``"-beta2_decay"``)."""
    match = _TARGET.match(target)
    if match is None:
        raise ValueError(f"bad mapping target {target!r}")
    index = match.group("index")
    return match.group("field"), None if index is None else int(index)


def _signed(target: str, value: Any) -> Any:
    """``value`` carried across a ``"-field"`` target (negated; ``None`` stays ``None``)."""
    if target.startswith("-") and value is not None:
        return -value
    return value


def _spec_default(spec: type[Spec], target: str) -> Any:
    field, index = _target(target)
    default = {f.name: f.default for f in dataclasses.fields(spec)}[field]
    if default is None:  # the convention's
        return None
    return _signed(target, default if index is None else default[index])


def _default_convention(alias: str) -> str:
    """The factory's default ``convention`` (:attr:`uniopt.registry.OptaxNames.default_convention`)."""
    return OPTAX[alias].default_convention or _spec_default(ALIASES[alias][0], "convention")


def optax_function(alias: str) -> Callable[..., Any]:
    """optax's own ``<module>.<alias>`` of factory ``alias`` (:attr:`uniopt.registry.OptaxNames.module`:
    ``optax.adam``, ``optax.contrib.muon``); ``ValueError`` for a factory without one (``native``
    false)."""
    row = OPTAX[alias]
    if not row.native:
        raise ValueError(f"uniopt.jax.{alias} stands for no optax function (optax has no {alias!r})")
    return getattr(importlib.import_module(row.module), alias)


def optax_name(alias: str) -> str:
    """``"optax.adam"``, ``"optax.contrib.muon"``: where optax defines factory ``alias``'s optimizer."""
    return f"{OPTAX[alias].module}.{alias}"


def _optax_parameters(alias: str) -> dict[str, inspect.Parameter]:
    """The parameters of optax's ``<module>.<alias>`` (none where optax lacks the alias)."""
    if not OPTAX[alias].native:
        return {}
    return dict(inspect.signature(optax_function(alias)).parameters)


def _default(alias: str, arg: str) -> Any:
    """The factory's default for ``arg``: the spec's, except that ``None`` ("the spec's default for
    the convention") stands for numbers optax has no argument for or defaults to ``None``, so that
    ``optax.inject_hyperparams`` does not turn them into arrays."""
    spec_type, names = ALIASES[alias]
    if arg in OPTAX[alias].none_means:  # optax's None, which stands for a spec value
        return None
    if arg not in names:  # OPTAX_ONLY and mask: optax's bool default where every convention has it
        parameter = _optax_parameters(alias).get(arg)
        default = None if parameter is None else parameter.default
        accepts = OPTAX_ONLY[alias].get(arg, (lambda v, c: False, ""))[0]
        if arg in _STATE_DTYPE and default is not None:  # optax's dtype (dtype_momentum=float32)
            return default
        return default if isinstance(default, bool) and accepts(default, "uniopt") else None
    if names[arg] == "convention":
        return _default_convention(alias)
    default = _spec_default(spec_type, names[arg])
    if isinstance(default, (bool, str)) or arg == "learning_rate":
        return default
    optax_default = getattr(_optax_parameters(alias).get(arg), "default", 0)
    if arg in POSITIONAL[alias] and arg != "momentum" and optax_default is not None:
        return default  # optax's None (weight_decay_rate): the convention's default
    return None


def _explain(alias: str, message: str) -> str:
    """The core's message, plus which of this factory's arguments it is about."""
    renamed = [
        f"{arg} is uniopt's {target}" + (" (negated)" if target.startswith("-") else "")
        for arg, target in ALIASES[alias][1].items()
        if arg != target and re.search(rf"(^|\W){re.escape(target.lstrip('-'))}=", message)
    ]
    # an argument whose None stands for a spec value refused given literally (the core's message
    # would offer that value): say so
    renamed += [
        f"{arg}=None is the spec's {value!r} here, and {arg}={value!r} is refused: {why}"
        for arg, (value, why) in OPTAX[alias].none_means.items()
        if re.search(rf"(^|\W){re.escape(ALIASES[alias][1].get(arg, arg))}=", message)
    ]
    return f"{message} [uniopt.jax.{alias}: {'; '.join(renamed)}]" if renamed else message


def _check_optax_only(alias: str, arguments: dict[str, Any]) -> None:
    convention = arguments.get("convention", _default_convention(alias))
    for arg, (accepts, accepted) in OPTAX_ONLY[alias].items():
        value = arguments[arg]
        if isinstance(value, jax.Array):
            raise ValueError(
                f"uniopt.jax.{alias}: {arg} is a jax array; uniopt accepts only {arg}={accepted} "
                f"(optax.inject_hyperparams makes an array of it, its default too where the call "
                f"leaves it out: list it in static_args, static_args=({arg!r},))"
            )
        if arg in _STATE_DTYPE:
            if value is not None:
                try:
                    dtype = np.dtype(value)
                except TypeError:
                    raise TypeError(f"uniopt.jax.{alias}: {arg}={value!r} is not a dtype") from None
                if not jax.numpy.issubdtype(dtype, jax.numpy.floating):
                    raise ValueError(
                        f"uniopt.jax.{alias}: {arg}={dtype.name} is not a real floating dtype; expected "
                        f"{arg}=None (each parameter's dtype) or a real floating dtype (bfloat16, "
                        "float16, float32, float64)"
                    )
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


def _check_narrows(alias: str, arguments: dict[str, Any]) -> None:
    """``ValueError`` for a mapped argument's value that optax reads and the spec field cannot hold
    (:attr:`uniopt.registry.OptaxNames.narrows`), before the spec is built."""
    convention = arguments.get("convention") or _default_convention(alias)
    for arg, (accepts, accepted) in OPTAX[alias].narrows.items():
        value = arguments[arg]
        if value is not None and not accepts(value, convention):
            raise ValueError(f"uniopt.jax.{alias}: {arg}={value!r} is not supported; expected {accepted}")


def _implied(alias: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """``arguments`` with the fields an argument implies set (:attr:`uniopt.registry.OptaxNames.implies`:
    ``consistent_rms`` given is ``adjust_lr_fn="match_rms_adamw"``); ``ValueError`` where the
    implied field's own argument was given another value."""
    out = dict(arguments)
    by_field = {_target(t)[0]: a for a, t in ALIASES[alias][1].items()}
    for arg, fields in OPTAX[alias].implies.items():
        if out[arg] is None:
            continue
        for field, value in fields.items():
            own = by_field[field]
            if out[own] is not None and out[own] != value:
                raise ValueError(
                    f"uniopt.jax.{alias}: {arg}={out[arg]!r} means {field}={value!r} (as "
                    f"{optax_name(alias) if OPTAX[alias].native else alias} reads it); got "
                    f"{own}={out[own]!r}: leave {own} out, or pass {arg}=None"
                )
            out[own] = value
    return out


def _none_means(alias: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """``arguments`` with the row's ``none_means`` applied (:class:`uniopt.registry.OptaxNames`):
    ``None`` becomes the spec value it stands for, and that value given literally (optax reads it
    otherwise) raises ``ValueError`` naming the argument and why."""
    out = dict(arguments)
    for arg, (value, why) in OPTAX[alias].none_means.items():
        given = _host_number(out[arg])
        if given is None:
            out[arg] = value
        elif isinstance(given, jax.Array):
            raise ValueError(
                f"uniopt.jax.{alias}: {arg} is a jax array; pass a Python number or None (with "
                f"optax.inject_hyperparams: static_args=({arg!r},))"
            )
        elif not isinstance(given, bool) and given == value:
            raise ValueError(f"uniopt.jax.{alias}: {arg}={given!r} is refused: {why}")
    return out


def _build(alias: str, arguments: dict[str, Any]) -> Transformation:
    spec_type, names = ALIASES[alias]
    momentum = arguments.get("momentum")
    unused = momentum is None or (not isinstance(momentum, jax.Array) and momentum == 0)
    if isinstance(arguments.get("dtype_momentum"), jax.Array) and unused:
        # optax.inject_hyperparams injects optax.adafactor's default dtype_momentum=jnp.float32 as a
        # schedule (a callable); without momentum optax never reads it, and neither does uniopt
        arguments = {**arguments, "dtype_momentum": None}
    _check_optax_only(alias, arguments)
    _check_narrows(alias, arguments)
    arguments = _none_means(alias, _implied(alias, arguments))
    mask_arg = next((a for a in MASKS if a in arguments), "mask")
    mask = arguments.get(mask_arg)
    if mask is not None and not (callable(mask) or jax.tree.leaves(mask) or mask == {}):
        raise TypeError(
            f"uniopt.jax.{alias}: {mask_arg} must be a pytree of bools or a callable; got {mask!r}"
        )
    kwargs: dict[str, Any] = dict(OPTAX[alias].fixed)
    arrays: list[tuple[str, int | None, jax.Array]] = []  # hyperparameters given as jax arrays
    for arg, target in names.items():
        field, index = _target(target)
        value = _host_number(arguments[arg])
        if "weight_decay" in arg and callable(value) and not isinstance(value, jax.Array):
            # optax's adamw, lion, lamb and nadamw take a schedule there (ScalarOrSchedule); the
            # spec's per-step scalars are affine in the learning rate only
            raise ValueError(
                f"uniopt.jax.{alias}: {arg} is a callable (a schedule?); only learning_rate takes "
                f"a schedule here. For {arg} that changes with the step, wrap the factory: "
                f"optax.inject_hyperparams(uniopt.jax.{alias})(..., {arg}=schedule) calls the "
                "schedule at each step and passes its value"
            )
        if arg != "learning_rate" and isinstance(value, jax.Array):
            if field in _INITIAL_STATE or field in _STRUCTURE:
                what = "the initial state" if field in _INITIAL_STATE else _STRUCTURE[field]
                raise ValueError(
                    f"uniopt.jax.{alias}: {arg} is a jax array; it sets {what}, so pass it "
                    f"as a number (with optax.inject_hyperparams: static_args=({arg!r},))"
                )
            if getattr(value, "shape", ()) != ():
                raise ValueError(
                    f"uniopt.jax.{alias}: {arg} must be a number or a 0-d array; got shape {value.shape}"
                )
            arrays.append((field, index, _signed(target, value)))
            if index is not None:
                kwargs.setdefault(field, [None, None])  # the entry takes the spec's default
            continue
        if value is None and _default(alias, arg) is None:
            value = None  # the spec's default for the convention
        elif value is None:
            value = _GIVEN_NONE  # refused by the core's check of that field
        else:
            value = _signed(target, value)
        if index is None:
            if value is not None:
                kwargs[field] = None if value is _GIVEN_NONE else value
        else:
            kwargs.setdefault(field, [None, None])[index] = value
    convention = arguments.get("convention") or _default_convention(alias)
    for field, value in list(kwargs.items()):
        if isinstance(value, list):  # a pair: entries left out take the spec's default entry
            default = _spec_default(spec_type, field)
            if default is None:  # the convention's default pair
                default = spec_type.conventions.get(convention, {}).get(field, (None, None))
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
            stand_in[field] = current if current != 0 else 1 if _is_int(current) else 0.5
        else:
            pair = list(current)
            pair[index] = pair[index] if pair[index] != 0 else 0.5
            stand_in[field] = tuple(pair)
    template = base.replace(**stand_in)

    def make(values: tuple[float, ...]) -> Spec:
        fields: dict[str, Any] = {}
        for (field, index, _), value in zip(arrays, values, strict=True):
            if index is None:
                integral = _is_int(getattr(template, field)) and float(value).is_integer()
                fields[field] = int(value) if integral else value  # decay_offset: an int field
            else:
                pair = list(fields.get(field, getattr(template, field)))
                pair[index] = value
                fields[field] = tuple(pair)
        return template.replace(**fields)

    concrete = [a for _, _, a in arrays if not isinstance(a, jax.core.Tracer)]
    if len(concrete) == len(arrays):
        make(tuple(float(a) for a in concrete))  # validate now: ValueError naming the field
    return template, Injected(tuple(a for _, _, a in arrays), make)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _source_file(alias: str) -> str:
    """The file optax defines ``<module>.<alias>`` in, from the package root
    (``optax/_src/alias.py``, ``optax/contrib/_muon.py``)."""
    function = optax_function(alias)
    while isinstance(function, functools.partial):  # optax.nadam is a partial of optax.adam
        function = function.func
    path = Path(inspect.getsourcefile(inspect.unwrap(function)) or "")
    root = Path(optax.__file__).parent.parent
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name


def _factory(alias: str) -> Callable[..., Transformation]:
    spec_type, names = ALIASES[alias]
    optax_params = _optax_parameters(alias)
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
        if arg in row.none_means:
            value, why = row.none_means[arg]
            return f"uniopt's ``{names[arg]}`` (default ``None``: ``{names[arg]}={value!r}``; {why})"
        if arg in names:
            field = names[arg]
            text = f"uniopt's ``{field}`` (default ``{_default(alias, arg)!r}``" + (
                ": the convention's)" if _default(alias, arg) is None else ")"
            )
            if arg in row.implies:
                implied = ", ".join(f"``{f}={v!r}``" for f, v in row.implies[arg].items())
                text += f"; given (not ``None``), it also sets {implied}"
            if arg in row.narrows:
                text += f"; accepted: {row.narrows[arg][1]}"
            return text
        if arg in MASKS and arg not in OPTAX_ONLY[alias]:
            return (
                "a pytree of bools like the parameters, or a callable ``params -> pytree``: where "
                f"``False``, no weight decay (as ``{optax_name(alias)}``)"
            )
        return f"optax's; accepted: {OPTAX_ONLY[alias][arg][1]}"

    row = OPTAX[alias]
    rows = "\n".join(f"        {p.name}: {describe(p.name)}" for p in parameters)
    fixed = ", ".join(f"``{f}={v!r}``" for f, v in row.fixed.items())
    origin = (
        f"``{optax_name(alias)}``'s arguments in optax's order"
        if row.native
        else f"optax has no ``optax.{alias}``; optax-style arguments"
    )
    source = f"{_source_file(alias)} (``{optax_name(alias)}``)" if row.native else "optax has no such alias"
    factory.__signature__ = signature  # type: ignore[attr-defined]
    factory.__name__ = factory.__qualname__ = alias
    factory.__module__ = "uniopt.jax"
    factory.__doc__ = (
        f"{spec_type.name} (:class:`uniopt.{spec_type.__name__}`; {spec_type.reference}) as an optax "
        f"transformation whose update includes the learning rate{'; it sets ' + fixed if fixed else ''}; "
        f"{origin}, then uniopt's own (keyword-only).\n\n"
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
        f"    Source: {source}; "
        f"src/uniopt/{spec_type.__module__.split('.')[-1]}.py.\n"
    )
    return factory


FACTORIES: dict[str, Callable[..., Transformation]] = {alias: _factory(alias) for alias in ALIASES}


def optax_arguments(spec: Spec) -> tuple[str, dict[str, Any]]:
    """The factory name and its arguments that build ``spec`` (the mapping read backwards).

    Among the factories of ``spec``'s row, the one fixing the most fields to ``spec``'s values
    (``nadamw`` for a NAdam with ``decoupled_weight_decay=True``, else ``nadam``).
    """
    hp = spec.hyperparameters
    fitting = [
        alias
        for alias, (spec_type, _) in ALIASES.items()
        if type(spec) is spec_type and all(hp[f] == v for f, v in OPTAX[alias].fixed.items())
    ]
    if not fitting:
        raise KeyError(f"no uniopt.jax factory for {spec!r}")
    alias = max(fitting, key=lambda a: len(OPTAX[a].fixed))
    out = {}
    for arg, target in ALIASES[alias][1].items():
        field, index = _target(target)
        out[arg] = _signed(target, hp[field] if index is None else hp[field][index])
        if arg in OPTAX[alias].none_means and out[arg] == OPTAX[alias].none_means[arg][0]:
            out[arg] = None  # the factory's spelling of that value
    for arg, fields in OPTAX[alias].implies.items():
        if any(hp[f] != v for f, v in fields.items()):  # the argument given would set those fields
            field = _target(ALIASES[alias][1][arg])[0]
            if hp[field] != _spec_default(ALIASES[alias][0], field):
                raise KeyError(
                    f"uniopt.jax.{alias} cannot build {spec!r}: {arg}={hp[field]!r} would also set "
                    + ", ".join(f"{f}={v!r}" for f, v in fields.items())
                )
            out[arg] = None  # the field keeps its default, the implied ones their own arguments
    return alias, out


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
