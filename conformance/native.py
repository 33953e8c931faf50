"""Native-parity rows: each framework's own optimizer on the cells whose case names its convention.

The reference of such a cell is the NumPy run of the uniopt spec with that ``convention``; these
backends run the *native* implementation instead, from the same hyperparameters, so the matrix
shows how far uniopt's convention is from the optimizer people port from:

- ``torch.optim@native``: the row's ``torch.optim.<TorchNames.native>`` (single-tensor path,
  ``foreach=False``), and for ``convention="official"`` the authors' RAdam step, transcribed op for
  op into current torch calls; for the optimizers torch.optim lacks whose uniopt convention is an
  authors' torch package (:data:`PACKAGE_NATIVES`: Schedule-Free AdamW's ``schedulefree``), that
  package's optimizer on the uniopt cases;
- ``keras@native``: ``keras.optimizers.<Name>`` on TensorFlow, its ``apply`` traced once per case
  into a ``tf.function`` that runs with TensorFlow's graph optimizer (grappler) off, so the graph
  executes the kernels eager execution runs, op for op: the results of Keras's eager apply, bitwise
  (``tests/tf_adapter/test_native_keras_row.py``), in one call per step instead of some fifty eager
  dispatches (the keras convention reproduces Keras's eager apply; with grappler on, as ``model.fit``
  runs it, TensorFlow's rewrites move some results by a few ulp, which ``python -m conformance
  parity`` measures);
- ``optax@native``: ``optax.<alias>`` with ``optax.apply_updates``, under ``jax.jit``, with
  ``jax_enable_x64`` off (jax's default) except for float64 cells;
- ``keras_jax@native`` and ``keras_torch@native`` (the ``native`` mode of the Keras-on-JAX and
  Keras-on-torch backends, ``conformance/backend_keras_jax.py`` and ``backend_keras_torch.py``):
  ``keras.optimizers.<Name>`` on Keras's JAX backend, ``apply`` eagerly at jax's defaults (the steps
  the keras convention reproduces; under ``jax.jit`` XLA fuses Keras's own multiply-adds), and on its
  torch backend, ``apply`` under ``torch.no_grad()`` (what ``fit`` runs there: eager by default).

Slots are read from the native state under uniopt's names, raw (no rescaling): a convention's slots
are defined to hold what the native optimizer holds. Frameworks are imported inside the runners.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from uniopt import Spec

from .backends import Backend, GradsAt, Runner, Snapshot, by_unit, jax_device, torch_device
from .cells import Cell, convention_of

__all__ = ["NATIVE_BACKENDS"]

NONFINITE_REASON = (
    "native rows compare finite streams: native kernels handle infinities their own way (PyTorch's "
    "lerp turns an infinite moment into NaN on the next step where uniopt's average keeps it "
    "infinite), which the spec does not try to reproduce"
)

_NATIVE_OF = {"torch.optim": ("torch", "official"), "keras": ("keras",), "optax": ("optax",)}

PACKAGE_NATIVES = {"ScheduleFreeAdamW": ("schedulefree", "AdamWScheduleFree")}
"""Optimizers torch.optim lacks whose ``uniopt`` convention follows the authors' torch package:
name -> (module, class). The ``torch.optim@native`` row runs it (single-tensor, in train mode)."""


def _native_named(backend: str, optimizer: str) -> bool:
    """Whether the table's row names ``backend``'s own optimizer (Keras's class, an optax alias)."""
    from uniopt.registry import get

    info = get(optimizer)
    if backend == "keras":
        return info.keras is not None and info.keras.native is not None
    if backend == "optax":
        return any(names.native for names in info.optax)
    return True  # torch.optim: the torch and official conventions exist only where torch names one


def _supports(backend: str, keras_backend: str = "tensorflow") -> Callable[[Cell], str | None]:
    """Why the ``backend`` native row cannot run a cell (``keras_backend``: the Keras backend a
    ``keras`` row runs on: on TensorFlow it takes :data:`uniopt.registry.KERAS_NATIVE_REFUSALS`)."""

    def check(cell: Cell) -> str | None:
        convention = convention_of(cell.optimizer, cell.case)
        if backend == "torch.optim" and cell.optimizer in PACKAGE_NATIVES:
            module, name = PACKAGE_NATIVES[cell.optimizer]
            if convention != "uniopt":
                return f"this row runs {module}.{name} on the uniopt convention's cases"
            return NONFINITE_REASON if cell.stream == "nonfinite" else None
        if convention not in _NATIVE_OF[backend]:
            return f"native rows run the cases whose convention is {' or '.join(_NATIVE_OF[backend])}"
        if not _native_named(backend, cell.optimizer):
            return (
                f"the table names no {backend} optimizer for {cell.optimizer} yet (its uniopt adapter "
                "does not run it), so its convention has no native row"
            )
        if cell.stream == "nonfinite":
            return NONFINITE_REASON
        if backend == "keras":
            from uniopt.registry import KERAS_NATIVE_REFUSALS, get

            refusals = KERAS_NATIVE_REFUSALS if keras_backend == "tensorflow" else {}
            refused = refusals.get(cell.optimizer)
            if refused is not None:
                info = get(cell.optimizer)
                if refused[0](info.make(info.case(cell.case)), cell.dtype):
                    return refused[1]
        return None

    return check


def keras_native_supports(keras_backend: str) -> Callable[[Cell], str | None]:
    """Why Keras's own optimizers on Keras's ``keras_backend`` (a ``native`` mode) cannot run a
    cell: the ``keras@native`` row's reasons, with that backend's refusals."""
    return _supports("keras", keras_backend)


def _hyper(spec: Spec) -> dict[str, Any]:
    return {k: v for k, v in spec.hyperparameters.items() if k != "convention"}


# -- torch.optim -------------------------------------------------------------------------------


def _official_radam_step(p: Any, g: Any, state: dict, h: dict[str, Any]) -> None:
    """One step of the authors' ``RAdam.step`` for one parameter (radam/radam.py), in today's torch
    call signatures; the float64 host arithmetic is theirs, expression for expression."""
    import math

    beta1, beta2 = h["betas"]
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    exp_avg.mul_(beta1).add_(g, alpha=1 - beta1)
    state["step"] += 1
    step = state["step"]
    beta2_t = beta2**step
    n_sma_max = 2 / (1 - beta2) - 1
    n_sma = n_sma_max - 2 * step * beta2_t / (1 - beta2_t)
    if n_sma >= 5:
        step_size = math.sqrt(
            (1 - beta2_t) * (n_sma - 4) / (n_sma_max - 4) * (n_sma - 2) / n_sma * n_sma_max / (n_sma_max - 2)
        ) / (1 - beta1**step)
    elif h["degenerated_to_sgd"]:
        step_size = 1.0 / (1 - beta1**step)
    else:
        step_size = -1
    if n_sma >= 5:
        if h["weight_decay"] != 0:
            p.add_(p, alpha=-h["weight_decay"] * h["lr"])
        denom = exp_avg_sq.sqrt().add_(h["eps"])
        p.addcdiv_(exp_avg, denom, value=-step_size * h["lr"])
    elif step_size > 0:
        if h["weight_decay"] != 0:
            p.add_(p, alpha=-h["weight_decay"] * h["lr"])
        p.add_(exp_avg, alpha=-step_size * h["lr"])


def _torch_optimizer(spec: Spec, params: list[Any], h: dict[str, Any]) -> Any:
    """``torch.optim.<TorchNames.native>`` (single-tensor path) with the spec's hyperparameters: the
    fields its constructor takes (torch's names are the spec's). A field it lacks is left out; the
    torch convention holds it at torch's behaviour (RAdam's ``degenerated_to_sgd``: the spec refuses
    another value there)."""
    import inspect

    import torch

    from uniopt import registry

    if spec.name in PACKAGE_NATIVES:
        import importlib

        module, name = PACKAGE_NATIVES[spec.name]
        native = getattr(importlib.import_module(module), name)
        accepted = inspect.signature(native).parameters
        optimizer = native(params, foreach=False, **{k: v for k, v in h.items() if k in accepted})
        optimizer.train()  # the package starts in eval mode and refuses step() there
        return optimizer
    names = registry.get(spec.name).torch
    if names is None or names.native is None:
        raise ValueError(f"torch.optim has no {spec.name}")
    cls = getattr(torch.optim, names.native)
    accepted = inspect.signature(cls).parameters
    single = {"foreach": False} if "foreach" in accepted else {}  # torch.optim.Muon has no foreach
    return cls(params, **single, **{k: v for k, v in h.items() if k in accepted})


def _torch_state_keys(spec: Spec) -> dict[str, str]:
    """The spec's slot -> torch.optim's state key, where the row's ``TorchNames.state`` renames it."""
    from uniopt import registry

    names = registry.get(spec.name).torch
    return {slot: key for key, slot in names.state.items()} if names is not None else {}


def _torch_runner(mode: str) -> Runner:
    import torch

    device = torch_device()

    def run_unit(spec: Spec, params0: list[np.ndarray], grads_at: GradsAt, steps: int) -> Iterator[Snapshot]:
        params = [torch.nn.Parameter(torch.from_numpy(p.copy()).to(device)) for p in params0]
        names = spec.slot_names()
        h = _hyper(spec)
        official = spec.convention == "official"
        if official:
            states = [
                {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)} for p in params
            ]
        else:
            optimizer = _torch_optimizer(spec, params, h)
        keys = {} if official else _torch_state_keys(spec)  # uniopt slot -> torch.optim's state key

        def slots_of(i: int, p: Any) -> dict[str, np.ndarray]:
            state = states[i] if official else optimizer.state[p]
            return {
                n: (
                    state[keys.get(n, n)] if keys.get(n, n) in state else spec.init_slot(n, p.detach(), torch)
                )
                .detach()
                .cpu()
                .numpy()
                .copy()
                for n in names
            }

        def snapshot() -> Snapshot:
            return [p.detach().cpu().numpy().copy() for p in params], [
                slots_of(i, p) for i, p in enumerate(params)
            ]

        yield snapshot()
        for t in range(1, steps + 1):
            for p, g in zip(params, grads_at(t), strict=True):
                p.grad = torch.from_numpy(g.copy()).to(device)
            if official:
                with torch.no_grad():
                    for p, state in zip(params, states, strict=True):
                        _official_radam_step(p.data, p.grad, state, h)
            else:
                optimizer.step()
            yield snapshot()

    return by_unit(run_unit)


