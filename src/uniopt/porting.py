"""Optimizer state that moves between frameworks.

:class:`PortableState` is a framework-neutral record of one optimizer's state: which optimizer, its
hyperparameters, the convention whose rules produced the numbers, the step count and each
parameter's slots as NumPy arrays, in parameter order. :func:`save_state` writes it to one ``.npz``
file (the arrays as raw bits, the rest as JSON in a ``uint8`` array), atomically (a temporary file
renamed over the old one); :func:`load_state` reads it back without unpickling anything and
validates everything, raising ``ValueError`` naming the file for any damaged or foreign file.

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

import contextlib
import dataclasses
import errno
import json
import math
import os
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, BinaryIO

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
    "state_file_name",
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
    (``"float32"``, ``"float64"``, ``"float16"``, ``"bfloat16"``), or, for a slot of the spec's
    :attr:`~uniopt.Spec.lower_precision_slots`, of a narrower dtype that one holds exactly (a
    moment stored in bfloat16: :attr:`slot_dtypes`, docs/conventions.md "Lower-precision state"),
    and of the shape the spec's
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
                if value.shape != expected or not (
                    str(value.dtype) == dtype
                    or _narrower_allowed(self.optimizer, name, str(value.dtype), dtype)
                ):
                    needs = "" if expected == shape else f" (the slot: {dtype}{list(expected)})"
                    narrow = _narrow_hint(self.optimizer, dtype)
                    raise ValueError(
                        f"parameter {i} slot {name!r} is {value.dtype}{list(value.shape)}, the parameter "
                        f"is {dtype}{list(shape)}{needs}{narrow}"
                    )

    @property
    def slot_dtypes(self) -> tuple[dict[str, str], ...]:
        """Per parameter, the slots stored in another dtype than the parameter's, by name (``{}``
        where every slot has its parameter's dtype): what an adapter's ``state_dtypes`` (optax's
        ``mu_dtype``) must say to import the record."""
        return tuple(
            {name: str(value.dtype) for name, value in slots.items() if str(value.dtype) != dtype}
            for slots, dtype in zip(self.slots, self.dtypes, strict=True)
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


def _narrower_allowed(optimizer: str, name: str, stored: str, param_dtype: str) -> bool:
    """Whether slot ``name`` of ``optimizer`` may be held in ``stored`` beside a ``param_dtype``
    parameter: a slot of the spec's :attr:`~uniopt.Spec.lower_precision_slots`, in a dtype that
    ``param_dtype`` holds exactly (:data:`uniopt._math.EXACTLY_WIDENS`)."""
    from ._math import EXACTLY_WIDENS

    try:
        cls = spec_class(optimizer)
    except ValueError:
        return False
    return name in cls.lower_precision_slots and stored in EXACTLY_WIDENS.get(param_dtype, ())


def _narrow_hint(optimizer: str, param_dtype: str) -> str:
    """What a record may hold narrower for ``optimizer``, for a refusal's message."""
    from ._math import EXACTLY_WIDENS

    try:
        slots = spec_class(optimizer).lower_precision_slots
    except ValueError:
        return ""
    narrower = EXACTLY_WIDENS.get(param_dtype, ())
    if not slots or not narrower:
        return ""
    return f" (only {', '.join(map(repr, slots))} may be narrower: {' or '.join(narrower)})"


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

    Checked in this order: the optimizer, the step (below ``2**63``), the parameter count, each
    parameter's shape and dtype, the history, the slot names ``spec`` needs, each slot's array (a
    NumPy array of its parameter's dtype: a record's slot mappings can be changed after it checked
    them) and shape, and (unless ``hyperparameters=False``) every hyperparameter, which must be
    equal for the import to continue the saved run (``lr`` included). ``convention`` is not
    compared: it chooses whose formulas run, and a record moves between conventions (a
    ``convention="torch"`` run of uniopt.torch into torch.optim, a Keras record into uniopt's
    rules); where conventions keep different slots or a history, the checks above refuse the record.
    """
    if state.optimizer != spec.name:
        raise ValueError(f"{owner}: the state is from {state.optimizer}, the optimizer is {spec.name}")
    if state.step >= 2**63:  # the frameworks' step counters are int64 (uniopt.jax's int32: checked there)
        raise ValueError(f"{owner}: step {state.step} does not fit a 64-bit step counter")
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
            value, want = slots[name], spec.slot_shape(name, shape)
            # the record checked its arrays when it was made; its slot mappings can be changed since
            if not isinstance(value, np.ndarray) or (
                str(value.dtype) != state.dtypes[i]
                and spec.slot_dtype_refusal(name, str(value.dtype), state.dtypes[i]) is not None
            ):
                kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
                raise ValueError(
                    f"{owner}: parameter {i} slot {name!r} is {kind}, the state holds the parameter as "
                    f"{state.dtypes[i]} (a slot is a NumPy array of its parameter's dtype, or of a "
                    "narrower one for a slot of the spec's lower_precision_slots)"
                )
            if tuple(value.shape) != want:
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


def _arrays_of(state: PortableState) -> dict[str, np.ndarray]:
    """The arrays of ``state``'s file: the JSON metadata as ``uint8`` and each slot as its bits."""
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
    if any(state.slot_dtypes):  # only then: a file without narrow slots is as before
        meta["slot_dtypes"] = [dict(d) for d in state.slot_dtypes]
    if state.history is not None:
        meta["history"] = state.history
    arrays = {_META: np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)}
    for i, slots in enumerate(state.slots):
        for name, value in slots.items():
            arrays[f"slots/{i}/{name}"] = _bits(value)
    return arrays


