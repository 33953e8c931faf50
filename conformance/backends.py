"""Backends the suite can run, each a small declared entry.

A backend names its modes and dtypes and, per mode, a runner that executes a spec from NumPy inputs
and yields NumPy snapshots. Adding a framework is one entry here (plus its adapter); the runners of
array-API namespaces share :func:`run_namespace`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from uniopt import Spec

from .cells import LONG_STEPS, PARITY_STEPS, Cell

__all__ = [
    "BACKENDS",
    "LONG_STREAMS",
    "REDUCING_STREAMS",
    "REFERENCE",
    "TRAINING_DTYPES",
    "Backend",
    "CellRunner",
    "Member",
    "Runner",
    "Snapshot",
    "Unit",
    "batched",
    "bfloat16_per_convention",
    "bounds_of",
    "by_unit",
    "first_case_per_convention",
    "get",
    "long_elsewhere",
    "one_cell",
    "parity_for_natives",
    "per_convention_only",
    "reduced_elsewhere",
    "snapshots_of",
    "split_flat",
    "training_dtypes_only",
    "unit_arrays",
    "units_of",
]

Snapshot = tuple[list[np.ndarray], list[dict[str, np.ndarray]]]
"""Parameters and per-parameter slots after a step, as NumPy arrays."""

GradsAt = Callable[[int], list[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Member:
    """One cell's inputs inside a batch: its spec, starting parameters and gradient stream."""

    spec: Spec
    params0: list[np.ndarray]
    grads_at: GradsAt
    slot_dtypes: Mapping[str, str] = dataclasses.field(default_factory=dict)  # the case's (registry.Case)


Runner = Callable[[Sequence[Member], int], Iterator[list[Snapshot]]]
"""A backend mode's executor: runs every member of a batch for ``steps`` steps at once and yields,
before the first step and after each, one snapshot per member (in the members' order).

How a backend batches is its own choice; what it must keep is that a member's numbers cannot depend
on the others. The runners here keep one optimizer per (spec, dtype) over the parameters of its
members (:func:`units_of`: side by side, or stacked for an elementwise optimizer; every optimizer of
the table updates each parameter from that parameter's own gradient and state); ``tf.function`` and
``jax.jit`` trace one program that steps all of a batch's optimizers, ``torch.compile`` one per
optimizer."""

CellRunner = Callable[[Spec, list[np.ndarray], GradsAt, int], Iterator[Snapshot]]
"""The one-cell form: ``run(spec, params0, grads_at, steps)`` yields one snapshot per step."""


def one_cell(runner: Runner) -> CellRunner:
    """The one-cell form of a batch runner."""

    def run(spec: Spec, params0: list[np.ndarray], grads_at: GradsAt, steps: int) -> Iterator[Snapshot]:
        for snapshots in runner([Member(spec, params0, grads_at)], steps):
            yield snapshots[0]

    return run


def batched(run_one: CellRunner) -> Runner:
    """A batch runner that runs each member on its own with a one-cell runner."""

    def run(members: Sequence[Member], steps: int) -> Iterator[list[Snapshot]]:
        if any(m.slot_dtypes for m in members):  # a backend with slot_dtypes=True runs units
            raise ValueError("a one-cell runner takes no slot_dtypes (registry.Case.slot_dtypes)")
        trajectories = [list(run_one(m.spec, m.params0, m.grads_at, steps)) for m in members]
        yield from (list(step) for step in zip(*trajectories, strict=True))

    return run


@dataclasses.dataclass
class Unit:
    """The members of a batch that share a spec and a dtype: one optimizer over their parameters.

    ``sources[j]`` says what the unit's parameter ``j`` holds: ``[(k, i)]``, member ``k``'s
    parameter ``i`` as it is, or, for an elementwise optimizer (``OptimizerInfo.elementwise``),
    several members' parameters of one shape stacked along a new first axis, one row each."""

    spec: Spec
    params0: list[np.ndarray]
    sources: list[list[tuple[int, int]]]
    stacked: list[bool]
    slot_dtypes: Mapping[str, str] = dataclasses.field(default_factory=dict)  # its members'

    def grads(self, batch: Sequence[Member], step: int) -> list[np.ndarray]:
        out = []
        for source, stacked in zip(self.sources, self.stacked, strict=True):
            if stacked:
                out.append(np.stack([batch[k].grads_at(step)[i] for k, i in source]))
            else:
                k, i = source[0]
                out.append(batch[k].grads_at(step)[i])
        return out