# -- keras ---------------------------------------------------------------------------------------


def _keras_arguments(spec: Spec) -> tuple[str, dict[str, Any]]:
    """Keras's class name and arguments for a keras-convention spec, from its table row: the
    row's Keras arguments (``KerasNames.positional``) by the adapter's own name mapping; every other
    field (``maximize``, ``dampening``, NAdam's ``momentum_decay``, ...) must hold what Keras does
    without an argument (the keras convention's value, else the field's default) and is dropped."""
    import dataclasses

    from uniopt import registry
    from uniopt.keras.optimizers import _BY_SPEC  # the adapter's own name mapping (every backend)

    names = registry.get(spec.name).keras
    if names is None or names.native is None:
        raise ValueError(f"Keras has no {spec.name}")
    fields = {f.name: f for f in dataclasses.fields(spec)}
    keras_convention = spec.conventions.get("keras", {})
    adapter = _BY_SPEC[type(spec)]
    kwargs = {}
    for name, value in adapter.to_keras_kwargs(_hyper(spec)).items():
        if name in (*names.positional, *names.positional_after_base):
            kwargs[name] = value
            continue
        if name in _KERAS_ROUTED and value == _KERAS_ROUTED[name][0]:
            kwargs.update(_KERAS_ROUTED[name][1])
            continue
        field = fields[adapter.KERAS_NAMES.get(name, name)]
        if value != keras_convention.get(field.name, field.default):
            raise ValueError(f"Keras's {names.native} has no {name} (got {name}={value!r})")
    if names.weight_decay_none_is_zero:
        kwargs["weight_decay"] = kwargs.get("weight_decay") or None  # Keras's "no weight decay"
    return names.native, kwargs


