"""uniopt.jax against optax: both under ``jax.jit`` with the parameters and state donated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .common import ParamSet, Variant

FRAMEWORK = "jax"

# optimizer -> (factory name in uniopt.jax and in optax, keyword arguments both accept)
OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "RAdam": ("radam", {"learning_rate": 1e-3}),
    "Adam": ("adam", {"learning_rate": 1e-3}),
    "AdamW": ("adamw", {"learning_rate": 1e-3}),
    "SGD": ("sgd", {"learning_rate": 1e-3, "momentum": 0.9}),
    "Adagrad": ("adagrad", {"learning_rate": 1e-2}),
    "RMSprop": ("rmsprop", {"learning_rate": 1e-2}),
}


def versions() -> dict[str, str]:
    import os

    import jax
    import optax

    return {"jax": jax.__version__, "optax": optax.__version__, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}


def _variant(name: str, kind: str, make: Callable[[], Any], use_step: bool = False) -> Variant:
    holder: dict[str, Any] = {}

    def build(params: list[np.ndarray], grads: list[np.ndarray]) -> Callable[[], None]:
        import jax
        import jax.numpy as jnp
        import optax

        tx = make()
        ps = [jnp.asarray(a) for a in params]
        gs = [jnp.asarray(g) for g in grads]
        holder["params"], holder["state"] = ps, tx.init(ps)

        def update(params: Any, state: Any, grads: Any) -> tuple[Any, Any]:
            if use_step:
                return tx.step(grads, state, params)
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        jitted = jax.jit(update, donate_argnums=(0, 1))

        def step() -> None:
            holder["params"], holder["state"] = jitted(holder["params"], holder["state"], gs)

        return step

    def sync() -> None:
        import jax

        jax.block_until_ready((holder["params"], holder["state"]))

    def state_bytes() -> int:
        import jax

        return sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(holder["state"]))

    return Variant(name, kind, build, state_bytes=state_bytes, sync=sync)


def variants(optimizer: str, pset: ParamSet, options: dict[str, Any]) -> list[Variant]:
    import optax

    import uniopt.jax as uj

    factory, kwargs = OPTIMIZERS[optimizer]
    return [
        _variant(f"uniopt.jax.{factory} (jit, donated)", "uniopt", lambda: getattr(uj, factory)(**kwargs)),
        _variant(
            f"uniopt.jax.{factory} .step (jit, donated)",
            "uniopt-mode",
            lambda: getattr(uj, factory)(**kwargs),
            use_step=True,
        ),
        _variant(f"optax.{factory} (jit, donated)", "native", lambda: getattr(optax, factory)(**kwargs)),
    ]


def copies() -> dict[str, Callable[[int], Callable[[], None]]]:
    from .common import numpy_copy

    return {"numpy copyto": numpy_copy}
