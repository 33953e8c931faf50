"""Optimizer state that moves between frameworks.

:class:`PortableState` is a framework-neutral record of one optimizer's state: which optimizer, its
hyperparameters, the convention whose rules produced the numbers, the step count and each
parameter's slots as NumPy arrays, in parameter order. :func:`save_state` writes it to one ``.npz``
file (the arrays as raw bits, the rest as JSON in a ``uint8`` array); :func:`load_state` reads it
back with ``allow_pickle=False`` and validates everything, so loading never executes code.

The adapters (``uniopt.torch``, ``uniopt.tf``, ``uniopt.jax``) export their optimizers' state to this
record and import it; :func:`export_state` and :func:`import_state` do the same for the core's
:class:`~uniopt.State`. Every import first runs :func:`check_compatible`, which raises ``ValueError``
naming the first mismatch (optimizer, slot names, parameter count, shape, dtype, hyperparameter)
before anything is changed.

Slots always hold uniopt's quantities (``exp_avg`` is the first moment, ``momentum_buffer`` holds
unscaled gradients, ...). ``convention`` says whose rules produced them: ``"uniopt"`` for uniopt's
own optimizers; ``"torch"``, ``"keras"`` or ``"optax"`` for state imported from those frameworks'
own optimizers, whose update rules, defaults and rounding differ from uniopt's (docs/porting.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ._spec import Spec, State

__all__ = [
    "CONVENTIONS",
    "FORMAT",
    "PortableState",
    "check_compatible",
    "export_state",
    "history_of",
    "import_state",
    "load_state",
    "save_state",
    "spec_class",
]

FORMAT = 1
"""Version of the file layout written by :func:`save_state`."""

CONVENTIONS = ("uniopt", "torch", "keras", "optax")
"""Whose update rules produced a record's numbers."""

_META = "__uniopt_state__"
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def spec_class(name: str) -> type[Spec]:
    """The :class:`Spec` subclass whose ``name`` is ``name`` (e.g. ``"RAdam"``)."""
    found: dict[str, type[Spec]] = {}
    pending = list(Spec.__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if "name" in cls.__dict__:
            found.setdefault(cls.name, cls)
    if name not in found:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(sorted(found))}")
    return found[name]


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _jsonable(name: str, value: Any) -> Any:
    """A hyperparameter as plain JSON (tuples become lists; NumPy scalars become Python ones;
    ``None`` stays ``None``, as Adafactor's ``eps[0]`` means the dtype's machine epsilon)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(float(value)):
            raise ValueError(f"hyperparameter {name}={value!r} is not finite")
        return float(value)
    if isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)):
        return [_jsonable(f"{name}[{i}]", v) for i, v in enumerate(value)]
    raise TypeError(
        f"hyperparameter {name}={value!r} ({type(value).__name__}) is not a number, bool, str or None"
    )


@dataclasses.dataclass(frozen=True, eq=False)
class PortableState:
    """One optimizer's state, framework-neutral.

    ``slots[i]`` maps each slot name to a NumPy array of parameter ``i``'s dtype ``dtypes[i]``
    (``"float32"``, ``"float64"``, ``"float16"``, ``"bfloat16"``) and of the shape the spec's
    :meth:`~uniopt.Spec.slot_shape` gives for its shape ``shapes[i]`` (``shapes[i]`` itself except
    for Adafactor's factored statistics). Every parameter
    has the same slot names. ``history`` is the spec's history (:attr:`uniopt.State.history`) as a
    mapping of its field names to finite Python floats, ``None`` for a spec that keeps none.
    Construction validates all of it.
    """

    optimizer: str
    hyperparameters: Mapping[str, Any]
    step: int
    slots: tuple[Mapping[str, np.ndarray], ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    convention: str = "uniopt"
    history: Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        if self.history is not None:
            if not isinstance(self.history, Mapping):
                raise TypeError(f"history must be a mapping of names to floats or None, got {self.history!r}")
            object.__setattr__(
                self, "history", {str(k): _jsonable(f"history {k}", v) for k, v in self.history.items()}
            )
            for k, v in self.history.items():
                if not isinstance(v, float):
                    raise ValueError(f"history {k}={v!r} is not a float")
        hyper = {k: _jsonable(k, v) for k, v in dict(self.hyperparameters).items()}
        object.__setattr__(self, "hyperparameters", hyper)
        as_array = lambda v: np.asarray(v) if isinstance(v, np.generic) else v  # noqa: E731
        object.__setattr__(self, "slots", tuple({k: as_array(v) for k, v in s.items()} for s in self.slots))
        object.__setattr__(self, "shapes", tuple(tuple(int(n) for n in s) for s in self.shapes))
        object.__setattr__(self, "dtypes", tuple(str(d) for d in self.dtypes))
        if not isinstance(self.optimizer, str) or not self.optimizer:
            raise ValueError(f"optimizer must be a non-empty name, got {self.optimizer!r}")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention {self.convention!r} is not one of {', '.join(CONVENTIONS)}")
        if isinstance(self.step, bool) or not isinstance(self.step, (int, np.integer)) or self.step < 0:
            raise ValueError(f"step must be an integer >= 0, got {self.step!r}")
        object.__setattr__(self, "step", int(self.step))
        if not (len(self.slots) == len(self.shapes) == len(self.dtypes)):
            raise ValueError(
                f"{len(self.slots)} slot mappings, {len(self.shapes)} shapes and {len(self.dtypes)} "
                "dtypes; there must be one of each per parameter"
            )
        names = tuple(self.slots[0]) if self.slots else ()
        slot_shape = _slot_shape_of(self.optimizer, self.hyperparameters, self.convention)
        for i, (slots, shape, dtype) in enumerate(zip(self.slots, self.shapes, self.dtypes, strict=True)):
            if dtype not in _FLOAT_DTYPES:
                raise ValueError(f"parameter {i}: dtype {dtype!r} is not one of {', '.join(_FLOAT_DTYPES)}")
            if set(slots) != set(names):
                raise ValueError(f"parameter {i} has slots {sorted(slots)}, parameter 0 has {sorted(names)}")
            for name, value in slots.items():
                if not isinstance(value, np.ndarray):
                    raise TypeError(
                        f"parameter {i} slot {name!r} is a {type(value).__name__}, not a NumPy array"
                    )
                expected = slot_shape(name, shape)
                if value.shape != expected or str(value.dtype) != dtype:
                    needs = "" if expected == shape else f" (the slot: {dtype}{list(expected)})"
                    raise ValueError(
                        f"parameter {i} slot {name!r} is {value.dtype}{list(value.shape)}, the parameter "
                        f"is {dtype}{list(shape)}{needs}"
                    )

    @property
    def slot_names(self) -> tuple[str, ...]:
        """The slot names (in the first parameter's order; empty when there is no parameter)."""
        return tuple(self.slots[0]) if self.slots else ()

    def to_spec(self) -> Spec:
        """The uniopt spec with these hyperparameters (validated by the spec)."""
        cls = spec_class(self.optimizer)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(self.hyperparameters) - fields)
        if unknown:
            raise ValueError(
                f"{self.optimizer}: hyperparameters {unknown} are not fields of uniopt.{cls.__name__}"
            )
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in self.hyperparameters.items()}
        if "convention" in fields and "convention" not in kwargs:
            kwargs["convention"] = self.convention
        return cls(**kwargs)

    def replace(self, **changes: Any) -> PortableState:
        """A validated copy with ``changes`` applied (e.g. ``hyperparameters=...``)."""
        return dataclasses.replace(self, **changes)


