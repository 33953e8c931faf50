"""Backends the suite can run, each a small declared entry.

A backend names its modes and dtypes and, per mode, a runner that executes a spec from NumPy inputs
and yields NumPy snapshots. Adding a framework is one entry here (plus its adapter); the runners of
array-API namespaces share :func:`run_namespace`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from uniopt import Spec

from .cells import Cell

__all__ = ["BACKENDS", "REFERENCE", "Backend", "Snapshot", "get"]

Snapshot = tuple[list[np.ndarray], list[dict[str, np.ndarray]]]
"""Parameters and per-parameter slots after a step, as NumPy arrays."""

GradsAt = Callable[[int], list[np.ndarray]]
Runner = Callable[[Spec, list[np.ndarray], GradsAt, int], Iterator[Snapshot]]

DEVICE_VARIABLE = "UNIOPT_CONFORMANCE_DEVICE"
"""``cpu`` or ``gpu``: where framework runners put their arrays (set by ``--device``)."""


def requested_device() -> str:
    """The device framework runners should use: ``cpu`` (default) or ``gpu``."""
    import os

    return os.environ.get(DEVICE_VARIABLE, "cpu")


def torch_device() -> str:
    """The torch device of :func:`requested_device` (``cuda`` for ``gpu``), checked to exist."""
    import torch

    device = "cuda" if requested_device() == "gpu" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device gpu: torch sees no CUDA device")
    return device


def jax_device() -> Any:
    """The first jax device of :func:`requested_device`'s platform, checked to exist."""
    import jax

    platform = "gpu" if requested_device() == "gpu" else "cpu"
    try:
        return jax.devices(platform)[0]
    except RuntimeError as exc:
        raise RuntimeError(f"--device {platform}: jax sees no such device ({exc})") from None


REFERENCE = "numpy"
"""The backend every other one is compared against, in the same dtype."""


def run_namespace(
    xp: Any, to_xp: Callable[[np.ndarray], Any], to_numpy: Callable[[Any], np.ndarray]
) -> Runner:
    """Runner for a pure array-API namespace: the core's own ``init``/``update`` over ``xp``."""

    def run(spec: Spec, params0: list[np.ndarray], grads_at: GradsAt, steps: int):
        params = [to_xp(p) for p in params0]
        state = spec.init(params, xp)

        def snapshot() -> Snapshot:
            return (
                [to_numpy(p) for p in params],
                [{k: to_numpy(v) for k, v in slots.items()} for slots in state.slots],
            )

        yield snapshot()
        for step in range(1, steps + 1):
            grads = [to_xp(g) for g in grads_at(step)]
            params, state = spec.update(grads, state, params, xp)
            yield snapshot()

    return run


@dataclasses.dataclass(frozen=True)
class Backend:
    """One executor of the spec: its modes, dtypes and how to build a runner for a mode."""

    name: str
    module: str  # import needed for the backend to be available
    modes: tuple[str, ...]
    dtypes: tuple[str, ...]
    make_runner: Callable[[str], Runner]
    # mode -> (which cells the default run covers, why the others wait for --full)
    default_cells: Mapping[str, tuple[Callable[[Cell], bool], str]] = dataclasses.field(default_factory=dict)
    # cell -> why this backend cannot run it at all (even with --full), or None
    supports: Callable[[Cell], str | None] | None = None

    def skip_by_default(self, mode: str, cell: Cell) -> str | None:
        """Why ``cell`` is left to ``--full`` in ``mode``, or ``None`` if the default run covers it."""
        if mode not in self.default_cells:
            return None
        selects, reason = self.default_cells[mode]
        return None if selects(cell) else reason

    def unavailable(self) -> str | None:
        """Why this backend cannot run in this environment, or ``None``."""
        try:
            importlib.import_module(self.module)
        except ImportError as exc:
            return f"{self.module} is not installed ({exc})"
        return None


QUICK_STREAMS = ("normal", "nonfinite", "mixed_shapes")
"""Streams a slow row runs by default: plain inputs, NaN/Inf propagation, and odd shapes."""

WIDE = ("float32", "float64")


def selection(
    streams: Sequence[str] | None = None,
    dtypes: Sequence[str] | None = None,
    half_streams: Sequence[str] = (),
) -> Callable[[Cell], bool]:
    """A default-run choice of cells: ``streams`` (``None``: every stream but ``long``) in ``dtypes``
    (``None``: every dtype), plus ``half_streams`` in float16 and bfloat16. Framework-convention
    cases run their own streams (:data:`conformance.cells.CONVENTION_STREAMS`) in the chosen dtypes."""

    def selects(cell: Cell) -> bool:
        from .cells import convention_of

        if cell.stream == "long":
            return streams is not None and "long" in streams
        if convention_of(cell.optimizer, cell.case) != "uniopt":
            return dtypes is None or cell.dtype in dtypes
        if cell.dtype in ("float16", "bfloat16") and cell.stream in half_streams:
            return True
        return (streams is None or cell.stream in streams) and (dtypes is None or cell.dtype in dtypes)

    return selects


def _numpy_runner(mode: str) -> Runner:
    import array_api_compat.numpy as xp

    return run_namespace(xp, lambda a: a.copy(), lambda a: np.array(a, copy=True))


def _strict_runner(mode: str) -> Runner:
    import array_api_strict as xp

    return run_namespace(xp, xp.asarray, lambda a: np.from_dlpack(a).copy())


def _framework_backends() -> list[Backend]:
    """The framework backends, one module each (``conformance/backend_<name>.py`` defining
    ``BACKEND``); those modules import their framework only inside their runners."""
    from .native import NATIVE_BACKENDS

    found = []
    for module in ("torch", "tf", "jax"):
        try:
            found.append(importlib.import_module(f"conformance.backend_{module}").BACKEND)
        except ModuleNotFoundError as exc:
            if exc.name != f"conformance.backend_{module}":
                raise
    return [*found, *NATIVE_BACKENDS]


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "numpy",
            "array_api_compat",
            ("eager",),
            ("float32", "float64", "float16", "bfloat16"),
            _numpy_runner,
        ),
        Backend(
            "array_api_strict",
            "array_api_strict",
            ("eager",),
            ("float32", "float64"),
            _strict_runner,
            default_cells={
                "eager": (
                    selection(QUICK_STREAMS),
                    "left to --full: array_api_strict (a validating wrapper, ~5 ms a step) runs the "
                    "normal, nonfinite and mixed_shapes streams by default",
                )
            },
        ),
        *_framework_backends(),
    )
}


def get(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}") from None


def names() -> Sequence[str]:
    return tuple(BACKENDS)
