"""uniopt.jax: the uniopt spec as optax transformations.

>>> import jax.numpy as jnp, optax, uniopt.jax
>>> tx = uniopt.jax.radam(1e-3)  # or uniopt.jax.RAdam(1e-3): the same factory
>>> params = {"w": jnp.ones(3)}
>>> state = tx.init(params)
>>> updates, state = tx.update({"w": jnp.full(3, 0.5)}, state, params)
>>> params = optax.apply_updates(params, updates)

Each factory (``sgd, adagrad, rmsprop, adam, adamw, radam``) takes optax's arguments in optax's
order (:data:`POSITIONAL`), translated to the spec's in one declared mapping (:data:`ALIASES`), with
uniopt's defaults (optax's own with ``convention="optax"``), and
returns a :class:`Transformation` (an ``optax.GradientTransformationExtraArgs``) whose update
includes the learning rate, like optax's aliases. The update is the core's ``spec.rule`` with
``xp = jax.numpy`` applied to every leaf; the per-step scalars are the host's float64 values rounded
once per dtype (a table gathered by the traced step count, or a host callback). See docs/jax.md.
"""

from __future__ import annotations

from ._names import ALIASES, FACTORIES, OPTAX_ONLY, POSITIONAL, inject_hyperparams, optax_arguments
from ._porting import export_state, find_state, from_optax, import_state, to_optax
from ._transform import Transformation, UnioptState, transformation

__all__ = [
    "ALIASES",
    "OPTAX_ONLY",
    "POSITIONAL",
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "RAdam",
    "RMSprop",
    "Transformation",
    "UnioptState",
    "adagrad",
    "adam",
    "adamw",
    "export_state",
    "find_state",
    "from_optax",
    "from_spec",
    "import_state",
    "inject_hyperparams",
    "optax_arguments",
    "radam",
    "rmsprop",
    "sgd",
    "to_optax",
]

sgd = SGD = FACTORIES["sgd"]
adagrad = Adagrad = FACTORIES["adagrad"]
rmsprop = RMSprop = FACTORIES["rmsprop"]
adam = Adam = FACTORIES["adam"]
adamw = AdamW = FACTORIES["adamw"]
radam = RAdam = FACTORIES["radam"]

from_spec = transformation
"""``from_spec(spec, learning_rate=None)``: the transformation of a ready :class:`uniopt.Spec`
(``learning_rate`` ``None`` keeps ``spec.lr``; a schedule or 0-d array replaces it)."""