_KERAS_ROUTED = {"adam_2d": (True, {"exclude_layers": [""]})}
"""Spec fields Keras sets through its routing arguments: Muon's ``adam_2d=True`` (every matrix
takes the Adam step) is ``exclude_layers=[""]`` (the empty pattern is found in every path)."""


def keras_on(backend: str) -> Callable[[], str | None]:
    """A :attr:`Backend.prepare` for a row on Keras's ``backend`` (``tensorflow``, ``jax``,
    ``torch``): sets ``KERAS_BACKEND`` before Keras's first import in this process, or says why the
    row cannot run here: Keras already imported on another backend (it reads ``KERAS_BACKEND`` once,
    at its first import, so each Keras backend runs in a process of its own)."""

    def prepare() -> str | None:
        import os
        import sys

        if "keras" in sys.modules:
            running = sys.modules["keras"].backend.backend()
            if running != backend:
                return (
                    f"Keras runs on {running} in this process (it reads KERAS_BACKEND at its first "
                    f"import); run the rows on Keras's {backend} backend in a process of their own"
                )
            return None
        os.environ["KERAS_BACKEND"] = backend
        return None

    return prepare


def import_keras(backend: str) -> Any:
    """``keras``, on Keras's ``backend`` (``RuntimeError`` where this process's Keras runs on another)."""
    why = keras_on(backend)()
    if why is not None:
        raise RuntimeError(why)
    import keras

    return keras


