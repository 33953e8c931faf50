"""uniopt.jax: the uniopt spec as optax transformations.

>>> import jax.numpy as jnp, optax, uniopt.jax
>>> tx = uniopt.jax.radam(1e-3)  # or uniopt.jax.RAdam(1e-3): the same factory
>>> params = {"w": jnp.ones(3)}
>>> state = tx.init(params)
>>> updates, state = tx.update({"w": jnp.full(3, 0.5)}, state, params)
>>> params = optax.apply_updates(params, updates)

There is one factory per optax name of a row of :data:`uniopt.registry.TABLE` (``sgd``, ``adagrad``,
``rmsprop``, ``adam``, ``adamw``, ``radam``, ``adamax``, ``nadam``, ``nadamw``, ``adadelta``, ``lion``,
``lamb``, ``adafactor``, and optax.contrib's ``schedule_free_adamw`` and ``muon``), each also under
its CamelCase name (:data:`CAMEL_CASE`). Each takes optax's arguments in optax's order
(:data:`POSITIONAL`), translated to the spec's by the row's mapping (:data:`ALIASES`), with uniopt's
defaults (optax's own with ``convention="optax"``), and returns a :class:`Transformation` (an
``optax.GradientTransformationExtraArgs``) whose update includes the learning rate, like optax's
aliases. The update is the core's ``spec.rule`` with
``xp = jax.numpy`` applied to every leaf; the per-step scalars are the host's float64 values rounded
once per dtype (a table gathered by the traced step count, or a host callback). For Schedule-Free
AdamW, :meth:`Transformation.eval_params` and :func:`schedule_free_eval_params` give the parameters
to evaluate at. See docs/jax.md.
"""

from __future__ import annotations

from ._names import (
    ALIASES,
    FACTORIES,
    MASKS,
    OPTAX,
    OPTAX_ONLY,
    POSITIONAL,
    inject_hyperparams,
    optax_arguments,
    optax_function,
)
from ._porting import export_state, find_state, from_optax, import_state, to_optax
from ._transform import Transformation, UnioptState, schedule_free_eval_params, transformation


def camel_case(alias: str) -> str:
    """The CamelCase name of factory ``alias``: its spec's class name (``radam`` -> ``RAdam``),
    plus the rest of the alias upper-cased where the alias extends it (``nadamw`` -> ``NAdamW``);
    underscores are dropped (``schedule_free_adamw`` -> ``ScheduleFreeAdamW``)."""
    spec_type = ALIASES[alias][0]
    stem = spec_type.__name__
    joined = alias.replace("_", "")
    if not joined.startswith(stem.lower()):
        raise ValueError(f"uniopt.jax: factory {alias!r} does not start with {stem.lower()!r}")
    return stem + joined[len(stem.lower()) :].upper()


CAMEL_CASE: dict[str, str] = {alias: camel_case(alias) for alias in FACTORIES}
"""Factory name -> its CamelCase alias (the same object): ``uniopt.jax.RAdam is uniopt.jax.radam``."""

globals().update(FACTORIES)
globals().update({CAMEL_CASE[alias]: factory for alias, factory in FACTORIES.items()})

from_spec = transformation
"""``from_spec(spec, learning_rate=None)``: the transformation of a ready :class:`uniopt.Spec`
(``learning_rate`` ``None`` keeps ``spec.lr``; a schedule or 0-d array replaces it)."""

__all__ = [
    "ALIASES",
    "CAMEL_CASE",
    "MASKS",
    "OPTAX",
    "OPTAX_ONLY",
    "POSITIONAL",
    "Transformation",
    "UnioptState",
    "camel_case",
    "export_state",
    "find_state",
    "from_optax",
    "from_spec",
    "import_state",
    "inject_hyperparams",
    "optax_arguments",
    "optax_function",
    "schedule_free_eval_params",
    "to_optax",
]
__all__ += sorted([*FACTORIES, *CAMEL_CASE.values()])  # the factories, from the table