def state_file_name(path: str | os.PathLike[str]) -> str:
    """The file :func:`save_state` writes for ``path``: ``path`` with ``.npz`` appended when it does
    not end with it (``numpy.savez``'s rule, kept: ``"ckpt"`` -> ``"ckpt.npz"``)."""
    name = os.fsdecode(os.fspath(path))
    return name if name.endswith(".npz") else name + ".npz"


def _umask_mode() -> int:
    """``0o666`` less the process's umask: the mode ``open`` gives a new file (read without
    changing the umask where ``/proc`` says it; else by setting it back at once)."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _sync_folder(folder: str) -> None:
    """fsync ``folder`` so that a rename in it survives a power loss (POSIX). Where the OS cannot
    open or sync a folder (Windows; file systems that answer EINVAL), the rename is left to the OS."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_FOLDER_SYNC:
            raise
    finally:
        os.close(fd)


_NO_FOLDER_SYNC = {
    getattr(errno, e) for e in ("EINVAL", "EBADF", "ENOTSUP", "EOPNOTSUPP") if hasattr(errno, e)
}


def save_state(path: str | os.PathLike[str] | BinaryIO, state: PortableState) -> None:
    """Write ``state`` to one ``.npz`` file at ``path``, atomically.

    **Format** (version :data:`FORMAT`): an uncompressed zip of ``.npy`` arrays, as
    ``numpy.savez`` writes it: ``__uniopt_state__``, the JSON metadata (``format``, ``optimizer``,
    ``convention``, ``hyperparameters``, ``step``, ``shapes``, ``dtypes``, ``slot_names``, for
    a spec that keeps one, ``history``, and where a slot is stored narrower than its parameter,
    ``slot_dtypes``: one mapping per parameter of those slots to their dtype,
    :attr:`PortableState.slot_dtypes`; a file without it holds every slot in its parameter's dtype,
    as files written before it) as a 1-d ``uint8`` array; and ``slots/<i>/<name>``, the raw bits of
    parameter ``i``'s slot ``name`` (``uint16``, ``uint32`` or ``uint64`` for ``float16`` and
    ``bfloat16``, ``float32``, ``float64``). No pickles.

    **File name**: ``.npz`` is appended to a path that does not end with it, as ``numpy.savez``
    does (``save_state("ckpt", s)`` writes ``ckpt.npz``; :func:`state_file_name` gives the name).
    A symbolic link is written through: the file it points to is replaced.

    **Atomicity**: the file is written to a temporary file in the same folder
    (``.<name>.<random>.tmp``), flushed and ``os.fsync``-ed, then renamed over ``path`` with
    ``os.replace`` and the folder fsync-ed (where the OS allows). A process killed at any point
    leaves either the previous file or the new one at ``path``, never a partial one; a kill before
    the rename may leave the hidden temporary file behind (its name does not end with ``.npz``, and
    it may be deleted). On an exception the temporary file is removed and ``path`` is untouched.
    The new file gets the old file's permission bits, or those of a new file (``0o666`` less the
    umask).

    ``path`` may also be a binary file object (anything with ``write``): the archive is written to it
    as it is, with no atomicity (the caller owns that file).

    Raises ``TypeError`` where ``state`` is not a :class:`PortableState` (the arguments are
    ``(path, state)``; an adapter's ``export_state`` makes one), and ``OSError`` from the file system
    naming ``path`` (``FileNotFoundError`` for a missing folder, ``PermissionError`` for one that
    cannot be written, ``IsADirectoryError`` where ``path`` is a folder), before anything is written.
    """
    if not isinstance(state, PortableState):
        hint = " (the arguments are swapped)" if isinstance(path, PortableState) else ""
        raise TypeError(
            f"save_state(path, state): state must be a uniopt.PortableState (an adapter's export_state "
            f"makes one), got {type(state).__name__}{hint}"
        )
    arrays = _arrays_of(state)
    if hasattr(path, "write"):
        np.savez(path, **arrays)
        return
    target = os.path.realpath(state_file_name(path))
    folder = os.path.dirname(target)
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = _umask_mode()
    try:
        fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _naming(exc, target, f"cannot create a file in its folder {folder}") from exc
    try:
        with os.fdopen(fd, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp, mode)
        os.replace(temp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError):
            raise _naming(exc, target, "cannot be replaced") from exc
        raise
    _sync_folder(folder)