def _keras_optimizer(keras: Any, spec: Spec) -> Any:
    """``keras.optimizers.<Name>`` for a keras-convention spec (:func:`_keras_arguments`)."""
    native, kwargs = _keras_arguments(spec)
    return getattr(keras.optimizers, native)(**kwargs)


def _keras_slots(
    spec: Spec, optimizer: Any, params0: list[np.ndarray], read: Callable[[Any], np.ndarray]
) -> Callable[[], list[dict[str, np.ndarray]]]:
    """A reader of a Keras optimizer's slots under uniopt's names, per parameter (``read``: a Keras
    variable's value as NumPy)."""
    from uniopt import registry

    attributes = registry.get(spec.name).keras.slots  # uniopt slot -> Keras's list of variables
    in_use = [spec.slots_in_use(tuple(p.shape)) for p in params0]

    def slot(name: str, i: int) -> np.ndarray:
        variable = getattr(optimizer, attributes[name])[i]
        if variable is None:  # Muon's velocity of a variable its Muon step takes: Keras keeps
            return np.zeros_like(params0[i])  # none, the spec's zeros pass through unchanged
        value = read(variable)
        # a placeholder (Adafactor's r and c of a vector: Keras's int32 0-d dummies) is the
        # spec's zero in the parameter's dtype
        return value if name in in_use[i] else value.astype(params0[i].dtype)

    return lambda: [{n: slot(n, i) for n in spec.slot_names()} for i in range(len(params0))]


def _keras_runner(mode: str) -> Runner:
    keras = import_keras("tensorflow")

    def run_unit(spec: Spec, params0: list[np.ndarray], grads_at: GradsAt, steps: int) -> Iterator[Snapshot]:
        import tensorflow as tf

        variables = [keras.Variable(p, dtype=p.dtype.name) for p in params0]
        optimizer = _keras_optimizer(keras, spec)
        optimizer.build(variables)
        slots = _keras_slots(spec, optimizer, params0, lambda v: np.array(v.numpy(), copy=True))

        def snapshot() -> Snapshot:
            return [np.array(v.numpy(), copy=True) for v in variables], slots()

        # "graph" (the parity measurement): inside a tf.function, as model.fit runs it on a CPU
        # (Keras 3 turns XLA off there); "native": a tf.function run without grappler (eager's ops)
        def apply(grads: list[Any]) -> None:
            optimizer.apply(grads, variables)

        apply = tf.function(apply) if mode == "graph" else tf.function(apply, jit_compile=False)
        with _grappler_off() if mode == "native" else contextlib.nullcontext():
            yield snapshot()
            for t in range(1, steps + 1):
                apply([tf.constant(g) for g in grads_at(t)])
                yield snapshot()

    return by_unit(run_unit)


def keras_jax_native_runner() -> Runner:
    """Keras's own optimizers on Keras's JAX backend, ``optimizer.apply`` eagerly (each of Keras's
    ops on its own), at jax's defaults (``jax_enable_x64`` off: Keras sets none of jax's
    configuration): the steps the keras convention reproduces. Under ``jax.jit`` (``fit``'s
    default on JAX) XLA contracts Keras's own multiply-adds into fused ones, which moves its moments
    by a few ulp from the second step (Adam's keras cases: up to 959 ulp in 6 steps, the parameters
    bitwise there)."""
    keras = import_keras("jax")
    import jax

    device = jax_device()

    def run_unit(spec: Spec, params0: list[np.ndarray], grads_at: GradsAt, steps: int) -> Iterator[Snapshot]:
        with jax.default_device(device):
            variables = [keras.Variable(p, dtype=p.dtype.name, name=f"p{i}") for i, p in enumerate(params0)]
            optimizer = _keras_optimizer(keras, spec)
            optimizer.build(variables)
        slots = _keras_slots(spec, optimizer, params0, lambda v: np.array(v.value, copy=True))

        def snapshot() -> Snapshot:
            return [np.array(v.value, copy=True) for v in variables], slots()

        yield snapshot()
        for t in range(1, steps + 1):
            with jax.default_device(device):
                optimizer.apply(jax.device_put(grads_at(t), device), variables)
            yield snapshot()

    return by_unit(run_unit)