def _slot_shape_of(
    optimizer: str, hyperparameters: Mapping[str, Any], convention: str
) -> Callable[[str, tuple[int, ...]], tuple[int, ...]]:
    """``slot_shape(name, param_shape)`` of a record's spec: the parameter's shape for every spec
    that keeps the base :meth:`Spec.slot_shape` (or an optimizer this package does not know), else
    the spec's own, built from the record's hyperparameters (its errors are the spec's)."""
    try:
        cls = spec_class(optimizer)
    except ValueError:
        cls = None
    if cls is None or cls.slot_shape is Spec.slot_shape:
        return lambda name, shape: tuple(shape)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in hyperparameters.items() if k in fields}
    if "convention" in fields and "convention" not in kwargs:
        kwargs["convention"] = convention
    return cls(**kwargs).slot_shape


def convention_of(spec: Spec) -> str:
    """The convention a spec's update follows (``"uniopt"`` unless the spec says otherwise)."""
    return str(getattr(spec, "convention", "uniopt"))


def make_state(
    spec: Spec,
    step: int,
    slots: Sequence[Mapping[str, np.ndarray]],
    shapes: Sequence[tuple[int, ...]],
    dtypes: Sequence[str],
    hyperparameters: Mapping[str, Any] | None = None,
    history: Any = None,
) -> PortableState:
    """The record of ``spec``'s state (hyperparameters from ``spec`` unless given; ``history`` the
    spec's NamedTuple, or ``None``)."""
    return PortableState(
        history=None if history is None else {k: float(v) for k, v in history._asdict().items()},
        optimizer=spec.name,
        hyperparameters=spec.hyperparameters if hyperparameters is None else hyperparameters,
        step=step,
        slots=tuple(slots),
        shapes=tuple(shapes),
        dtypes=tuple(dtypes),
        convention=convention_of(spec),
    )