def _naming(exc: OSError, target: str, what: str) -> OSError:
    """``exc`` again (the same ``OSError`` subclass, chosen by its errno) naming the state file, not
    the temporary file it failed on."""
    return OSError(
        exc.errno, f"{exc.strerror}: {what} (the state file is written through a temporary file)", target
    )


# what reading a damaged zip or .npy raises (zipfile, numpy.lib.format, zlib for deflated members)
_DAMAGED = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    struct.error,
    zlib.error,
    NotImplementedError,  # an unknown compression method
    RuntimeError,  # an encrypted member
    OverflowError,
    ValueError,  # numpy's header checks
)


def _reraise_io(exc: BaseException) -> None:
    """Re-raise an ``OSError`` that is the file system's (a read error); ``EINVAL`` is a damaged
    archive's (zipfile seeking to a negative offset it read)."""
    if isinstance(exc, OSError) and exc.errno != errno.EINVAL:
        raise exc


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _read_array(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    name: str,
    want: tuple[np.dtype, list[int] | None],
    what: str,
    expected: str,
) -> np.ndarray:
    """One member's array, whose header must say ``want`` (a dtype, and a shape or ``None`` for any
    1-d shape; else ``ValueError``: ``<name>: <what> is <dtype><shape>, expected <expected>``), checked
    before any data is read. ``ValueError`` naming the file and the array when the member is damaged
    (bad header, short or long data, CRC mismatch)."""
    key = info.filename[: -len(".npy")]
    with contextlib.ExitStack() as stack:
        try:
            member = stack.enter_context(archive.open(info))
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                raise ValueError(f"npy format version {version[0]}.{version[1]}; save_state writes 1.0")
            data_bytes = info.file_size - member.tell()
        except (*_DAMAGED, OSError) as exc:
            _reraise_io(exc)
            raise ValueError(f"{name}: array {key!r} is damaged ({_why(exc)})") from None
        if dtype.hasobject:
            raise ValueError(
                f"{name}: array {key!r} holds Python objects (pickled data), which load_state never "
                "loads (numpy.load with allow_pickle=False); not a uniopt state file"
            )
        want_dtype, want_shape = want
        if dtype != want_dtype or (list(shape) != want_shape if want_shape is not None else len(shape) != 1):
            raise ValueError(f"{name}: {what} is {dtype}{list(shape)}, expected {expected}")
        size = math.prod(shape) * dtype.itemsize
        if size != data_bytes:
            raise ValueError(
                f"{name}: array {key!r} is damaged (its header says {dtype}{list(shape)}, {size} bytes; "
                f"the archive holds {data_bytes} bytes of data)"
            )
        out = np.empty(math.prod(shape), dtype)
        view = memoryview(out).cast("B")
        try:
            done = 0
            while done < size:
                count = member.readinto(view[done:])
                if not count:
                    break
                done += count
            extra = member.read(1)  # at the end: zipfile checks the CRC
        except (*_DAMAGED, OSError) as exc:
            _reraise_io(exc)
            raise ValueError(f"{name}: array {key!r} is damaged ({_why(exc)})") from None
        if done != size or extra:
            raise ValueError(f"{name}: array {key!r} is damaged ({done} bytes of data where {size} were due)")
    return out.reshape(shape, order="F" if fortran else "C")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _metadata(raw: np.ndarray, name: str) -> dict[str, Any]:
    """The metadata's JSON, its fields' types checked (their values are checked by the record)."""
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{name}: unreadable metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{name}: the metadata is a JSON {type(meta).__name__}, expected an object")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{name}: format {meta.get('format')!r}, expected {FORMAT}")
    keys = ("optimizer", "convention", "hyperparameters", "step", "shapes", "dtypes", "slot_names")
    missing = [k for k in keys if k not in meta]
    if missing:
        raise ValueError(f"{name}: metadata lacks {missing}")
    shapes, dtypes, names = meta["shapes"], meta["dtypes"], meta["slot_names"]
    if not (isinstance(shapes, list) and isinstance(dtypes, list) and len(shapes) == len(dtypes)):
        raise ValueError(f"{name}: shapes and dtypes must be lists of equal length")
    for i, shape in enumerate(shapes):
        if not (isinstance(shape, list) and all(_is_count(n) for n in shape)):
            raise ValueError(f"{name}: parameter {i} has shape {shape!r}, expected a list of integers >= 0")
    for i, dtype in enumerate(dtypes):
        if dtype not in _FLOAT_DTYPES:
            raise ValueError(f"{name}: parameter {i} has dtype {dtype!r}")
    if not (
        isinstance(names, list) and all(isinstance(n, str) for n in names) and len(set(names)) == len(names)
    ):
        raise ValueError(f"{name}: slot_names {names!r} is not a list of distinct names")
    for key, kind in (("hyperparameters", dict), ("optimizer", str), ("convention", str)):
        if not isinstance(meta[key], kind):
            raise ValueError(f"{name}: {key} {meta[key]!r} is not a JSON {kind.__name__}")
    narrow = meta.setdefault("slot_dtypes", [{} for _ in shapes])  # older files: every slot as its parameter
    if not (
        isinstance(narrow, list)
        and len(narrow) == len(shapes)
        and all(
            isinstance(d, dict) and all(k in names and v in _FLOAT_DTYPES for k, v in d.items())
            for d in narrow
        )
    ):
        raise ValueError(
            f"{name}: slot_dtypes {narrow!r} is not a list of one mapping per parameter from slot names "
            f"to {', '.join(_FLOAT_DTYPES)}"
        )
    return meta