def keras_torch_native_runner() -> Runner:
    """Keras's own optimizers on Keras's torch backend, as its trainer runs them (``fit``'s default
    ``jit_compile`` there is eager): ``optimizer.apply`` under ``torch.no_grad()``."""
    keras = import_keras("torch")
    import torch

    from .backend_torch import to_numpy, to_torch

    device = torch_device()

    def run_unit(spec: Spec, params0: list[np.ndarray], grads_at: GradsAt, steps: int) -> Iterator[Snapshot]:
        with keras.device(device):
            variables = [
                keras.Variable(to_torch(p), dtype=p.dtype.name, name=f"p{i}") for i, p in enumerate(params0)
            ]
            optimizer = _keras_optimizer(keras, spec)
            optimizer.build(variables)
        slots = _keras_slots(spec, optimizer, params0, lambda v: to_numpy(v.value))

        def snapshot() -> Snapshot:
            return [to_numpy(v.value) for v in variables], slots()

        yield snapshot()
        for t in range(1, steps + 1):
            with keras.device(device), torch.no_grad():
                optimizer.apply([to_torch(g).to(device) for g in grads_at(t)], variables)
            yield snapshot()

    return by_unit(run_unit)


@contextlib.contextmanager
def _grappler_off() -> Iterator[None]:
    """TensorFlow's graph optimizer (grappler) off while the block runs, restored after: a
    ``tf.function`` first called inside runs its graph's ops as written, the kernels eager
    execution runs (the option is process-wide, and the other TF rows run with it on)."""
    import tensorflow as tf

    before = tf.config.optimizer.get_experimental_options()
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options(
            {**before, "disable_meta_optimizer": before.get("disable_meta_optimizer", False)}
        )


# -- optax ---------------------------------------------------------------------------------------

_OPTAX_FLAG_ALIASES = {"amsgrad": "amsgrad"}
"""Spec bool fields that optax spells as another alias taking the same arguments: Adam with
``amsgrad=True`` is ``optax.amsgrad`` (``optax.adam`` has no such flag)."""


def _optax_names(spec: Spec) -> Any:
    """The row's native :class:`~uniopt.registry.OptaxNames` for ``spec``: among those whose
    ``fixed`` fields ``spec`` has (``nadamw`` for a NAdam with decoupled weight decay), the most
    specific."""
    from uniopt.registry import get

    hp = spec.hyperparameters
    fitting = [
        names
        for names in get(spec.name).optax
        if names.native and all(hp[f] == v for f, v in names.fixed.items())
    ]
    if not fitting:
        raise KeyError(f"optax has no alias for {spec!r}")
    return max(fitting, key=lambda names: len(names.fixed))


def _optax_function(names: Any, alias: str) -> Any:
    """optax's ``<module>.<alias>`` for the row's :class:`~uniopt.registry.OptaxNames`
    (``optax.adam``, ``optax.contrib.muon``)."""
    import importlib

    return getattr(importlib.import_module(names.module), alias)


def _optax_transformation(spec: Spec) -> Any:
    """optax's ``<module>.<alias>`` of the spec's row, from the spec's hyperparameters through the
    row's names (``"b1": "betas[0]"``); arguments optax lacks stay out, and a 0 where optax's default
    is ``None`` (``momentum``: no trace at all) is passed as ``None``. An argument that implies other
    fields (``OptaxNames.implies``: ``consistent_rms``) is passed only where the spec has them
    (``None`` otherwise, optax's default)."""
    import inspect
    import re

    names = _optax_names(spec)
    h = spec.hyperparameters
    alias = next((a for f, a in _OPTAX_FLAG_ALIASES.items() if h.get(f) is True), names.alias)
    function = _optax_function(names, alias)
    parameters = inspect.signature(function).parameters
    kwargs: dict[str, Any] = {}
    for arg, target in names.names.items():
        if arg not in parameters:
            continue
        sign, field, index = re.fullmatch(r"(-?)(\w+)(?:\[(\d)\])?", target).groups()
        value = h[field] if index is None else h[field][int(index)]
        if sign and value is not None:  # "-field": optax's argument is the field's negative
            value = -value
        if arg in names.implies and any(h[f] != v for f, v in names.implies[arg].items()):
            value = None  # consistent_rms=None: optax's width scaling, the spec's "original"
        kwargs[arg] = None if value == 0 and parameters[arg].default is None else value
    return function(**kwargs)