def check_compatible(
    state: PortableState,
    spec: Spec,
    shapes: Sequence[tuple[int, ...]],
    dtypes: Sequence[str] | None = None,
    *,
    hyperparameters: bool = True,
    owner: str = "import_state",
) -> None:
    """Raise ``ValueError`` naming the first mismatch between ``state`` and an optimizer running
    ``spec`` on parameters of ``shapes`` (and ``dtypes``).

    Checked in this order: the optimizer, the parameter count, each parameter's shape and dtype, the
    slot names ``spec`` needs, and (unless ``hyperparameters=False``) every hyperparameter, which must
    be equal for the import to continue the saved run (``lr`` included). ``convention`` is not
    compared: it chooses whose formulas run, and a record moves between conventions (a
    ``convention="torch"`` run of uniopt.torch into torch.optim, a Keras record into uniopt's rules);
    where conventions keep different slots or a history, the checks above refuse the record.
    """
    if state.optimizer != spec.name:
        raise ValueError(f"{owner}: the state is from {state.optimizer}, the optimizer is {spec.name}")
    if len(state.shapes) != len(shapes):
        raise ValueError(
            f"{owner}: the state holds {len(state.shapes)} parameters, the optimizer has {len(shapes)}"
        )
    for i, (saved, shape) in enumerate(zip(state.shapes, shapes, strict=True)):
        if tuple(saved) != tuple(int(n) for n in shape):
            raise ValueError(
                f"{owner}: parameter {i} has shape {tuple(shape)}, the state holds shape {tuple(saved)}"
            )
        if dtypes is not None and state.dtypes[i] != str(dtypes[i]):
            raise ValueError(
                f"{owner}: parameter {i} has dtype {dtypes[i]}, the state holds {state.dtypes[i]}"
            )
    start = spec.init_history()
    if (start is None) != (state.history is None) or (
        start is not None and set(state.history) != set(start._fields)
    ):
        want = "no history" if start is None else f"the history {list(start._fields)}"
        have = "none" if state.history is None else sorted(state.history)
        raise ValueError(
            f"{owner}: {spec.name} with these hyperparameters keeps {want}; the state holds {have}"
        )
    expected = spec.slot_names()
    if state.shapes and set(state.slot_names) != set(expected):
        raise ValueError(
            f"{owner}: the state has slots {sorted(state.slot_names)}, {spec.name} with these "
            f"hyperparameters needs {sorted(expected)}"
        )
    for i, (slots, shape) in enumerate(zip(state.slots, state.shapes, strict=True)):
        for name in expected:  # the spec's slot shapes (another convention may factor otherwise)
            want = spec.slot_shape(name, shape)
            if tuple(slots[name].shape) != want:
                raise ValueError(
                    f"{owner}: parameter {i} slot {name!r} has shape {tuple(slots[name].shape)}, "
                    f"{spec.name} with these hyperparameters keeps shape {want}"
                )
    if hyperparameters:
        mine = {k: _jsonable(k, v) for k, v in spec.hyperparameters.items()}
        for name in sorted((set(mine) | set(state.hyperparameters)) - {"convention"}):
            if mine.get(name) != state.hyperparameters.get(name):
                raise ValueError(
                    f"{owner}: hyperparameter {name} is {mine.get(name)!r} in the optimizer and "
                    f"{state.hyperparameters.get(name)!r} in the state (build the optimizer from "
                    "state.to_spec(), or pass hyperparameters=False to keep the optimizer's)"
                )


def export_state(spec: Spec, state: State, params: Sequence[Any]) -> PortableState:
    """The record of a core :class:`State` of ``spec`` for ``params`` (any arrays NumPy can read)."""
    params = list(params)
    if len(params) != len(state.slots):
        raise ValueError(f"export_state: {len(params)} params and state for {len(state.slots)} params")
    slots = []
    for i, entry in enumerate(state.slots):
        missing = set(spec.slot_names()) - set(entry)
        if missing:
            raise ValueError(f"export_state: parameter {i} lacks slots {sorted(missing)}")
        slots.append({name: _host_copy(entry[name]) for name in spec.slot_names()})
    return make_state(
        spec,
        state.step,
        slots,
        [tuple(p.shape) for p in params],
        [str(p.dtype) for p in params],
        history=state.history,
    )