def load_state(path: str | os.PathLike[str] | BinaryIO) -> PortableState:
    """Read a file written by :func:`save_state` (or a binary file object holding one).

    Nothing in the file is executed (no pickles are read), and every part is checked: the zip
    archive and each ``.npy`` header and its CRC, the metadata (format version, fields and their
    types), that exactly the expected arrays are present, each with the recorded shape and width,
    and the record's own validation (:class:`PortableState`). The arrays come back as the recorded
    dtypes, bit for bit. ``path`` is read as given (no ``.npz`` is appended).

    Raises ``OSError`` from opening ``path`` (``FileNotFoundError``, ``IsADirectoryError``,
    ``PermissionError``) and ``ValueError`` for any file that is not a complete, consistent state
    file, its message starting with the file's name and saying what is wrong: an empty file, a file
    that is not a zip archive (truncated, or another kind of file), a damaged array (bad header,
    CRC mismatch, short data), an array of Python objects, a ``.npz`` without uniopt's metadata,
    another format version, missing or unexpected arrays, an array of the wrong shape or width, or
    metadata the record refuses.
    """
    if hasattr(path, "read"):
        return _load(path, str(getattr(path, "name", "<file object>")))
    name = os.fsdecode(os.fspath(path))
    with open(name, "rb") as file:
        return _load(file, name)