def keras_optimizers(units: Sequence[Unit], variables: Sequence[Sequence[Any]]) -> list[Any]:
    """Each unit's ``uniopt.keras.from_spec`` optimizer (its lower-precision slots as
    ``state_dtypes``), built on that unit's ``variables``. Keras's backend is the process's (on
    TensorFlow the classes are uniopt.tf's)."""
    import uniopt.keras

    opts = [
        uniopt.keras.from_spec(
            unit.spec, **({"state_dtypes": dict(unit.slot_dtypes)} if unit.slot_dtypes else {})
        )
        for unit in units
    ]
    for opt, vs in zip(opts, variables, strict=True):
        opt.build(vs)
    return opts


def keras_units(keras: Any, units: Sequence[Unit], convert: Callable[[np.ndarray], Any]) -> tuple[list, list]:
    """Each unit's Keras variables (its starting parameters through ``convert``, the backend's array
    conversion) and its optimizer built on them (:func:`keras_optimizers`), as a Keras user makes
    them: ``(variables, optimizers)``, one entry per unit."""
    variables = [
        [keras.Variable(convert(p), dtype=p.dtype.name, name=f"p{i}") for i, p in enumerate(unit.params0)]
        for unit in units
    ]
    return variables, keras_optimizers(units, variables)


def units_of(batch: Sequence[Member], per_member: bool = False) -> list[Unit]:
    """Group a batch's members by (spec, dtype, slot dtypes), in first-seen order; within a unit of an
    elementwise optimizer, stack the parameters of members whose parameter shapes are the same (two
    or more). With ``per_member``, an optimizer that is not elementwise gets a unit per member (a
    compiled mode then compiles one program per spec and shapes, shared by the members that have
    them, instead of one holding every member)."""
    from uniopt.registry import get as get_info

    grouped: dict[tuple, list[int]] = {}
    for k, member in enumerate(batch):
        dtype = member.params0[0].dtype.str if member.params0 else ""
        grouped.setdefault((member.spec, dtype, tuple(sorted(member.slot_dtypes.items()))), []).append(k)
    units = []
    for (spec, _, slot_dtypes), members in grouped.items():
        try:
            elementwise = get_info(spec.name).elementwise
        except KeyError:
            elementwise = False
        by_shapes: dict[tuple, list[int]] = {}
        for k in members:
            shapes = tuple(p.shape for p in batch[k].params0)
            by_shapes.setdefault(shapes if elementwise else (k,), []).append(k)
        if per_member and not elementwise:
            for same in by_shapes.values():
                (k,) = same
                params = batch[k].params0
                units.append(
                    Unit(
                        spec,
                        list(params),
                        [[(k, i)] for i in range(len(params))],
                        [False] * len(params),
                        dict(slot_dtypes),
                    )
                )
            continue
        unit = Unit(spec, [], [], [], dict(slot_dtypes))
        for same in by_shapes.values():
            for i in range(len(batch[same[0]].params0)):
                if len(same) > 1:
                    unit.params0.append(np.stack([batch[k].params0[i] for k in same]))
                    unit.sources.append([(k, i) for k in same])
                    unit.stacked.append(True)
                else:
                    unit.params0.append(batch[same[0]].params0[i])
                    unit.sources.append([(same[0], i)])
                    unit.stacked.append(False)
        units.append(unit)
    return units


def by_unit(run_unit: CellRunner) -> Runner:
    """A batch runner from a runner of one optimizer over a list of parameters: one optimizer per
    unit (spec and dtype) over its members' parameters, the units run one after the other (the
    native rows: each framework's own optimizer, driven as its users drive it)."""

    def run(batch: Sequence[Member], steps: int) -> Iterator[list[Snapshot]]:
        units = units_of(batch)
        runs = [list(run_unit(u.spec, u.params0, functools.partial(u.grads, batch), steps)) for u in units]
        for per_unit in zip(*runs, strict=True):
            arrays = [
                unit_arrays(params, slots, u.spec.slot_names())
                for u, (params, slots) in zip(units, per_unit, strict=True)
            ]
            yield snapshots_of(batch, units, arrays)

    return run