def _optax_slots(spec: Spec, state: Any, params: list[Any]) -> list[dict[str, np.ndarray]]:
    """Per parameter, uniopt's slots found by field name anywhere in the optax state (the row's
    ``OptaxNames.state``), in the parameter's dtype (``optax.adafactor`` keeps the momentum of a
    float64 parameter in float32, the spec float32-rounded in float64: the same values). A field in
    several nodes (``optax.contrib.muon``'s ``mu`` in its Muon and its Adam partition) is read from
    the node holding each parameter (the others hold ``optax.MaskedNode`` there); a slot no node
    holds for a parameter (Muon's ``exp_avg_sq`` of a matrix) is the spec's initial value, zeros."""
    import optax

    fields = dict(_optax_names(spec).state)
    found: dict[str, list[Any]] = {}

    def visit(node: Any) -> None:
        if hasattr(node, "_fields"):
            for field in node._fields:
                if field in fields and fields[field] != "step":
                    value = getattr(node, field)
                    leaves = [None if isinstance(v, optax.MaskedNode) else v for v in value]
                    before = found.get(fields[field], [None] * len(leaves))
                    found[fields[field]] = [
                        b if v is None else v for v, b in zip(leaves, before, strict=True)
                    ]
            for child in node:
                visit(child)
        elif isinstance(node, tuple | list):
            for child in node:
                visit(child)
        elif isinstance(node, dict):
            for child in node.values():
                visit(child)

    visit(state)
    names = spec.slot_names()
    missing = set(names) - set(found)
    if missing:
        raise KeyError(f"optax state has no {sorted(missing)} for {spec!r}")

    def slot(name: str, i: int, p: Any) -> np.ndarray:
        value = found[name][i]
        if value is None:  # optax keeps no such state for this parameter
            return np.asarray(spec.init_slot(name, np.zeros(np.shape(p), np.asarray(p).dtype), np))
        return np.array(value, copy=True).astype(np.asarray(p).dtype)

    return [{name: slot(name, i, p) for name in names} for i, p in enumerate(params)]


def _optax_runner(mode: str, x64: bool | None = None) -> Runner:
    """optax under ``jax.jit``, at jax's defaults where it can be.

    ``jax_enable_x64`` (process-global) is set at the start of every cell: off (jax's default, where
    optax computes its step scalars in float32, for float32, float16 and bfloat16 parameters) unless
    the cell is float64, which needs it on; ``x64`` forces one setting for every cell. Each cell
    builds its own transformation and arrays after the switch, so nothing crosses settings."""
    import jax
    import optax

    device = jax_device()

    def run_unit(spec: Spec, params0: list[np.ndarray], grads_at: GradsAt, steps: int) -> Iterator[Snapshot]:
        wide = any(p.dtype == np.float64 for p in params0)
        jax.config.update("jax_enable_x64", wide if x64 is None else x64)
        tx = _optax_transformation(spec)

        @jax.jit
        def step(params, state, grads):
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        params = jax.device_put(list(params0), device)
        with jax.default_device(device):  # the state's counters too
            state = tx.init(params)

        def snapshot() -> Snapshot:
            return [np.array(p, copy=True) for p in params], _optax_slots(spec, state, params)

        yield snapshot()
        for t in range(1, steps + 1):
            with jax.default_device(device):
                params, state = step(params, state, jax.device_put(grads_at(t), device))
            yield snapshot()

    return by_unit(run_unit)


NATIVE_BACKENDS = [
    Backend(
        "torch.optim",
        "torch",
        ("native",),
        ("float32", "float64"),
        _torch_runner,
        supports=_supports("torch.optim"),
    ),
    Backend(
        "keras",
        "keras",
        ("native",),
        ("float32", "float64"),
        _keras_runner,
        supports=_supports("keras"),
        prepare=keras_on("tensorflow"),
    ),
    Backend(
        "optax",
        "optax",
        ("native",),
        ("float32", "float64"),
        _optax_runner,
        supports=_supports("optax"),
    ),
]