def _load(file: BinaryIO, name: str) -> PortableState:
    try:
        start = file.tell()
        empty = file.seek(0, os.SEEK_END) == start
        file.seek(start)
    except (OSError, ValueError):
        empty = False  # not seekable: zipfile says so below
    if empty:
        raise ValueError(f"{name}: the file is empty, not a uniopt state file")
    try:
        archive = zipfile.ZipFile(file)
    except (*_DAMAGED, OSError) as exc:
        _reraise_io(exc)
        raise ValueError(
            f"{name}: not a readable zip archive ({_why(exc)}); a uniopt state file is the .npz that "
            "save_state writes, and this file is truncated, damaged or of another kind"
        ) from None
    with archive:
        members = {}
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                raise ValueError(f"{name}: {info.filename!r} is not an array; not a uniopt state file")
            members[info.filename[: -len(".npy")]] = info
        if _META not in members:
            raise ValueError(f"{name}: not a uniopt state file (no {_META} entry)")
        raw = _read_array(
            archive, members[_META], name, (np.dtype(np.uint8), None), "the metadata", "uint8 text"
        )
        meta = _metadata(raw, name)
        shapes, dtypes, names = meta["shapes"], meta["dtypes"], meta["slot_names"]
        expected = {f"slots/{i}/{n}" for i in range(len(shapes)) for n in names} | {_META}
        if set(members) != expected:
            lacking, extra = sorted(expected - set(members)), sorted(set(members) - expected)
            problem = f"arrays {lacking} are missing" if lacking else f"arrays {extra} are unexpected"
            raise ValueError(f"{name}: {problem}")
        try:
            slot_shape = _slot_shape_of(meta["optimizer"], meta["hyperparameters"], meta["convention"])
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{name}: {exc}") from None
        slots = []
        for i, (shape, dtype) in enumerate(zip(shapes, dtypes, strict=True)):
            entry = {}
            for slot in names:
                stored = meta["slot_dtypes"][i].get(slot, dtype)
                target = _dtype(stored)
                try:
                    want = list(slot_shape(slot, tuple(shape)))
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"{name}: parameter {i} slot {slot!r}: {exc}") from None
                raw = _read_array(
                    archive,
                    members[f"slots/{i}/{slot}"],
                    name,
                    (np.dtype(f"u{target.itemsize}"), want),
                    f"parameter {i} slot {slot!r}",
                    f"the bits of {stored}{want}",
                )
                entry[slot] = raw.view(target)
            slots.append(entry)
    try:
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
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{name}: {exc}") from None