def snapshots_of(
    batch: Sequence[Member], units: Sequence[Unit], arrays: Sequence[Sequence[np.ndarray]]
) -> list[Snapshot]:
    """Per member, its parameters and slots out of each unit's arrays, laid out as
    :func:`unit_arrays` lays them out (every parameter, then each parameter's slots in
    ``spec.slot_names()`` order); a stacked array gives each member its row."""
    params: list[dict[int, np.ndarray]] = [{} for _ in batch]
    slots: list[dict[int, dict[str, np.ndarray]]] = [{} for _ in batch]
    for unit, flat in zip(units, arrays, strict=True):
        n, names = len(unit.params0), unit.spec.slot_names()
        for j, (source, stacked) in enumerate(zip(unit.sources, unit.stacked, strict=True)):
            own = {name: flat[n + j * len(names) + s] for s, name in enumerate(names)}
            for row, (k, i) in enumerate(source):
                params[k][i] = flat[j][row] if stacked else flat[j]
                slots[k][i] = {name: v[row] for name, v in own.items()} if stacked else own
    return [
        ([p[i] for i in range(len(p))], [s[i] for i in range(len(s))])
        for p, s in zip(params, slots, strict=True)
    ]


def unit_arrays(params: Sequence[Any], slots: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[Any]:
    """A unit's arrays in :func:`snapshots_of`'s layout."""
    return [*params, *(s[name] for s in slots for name in names)]


def split_flat(flat: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """Undo a concatenation of flattened arrays of ``shapes`` (views of ``flat``)."""
    sizes = [int(np.prod(s)) for s in shapes]
    pieces = np.split(flat, np.cumsum(sizes)[:-1]) if sizes else []
    return [piece.reshape(shape) for piece, shape in zip(pieces, shapes, strict=True)]


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
    """Runner for a pure array-API namespace: the core's own ``init``/``update`` over ``xp``, one
    call per unit (spec and dtype) and step."""

    def run(batch: Sequence[Member], steps: int) -> Iterator[list[Snapshot]]:
        units = units_of(batch)
        params = [[to_xp(p) for p in u.params0] for u in units]
        states = [u.spec.init(p, xp, slot_dtypes=u.slot_dtypes) for u, p in zip(units, params, strict=True)]

        def snapshot() -> list[Snapshot]:
            arrays = [
                [to_numpy(a) for a in unit_arrays(p, s.slots, u.spec.slot_names())]
                for u, p, s in zip(units, params, states, strict=True)
            ]
            return snapshots_of(batch, units, arrays)

        yield snapshot()
        for step in range(1, steps + 1):
            for i, unit in enumerate(units):
                grads = [to_xp(g) for g in unit.grads(batch, step)]
                params[i], states[i] = unit.spec.update(grads, states[i], params[i], xp)
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
    # the modes that take longest, longest first: their jobs are queued before the others', so that
    # two cores do not end the run with one long job alone (modes not named keep their order)
    slowest: tuple[str, ...] = ()
    # whether it runs the cases with lower-precision slots (registry.Case.slot_dtypes): the core's
    # init(slot_dtypes=...) on NumPy, uniopt.jax's mu_dtype/accumulator_dtype, uniopt.torch's and
    # uniopt.tf's state_dtypes
    slot_dtypes: bool = False
    # mode -> (cell -> why this mode cannot run it, or None), beside ``supports``: a mode that runs
    # another optimizer than the backend's other modes (a Keras backend's ``native`` mode: Keras's
    # own optimizers, on their convention's cases)
    supports_in: Mapping[str, Callable[[Cell], str | None]] = dataclasses.field(default_factory=dict)
    # mode -> (backend, mode) whose bounds in the table (ulp_tolerance, relative_tolerance keys) this
    # mode's cells take where the row states none of their own: the same kernels run there
    # (OptimizerInfo.tolerance's same_as)
    bounds_from: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    # called before the module's first import (the availability check): sets what the process needs
    # then (Keras's KERAS_BACKEND, read at Keras's first import) and says why it cannot run, or None
    prepare: Callable[[], str | None] | None = None

    def unsupported(self, mode: str, cell: Cell) -> str | None:
        """Why ``cell`` cannot exist in this backend's ``mode`` (``supports``, ``supports_in``)."""
        reason = self.supports(cell) if self.supports is not None else None
        if reason is None and mode in self.supports_in:
            reason = self.supports_in[mode](cell)
        return reason

    def queue_order(self, modes: Sequence[str]) -> list[str]:
        """``modes`` in the order their jobs are queued: :attr:`slowest` first."""
        rank = {m: i for i, m in enumerate(self.slowest)}
        return sorted(modes, key=lambda m: rank.get(m, len(rank)))

    def skip_by_default(self, mode: str, cell: Cell) -> str | None:
        """Why ``cell`` is left to ``--full`` in ``mode``, or ``None`` if the default run covers it."""
        if mode not in self.default_cells:
            return None
        selects, reason = self.default_cells[mode]
        return None if selects(cell) else reason

    def unavailable(self) -> str | None:
        """Why this backend cannot run in this environment, or ``None`` (imports its module, after
        :attr:`prepare`)."""
        if self.prepare is not None:
            reason = self.prepare()
            if reason is not None:
                return reason
        try:
            importlib.import_module(self.module)
        except ImportError as exc:
            return f"{self.module} is not installed ({exc})"
        return None


LONG_STREAMS = ("long", "parity")
"""The streams of many steps: ``long`` (20,000) and ``parity`` (1,000)."""


def long_elsewhere(where: str) -> tuple[Callable[[Cell], bool], str]:
    """A mode's default cells: every cell but those of the long streams (:data:`LONG_STREAMS`),
    which run by default in ``where`` (one mode of the same framework), in the NumPy reference and
    in the native rows, and everywhere with ``--full``."""
    return (
        lambda cell: cell.stream not in LONG_STREAMS,
        f"left to --full: the long streams ({LONG_STEPS:,}-step long, run by default in {where}; "
        f"{PARITY_STEPS:,}-step parity, in the reference and the native rows); the other modes run "
        "them with --full",
    )


REDUCING_STREAMS = ("normal", "mixed_shapes")
"""The short streams the modes of :func:`reduced_elsewhere` run by default for an optimizer that is
not elementwise: the standard parameters (16 and 32 elements) and the mixed shapes (0-d, empty, 7
and 15 elements: the sums' odd lengths)."""


def on_streams_if_reducing(cell: Cell, streams: tuple[str, ...] = REDUCING_STREAMS) -> bool:
    """Whether ``cell`` is on one of ``streams``, or of an optimizer that is elementwise (whose
    cells stack, so every stream costs a mode the same ops)."""
    from uniopt.registry import get as get_info

    return cell.stream in streams or get_info(cell.optimizer).elementwise


def reduced_elsewhere(
    where: str, streams: tuple[str, ...] = REDUCING_STREAMS
) -> tuple[Callable[[Cell], bool], str]:
    """As :func:`long_elsewhere`, and for an optimizer that is not elementwise (a norm, a factorisation, a
    matrix product: ``OptimizerInfo.elementwise``) only ``streams`` (default
    :data:`REDUCING_STREAMS`; none: every cell of such an optimizer waits for ``--full``). Its cells
    cannot be stacked into one array per batch, so each costs a mode its own ops (and
    ``torch.compile`` graph nodes, whose compile time grows with their number): every stream runs in
    ``where``, in the NumPy reference, the native rows and with ``--full``."""
    long_cells, _ = long_elsewhere(where)

    def selects(cell: Cell) -> bool:
        return long_cells(cell) and on_streams_if_reducing(cell, streams)

    return (
        selects,
        f"left to --full: the long streams ({LONG_STEPS:,}-step long; {PARITY_STEPS:,}-step parity, "
        f"in the reference and the native rows), and for an optimizer that is not elementwise "
        + (f"the streams other than {', '.join(streams)}" if streams else "every stream")
        + f", run by default in {where}; the other modes run them with --full",
    )


TRAINING_DTYPES = ("float32", "bfloat16")
"""The dtypes the compilers' modes run by default (:func:`training_dtypes_only`)."""


def training_dtypes_only(
    rule: tuple[Callable[[Cell], bool], str], where: str
) -> tuple[Callable[[Cell], bool], str]:
    """``rule``'s default cells, of the dtypes models are trained and compiled in
    (:data:`TRAINING_DTYPES`) only. A compiled mode costs its time in tracing and compiling, once
    per optimizer and dtype whatever the number of steps, so its float64 and float16 cells are left
    to ``--full``: they run by default in ``where`` (the same framework's op sequence, uncompiled),
    in the NumPy reference, the native rows and every other framework's modes. ``float16`` and
    ``bfloat16`` take the compilers' same paths (upcast to float32, rounded back per op)."""
    selects, reason = rule
    return (
        lambda cell: cell.dtype in TRAINING_DTYPES and selects(cell),
        f"{reason}; and every float64 and float16 cell, run by default in {where}: a compiled mode "
        "spends its time compiling, once per optimizer and dtype",
    )


def first_case_per_convention() -> frozenset[tuple[str, str]]:
    """``(optimizer, case)`` of the first case of each optimizer and convention in the table (each
    convention is its own rule and its own scalars; the other cases vary hyperparameter values
    and flags within one)."""
    from uniopt.registry import TABLE

    firsts, seen = set(), set()
    for info in TABLE:
        for case in info.cases:
            convention = getattr(info.make(case), "convention", "uniopt")
            if (info.name, convention) not in seen:
                seen.add((info.name, convention))
                firsts.add((info.name, case.desc))
    return frozenset(firsts)


def per_convention_only(
    rule: tuple[Callable[[Cell], bool], str], where: str
) -> tuple[Callable[[Cell], bool], str]:
    """``rule``'s default cells, of the first case of each optimizer and convention only
    (:func:`first_case_per_convention`): a mode that runs the same rule through the same namespace
    as ``where`` (eagerly, or compiled by the compiler ``where`` compiles every case with) proves
    its own path per convention by default, and every case with ``--full``. Every case runs by
    default in ``where``."""
    selects, reason = rule
    firsts = first_case_per_convention()
    return (
        lambda cell: (cell.optimizer, cell.case) in firsts and selects(cell),
        f"{reason}; and of each optimizer the cases after the first of each convention, run by "
        f"default in {where}",
    )


def bfloat16_per_convention(
    rule: tuple[Callable[[Cell], bool], str], where: str
) -> tuple[Callable[[Cell], bool], str]:
    """``rule``'s default cells, with the ``bfloat16`` cells of the first case of each optimizer and
    convention only (:func:`first_case_per_convention`): a compiled mode spends its time compiling
    once per case and dtype, and a ``bfloat16`` rule is the ``float32`` one upcast and rounded back
    per op, so every case's ``float32`` cells and each convention's ``bfloat16`` cells prove the
    compiled path by default, every case's ``bfloat16`` cells with ``--full``. They run by default
    in ``where``."""
    selects, reason = rule
    firsts = first_case_per_convention()
    return (
        lambda cell: (cell.dtype != "bfloat16" or (cell.optimizer, cell.case) in firsts) and selects(cell),
        f"{reason}; and the bfloat16 cells of each optimizer's cases after the first of each "
        f"convention, run by default in {where}",
    )


def reducing_per_convention(
    rule: tuple[Callable[[Cell], bool], str], where: str, streams: tuple[str, ...] = ("normal",)
) -> tuple[Callable[[Cell], bool], str]:
    """``rule``'s default cells, and of an optimizer that is not elementwise only the ``float32``
    cells of ``streams`` in the first case of each convention (:func:`first_case_per_convention`):
    a mode that compiles such a rule per parameter shape (uniopt.torch's ``compiled``) pays a
    compile for every shape, case and dtype, so each convention's rule proves the compiled path by
    default, and the other cells run with ``--full``. They run by default in ``where``."""
    from uniopt.registry import get as get_info

    selects, reason = rule
    firsts = first_case_per_convention()

    def pick(cell: Cell) -> bool:
        if get_info(cell.optimizer).elementwise:
            return selects(cell)
        first = (cell.optimizer, cell.case) in firsts
        return first and cell.stream in streams and cell.dtype == "float32" and selects(cell)

    return (
        pick,
        f"{reason}; and for an optimizer that is not elementwise (compiled per parameter shape) "
        f"every cell but the float32 ones of the {', '.join(streams)} stream in the first case of "
        f"each convention, run by default in {where}",
    )


NOT_FLOAT32 = ("float64", "float16", "bfloat16")
"""The dtypes of :func:`float32_every_case`."""


def float32_every_case(
    rule: tuple[Callable[[Cell], bool], str], where: str
) -> tuple[Callable[[Cell], bool], str]:
    """``rule``'s default cells, of the first case of each optimizer and convention
    (:func:`first_case_per_convention`) in every dtype and stream, and of the other cases the
    float32 cells, on :data:`REDUCING_STREAMS` only for an optimizer that is not elementwise.

    A mode that runs every case of its framework (``tf@function``, ``jax@jit``) traces and compiles
    once per batch and case: in a CI dry run at ce8693c (AMD EPYC, 2 cores, beside the test suites)
    ``tf@function`` took 719 s and ``jax@jit`` 546 s of the matrix's 3,594 job seconds, Muon's 66
    float32 cells alone 104 s and 78 s. A case after the first of its convention varies
    hyperparameter values and flags of that convention's rule; its rule in another dtype is its
    float32 op sequence in that dtype, which the first case proves in every dtype; and a
    non-elementwise optimizer's other short streams (tiny, huge, zeros, sparse, nonfinite) take the
    same ops as its ``normal`` and ``mixed_shapes`` streams on other values, which the first case
    proves on every stream. Every cell these modes leave runs by default in ``where``, and here with
    ``--full``."""
    selects, reason = rule
    firsts = first_case_per_convention()

    def keeps(cell: Cell) -> bool:
        if (cell.optimizer, cell.case) in firsts:
            return True
        return cell.dtype not in NOT_FLOAT32 and on_streams_if_reducing(cell)

    return (
        lambda cell: keeps(cell) and selects(cell),
        f"{reason}; and of each optimizer's cases after the first of each convention the float64, "
        f"float16 and bfloat16 cells, and for an optimizer that is not elementwise the streams other "
        f"than {', '.join(REDUCING_STREAMS)}, run by default in {where}",
    )


def parity_for_natives(where: str) -> tuple[Callable[[Cell], bool], str]:
    """A framework's long-stream mode's default cells: every cell but those of the 1,000-step parity
    stream, which exists for the native rows: it runs by default in the NumPy reference and the
    native rows, and everywhere with ``--full``. The mode runs every case's short streams and the
    20,000-step long stream (``where``: the mode)."""
    return (
        lambda cell: cell.stream != "parity",
        f"left to --full: the {PARITY_STEPS:,}-step parity stream, the native rows' stream (it runs by "
        f"default in the reference and the native rows; {where} runs the long stream)",
    )


def parity_in(where: str) -> tuple[Callable[[Cell], bool], str]:
    """A native row's default cells where another native row runs the same optimizers' code on its
    parity stream (``where``): every cell but those of the 1,000-step parity stream, which runs by
    default there and in the NumPy reference, and here with ``--full``. Keras's own optimizers on
    its JAX and torch backends are the code Keras runs on TensorFlow (``keras@native``), on other
    kernels: their short streams show where those kernels round otherwise."""
    return (
        lambda cell: cell.stream != "parity",
        f"left to --full: the {PARITY_STEPS:,}-step parity stream, run by default in {where} and the "
        "NumPy reference",
    )


def _numpy_runner(mode: str) -> Runner:
    import array_api_compat.numpy as xp

    return run_namespace(xp, lambda a: a.copy(), lambda a: np.array(a, copy=True))


def _strict_runner(mode: str) -> Runner:
    import array_api_strict as xp

    return run_namespace(xp, xp.asarray, lambda a: np.from_dlpack(a).copy())


def _framework_backends() -> list[Backend]:
    """The framework backends, one module each (``conformance/backend_<name>.py`` defining
    ``BACKEND``; uniopt.keras on Keras's JAX and torch backends: ``backend_keras_jax.py`` and
    ``backend_keras_torch.py``); those modules import their framework only inside their runners."""
    from .native import NATIVE_BACKENDS

    found = []
    for module in ("torch", "tf", "jax", "keras_jax", "keras_torch"):
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
            slot_dtypes=True,
        ),
        Backend(
            "array_api_strict",
            "array_api_strict",
            ("eager",),
            ("float32", "float64"),
            _strict_runner,
            # NumPy's kernels behind the standard's functions, each call checked against the
            # standard in Python first: a non-elementwise optimizer's many small ops cost about 20
            # times NumPy's time (the dry run at af86043: Muon's 57 float64 cells 102 s here, its 66
            # in numpy@eager 5.4 s; Muon, Adafactor and LAMB 234 of this job's 276 s). Its streams
            # other than the reducing ones run the same calls on other values (the core's Python
            # never branches on an array's value), by default in the reference and here with --full
            default_cells={
                "eager": reduced_elsewhere("numpy@eager (the same NumPy kernels) and torch@eager")
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


def bounds_of(backend: str, mode: str) -> tuple[str, str] | None:
    """The backend and mode whose bounds in the table ``backend``'s ``mode`` also takes
    (:attr:`Backend.bounds_from`), or ``None``; a name not in :data:`BACKENDS` has none."""
    found = BACKENDS.get(backend)
    return None if found is None else found.bounds_from.get(mode)
