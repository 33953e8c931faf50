"""uniopt.jax against optax: both under ``jax.jit`` with the parameters and state donated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .common import NOT_MEASURED, Copy, ParamSet, PeakProbe, Variant, bench_hyperparameters

FRAMEWORK = "jax"


def _optimizers() -> dict[str, tuple[str, dict[str, Any]]]:
    """optimizer -> (its first factory in the table's ``optax`` names, keyword arguments uniopt.jax
    and optax both accept, by optax name)."""
    from uniopt.registry import get

    out = {}
    for name, hyper in bench_hyperparameters().items():
        factories = get(name).optax
        if factories:
            kwargs = {("learning_rate" if k == "lr" else k): v for k, v in hyper.items()}
            out[name] = (factories[0].alias, kwargs)
    return out


def _native(optimizer: str) -> tuple[str, Callable[..., Any]] | None:
    """optax's own factory of ``optimizer`` and its dotted name (``optax.contrib.muon``): the table's
    ``<module>.<alias>``, or for a factory uniopt.jax does not read (``native=False``) the alias in
    ``optax`` or ``optax.contrib`` where optax has it (``optax.contrib.schedule_free_adamw``)."""
    import importlib

    from uniopt.registry import get

    names = get(optimizer).optax[0]
    for module in (names.module,) if names.native else ("optax", "optax.contrib"):
        factory = getattr(importlib.import_module(module), names.alias, None)
        if factory is not None:
            return f"{module}.{names.alias}", factory
    return None


OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = _optimizers()

LOWER_PRECISION_STATE: dict[str, str] = {"Adam": "mu_dtype"}
"""Optimizers also timed with a lower-precision state, by the option naming it (optax's)."""


_PENDING: list[Any] = []
"""The last bound copy's output, for :func:`device_sync`."""


def unavailable(device: str) -> str:
    """Why the benchmark cannot run on ``device`` (empty: it can)."""
    import jax

    try:
        jax.devices("cuda" if device == "gpu" else "cpu")
    except Exception as exc:  # jax raises RuntimeError or AssertionError when a platform is missing
        return f"jax sees no {device} ({type(exc).__name__}: {exc})"
    return ""


def versions(device: str = "cpu") -> dict[str, str]:
    import os

    import jax
    import optax

    out = {"jax": jax.__version__, "optax": optax.__version__, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    if device == "gpu":
        out["gpu"] = jax.devices()[0].device_kind
    return out


def peak_probe(device: str) -> PeakProbe:
    """Not measured on the GPU: jax offers no reset of its peak-memory statistic."""
    return NOT_MEASURED


def device_sync(device: str) -> Callable[[], None]:
    """Waits for the last bound copy."""
    import jax

    return lambda: jax.block_until_ready(_PENDING)


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
    import uniopt.jax as uj

    factory, kwargs = OPTIMIZERS[optimizer]
    out = [_variant(f"uniopt.jax.{factory} (jit, donated)", "uniopt", lambda: getattr(uj, factory)(**kwargs))]
    if options.get("implementations") or options.get("device", "cpu") == "cpu":
        out.append(
            _variant(
                f"uniopt.jax.{factory} .step (jit, donated)",
                "uniopt-mode",
                lambda: getattr(uj, factory)(**kwargs),
                use_step=True,
            )
        )
    native = _native(optimizer)
    if native is not None:
        dotted, native_factory = native
        out.append(_variant(f"{dotted} (jit, donated)", "native", lambda: native_factory(**kwargs)))
    if optimizer in LOWER_PRECISION_STATE:
        # the state bytes a bfloat16 first moment saves, and what it costs a step (uniopt.jax's rule
        # and optax's own; the optax row is a yardstick, not the native the headline ratio uses)
        import jax.numpy as jnp

        narrow = {**kwargs, LOWER_PRECISION_STATE[optimizer]: jnp.bfloat16}
        label = f"{LOWER_PRECISION_STATE[optimizer]}=bfloat16"
        out.append(
            _variant(
                f"uniopt.jax.{factory}({label}) (jit, donated)",
                "uniopt-mode",
                lambda: getattr(uj, factory)(**narrow),
            )
        )
        if native is not None:
            out.append(
                _variant(f"{dotted}({label}) (jit, donated)", "reference", lambda: native[1](**narrow))
            )
    return out


def copies(device: str = "cpu") -> dict[str, Copy]:
    """NumPy's copy on the CPU; on the GPU a jitted negation (reads and writes each element once)."""
    from .common import numpy_copy

    if device == "cpu":
        return {"numpy copyto": numpy_copy}

    def jax_negate(elements: int) -> Callable[[], None]:
        import jax
        import jax.numpy as jnp

        src = jnp.ones(elements, jnp.float32)
        negate = jax.jit(jnp.negative)

        def step() -> None:
            _PENDING[:] = [negate(src)]

        return step

    return {"jax -x (GPU)": jax_negate}