def import_state(
    state: PortableState, spec: Spec, params: Sequence[Any], xp: Any = None, *, hyperparameters: bool = True
) -> State:
    """The core :class:`State` of ``state`` for ``spec`` and ``params``, after :func:`check_compatible`.

    Arrays are copied into ``xp`` (NumPy when ``None``); ``spec.update`` then continues the saved run.
    """
    params = list(params)
    check_compatible(
        state,
        spec,
        [tuple(p.shape) for p in params],
        [str(p.dtype) for p in params],
        hyperparameters=hyperparameters,
    )
    history = history_of(state, spec)
    if xp is None:
        return State(state.step, tuple({k: v.copy() for k, v in s.items()} for s in state.slots), history)
    return State(
        state.step, tuple({k: xp.asarray(v.copy()) for k, v in s.items()} for s in state.slots), history
    )


def history_of(state: PortableState, spec: Spec) -> Any:
    """The spec's history (its NamedTuple) from the record's mapping, ``None`` for none."""
    start = spec.init_history()
    return None if start is None or state.history is None else type(start)(**state.history)


def _host_copy(value: Any) -> np.ndarray:
    return np.array(value, copy=True)


# -- files --------------------------------------------------------------------------------------


def _bits(array: np.ndarray) -> np.ndarray:
    return np.array(array, order="C", copy=True).view(f"u{array.dtype.itemsize}")


def save_state(path: str | os.PathLike[str], state: PortableState) -> None:
    """Write ``state`` to ``path`` as one ``.npz`` file (no pickles: raw bits plus JSON metadata).

    ``np.savez`` appends ``.npz`` to a path that lacks it; give the full name to avoid surprises.
    """
    meta = {
        "format": FORMAT,
        "optimizer": state.optimizer,
        "convention": state.convention,
        "hyperparameters": state.hyperparameters,
        "step": state.step,
        "shapes": [list(s) for s in state.shapes],
        "dtypes": list(state.dtypes),
        "slot_names": list(state.slot_names),
    }
    if state.history is not None:
        meta["history"] = state.history
    arrays = {_META: np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)}
    for i, slots in enumerate(state.slots):
        for name, value in slots.items():
            arrays[f"slots/{i}/{name}"] = _bits(value)
    np.savez(path, **arrays)


def load_state(path: str | os.PathLike[str]) -> PortableState:
    """Read a file written by :func:`save_state`; ``ValueError`` if it is not one or is inconsistent."""
    with np.load(path, allow_pickle=False) as archive:
        if _META not in archive.files:
            raise ValueError(f"{os.fspath(path)}: not a uniopt state file (no {_META} entry)")
        try:
            meta = json.loads(archive[_META].tobytes().decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{os.fspath(path)}: unreadable metadata ({exc})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{os.fspath(path)}: format {meta.get('format')!r}, expected {FORMAT}")
        keys = ("optimizer", "convention", "hyperparameters", "step", "shapes", "dtypes", "slot_names")
        missing = [k for k in keys if k not in meta]
        if missing:
            raise ValueError(f"{os.fspath(path)}: metadata lacks {missing}")
        shapes, dtypes, names = meta["shapes"], meta["dtypes"], meta["slot_names"]
        if not (isinstance(shapes, list) and isinstance(dtypes, list) and len(shapes) == len(dtypes)):
            raise ValueError(f"{os.fspath(path)}: shapes and dtypes must be lists of equal length")
        expected = {f"slots/{i}/{n}" for i in range(len(shapes)) for n in names} | {_META}
        if set(archive.files) != expected:
            lacking, extra = sorted(expected - set(archive.files)), sorted(set(archive.files) - expected)
            problem = f"arrays {lacking} are missing" if lacking else f"arrays {extra} are unexpected"
            raise ValueError(f"{os.fspath(path)}: {problem}")
        slots = []
        slot_shape = _slot_shape_of(meta["optimizer"], meta["hyperparameters"], meta["convention"])
        for i, (shape, dtype) in enumerate(zip(shapes, dtypes, strict=True)):
            if dtype not in _FLOAT_DTYPES:
                raise ValueError(f"{os.fspath(path)}: parameter {i} has dtype {dtype!r}")
            target = _dtype(dtype)
            entry = {}
            for name in names:
                raw = archive[f"slots/{i}/{name}"]
                want = list(slot_shape(name, tuple(shape)))
                if raw.dtype != np.dtype(f"u{target.itemsize}") or list(raw.shape) != want:
                    raise ValueError(
                        f"{os.fspath(path)}: parameter {i} slot {name!r} is {raw.dtype}{list(raw.shape)}, "
                        f"expected the bits of {dtype}{want}"
                    )
                entry[name] = raw.view(target)
            slots.append(entry)
    return PortableState(
        optimizer=meta["optimizer"],
        hyperparameters=meta["hyperparameters"],
        step=meta["step"],
        slots=tuple(slots),
        shapes=tuple(tuple(s) for s in shapes),
        dtypes=tuple(dtypes),
        convention=meta["convention"],
        history=meta.get("history"),  # files of specs without a history have none
    )
