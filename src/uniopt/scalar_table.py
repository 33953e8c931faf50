"""Per-step scalars as a table, for backends whose step count lives on the device.

Under ``jax.jit``, ``tf.function`` or XLA the step is a traced integer, so the host cannot compute
:meth:`Spec.step_scalars` for it. In-graph float32 ``pow``/``exp``/``log`` differ between libraries
(and RAdam's :math:`\\rho_t` cancels badly in float32), so instead the host precomputes every step's
scalars in float64, rounds them once to the parameter dtype, and the compiled step gathers row
``min(t, T)``. This works because the scalars converge: after finitely many steps every rounded
scalar equals its limit (for ``beta2 = 0.999`` in float32, :math:`1-\\beta_2^t` rounds to 1 after
about 17k steps), and each is monotone in ``t``, so once a row equals the limit row every later row
does too. Schedules that never converge (Adagrad's ``lr_decay``) raise :class:`NotConvergentError`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ._spec import Spec

__all__ = [
    "LIMIT_STEP",
    "NotConvergentError",
    "ScalarTable",
    "rounded_scalars",
    "scalar_table",
    "term_table",
]

LIMIT_STEP = 2**62
"""A step count standing for t -> infinity (``beta**LIMIT_STEP`` underflows to 0)."""


class NotConvergentError(ValueError):
    """The spec's per-step scalars do not reach their limit within the allowed table length."""


def rounded_scalars(spec: Spec, step: int, dtype: Any, lr: float | None = None) -> tuple:
    """``spec.step_scalars(step, lr)`` with float fields rounded once to ``dtype`` (NumPy)."""
    return tuple(
        v if isinstance(v, bool) else np.asarray(v, dtype=dtype) for v in spec.step_scalars(step, lr)
    )


@dataclasses.dataclass(frozen=True)
class ScalarTable:
    """Rounded scalars for steps ``1..T``; row ``T - 1`` is the limit used for every ``t >= T``."""

    fields: tuple[str, ...]  # the Scalars NamedTuple's field names, in order
    floats: np.ndarray  # (T, number of float fields), in the parameter dtype
    flags: np.ndarray  # (T, number of bool fields), bool
    is_flag: tuple[bool, ...]  # per field: True for bool fields

    @property
    def length(self) -> int:
        return len(self.floats)

    def extended(self, length: int) -> ScalarTable:
        """The same table over steps ``1..length`` (at least its own length): the limit row repeated
        past the end, as :meth:`row` gives it there."""
        extra = max(length - self.length, 0)
        if not extra:
            return self

        def grow(rows: np.ndarray) -> np.ndarray:
            return np.concatenate([rows, np.repeat(rows[-1:], extra, axis=0)])

        return dataclasses.replace(self, floats=grow(self.floats), flags=grow(self.flags))

    def row(self, step: int) -> tuple:
        """The scalars of 1-based ``step`` (the limit row past the table's end)."""
        i = min(step, self.length) - 1
        fi = bi = 0
        out = []
        for flag in self.is_flag:
            if flag:
                out.append(bool(self.flags[i, bi]))
                bi += 1
            else:
                out.append(self.floats[i, fi])
                fi += 1
        return tuple(out)


def scalar_table(spec: Spec, dtype: Any, max_steps: int = 1_000_000) -> ScalarTable:
    """Tabulate ``spec``'s rounded scalars until they equal their limit (at most ``max_steps``).

    Row ``t`` equals :func:`rounded_scalars` ``(spec, t, dtype)``: the host's float64 rows, computed
    once per spec and shared by every dtype, are rounded to ``dtype`` as a whole array (the same
    single rounding as one value at a time).
    """
    if not spec.scalars_converge():
        raise NotConvergentError(
            f"{spec.name}: the per-step scalars never reach a limit with these hyperparameters "
            f"({spec!r}); compute them on the host for each step"
        )
    dtype = np.dtype(dtype)
    fields = type(spec.step_scalars(1))._fields
    limit = rounded_scalars(spec, LIMIT_STEP, dtype)
    is_flag = tuple(isinstance(v, bool) for v in limit)
    limit_floats = np.asarray([v for v, f in zip(limit, is_flag, strict=True) if not f], dtype=dtype)
    limit_flags = np.asarray([v for v, f in zip(limit, is_flag, strict=True) if f], dtype=bool)
    checked, rows = 0, min(_CHUNK, max_steps)
    while True:  # a chunk of rows at a time: the rows past the limit are computed for nothing
        floats64, flags = _host_rows(spec, is_flag, rows)
        floats = floats64[checked:].astype(dtype)
        at_limit = np.all(
            (floats == limit_floats) | (np.isnan(floats) & np.isnan(limit_floats)), axis=1
        ) & np.all(flags[checked:] == limit_flags, axis=1)
        hits = np.flatnonzero(at_limit)
        if hits.size:
            end = checked + int(hits[0]) + 1
            _save_host_rows(spec)
            return ScalarTable(
                fields=fields, floats=floats64[:end].astype(dtype), flags=flags[:end], is_flag=is_flag
            )
        if rows >= max_steps:
            _save_host_rows(spec)
            raise NotConvergentError(
                f"{spec.name}: the per-step scalars do not reach their limit within {max_steps} "
                f"steps in {dtype} (a schedule such as lr_decay keeps changing them); compute them on "
                "the host"
            )
        checked, rows = rows, min(rows + _CHUNK, max_steps)


@functools.lru_cache(maxsize=64)
def term_table(spec: Spec, max_steps: int = 1_000_000) -> np.ndarray:
    """:meth:`Spec.step_terms` of steps ``1..T`` as a float64 array of shape ``(T, number of
    terms)``, ``T`` the first step whose terms equal their limit (each term is monotone in the step,
    so every later step's do too: row ``T - 1`` stands for every ``t >= T``). Raises
    :class:`NotConvergentError` when the limit is not reached within ``max_steps`` steps
    (``beta2`` so close to 1 that ``1 - beta2**t`` takes longer), ``ValueError`` for a spec
    without terms.

    Since a step's terms at their limit stay there, ``T`` is found by bisection (about 20 steps'
    terms): a spec whose terms are not at their limit by ``max_steps`` is refused at once, where a
    walk through every step took 25 s for ``max_steps`` of them (Schedule-Free AdamW with
    ``beta2=0.99999``, uniopt.tf's refusal under XLA, 2-core AMD EPYC). Any earlier step at the
    limit in the rows then computed ends the table there, as the walk did."""
    limit = spec.step_terms(LIMIT_STEP)
    if limit is None:
        raise ValueError(f"{spec.name}: {spec!r} has no per-step terms (Spec.step_terms)")
    limit_row = np.asarray(limit, np.float64)

    def is_limit(row: Any) -> bool:
        return np.array_equal(np.asarray(row, np.float64), limit_row, equal_nan=True)

    def at_limit(step: int) -> bool:
        return is_limit(spec.step_terms(step))

    if max_steps < 1 or not at_limit(max_steps):
        raise NotConvergentError(
            f"{spec.name}: the per-step terms {spec.step_terms(1)!r} do not reach their limit within "
            f"{max_steps} steps with these hyperparameters ({spec!r})"
        )
    low, high = 1, max_steps  # the first step at the limit lies in [low, high]
    while low < high:
        middle = (low + high) // 2
        if at_limit(middle):
            high = middle
        else:
            low = middle + 1
    rows = np.asarray([spec.step_terms(step) for step in range(1, high + 1)], np.float64)
    rows = rows.reshape(high, len(limit_row))
    first = next(i for i, row in enumerate(rows) if is_limit(row))
    return rows[: first + 1]


_CHUNK = 4096
_HOST_ROWS: OrderedDict[Spec, tuple[np.ndarray, np.ndarray]] = OrderedDict()
_HOST_ROWS_CACHE_SIZE = 32


_READ: dict[Spec, int] = {}  # per spec, the modification time of its cache file when last read here
_UNSAVED: set[Spec] = set()  # specs with rows computed here and not yet written to the cache


def _save_host_rows(spec: Spec) -> None:
    """Write ``spec``'s host rows to the cache (:data:`CACHE_VARIABLE`) if this process computed any
    since it last wrote them: once per table, not once per chunk."""
    if spec in _UNSAVED and spec in _HOST_ROWS:
        _UNSAVED.discard(spec)
        _write_cached(spec, *_HOST_ROWS[spec])


def _host_rows(spec: Spec, is_flag: tuple[bool, ...], rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``spec.step_scalars(t)`` for ``t = 1..rows``: float fields in float64, flags as bool;
    extended and cached per spec (least recently used out)."""
    float_columns = [i for i, flag in enumerate(is_flag) if not flag]
    flag_columns = [i for i, flag in enumerate(is_flag) if flag]
    empty = (np.empty((0, len(float_columns))), np.empty((0, len(flag_columns)), bool))
    floats, flags = _HOST_ROWS.pop(spec, empty)
    if len(floats) < rows:
        cached = _read_cached(spec)  # another process's rows (or this one's, evicted): as many as it wrote
        if cached is not None and len(cached[0]) > len(floats):
            floats, flags = cached
    if len(floats) < rows:  # the rows still missing, after those found
        new = np.asarray([spec.step_scalars(t) for t in range(len(floats) + 1, rows + 1)], np.float64)
        floats = np.concatenate([floats, new[:, float_columns]])
        flags = np.concatenate([flags, new[:, flag_columns].astype(bool)])
        _UNSAVED.add(spec)
    _HOST_ROWS[spec] = floats, flags
    while len(_HOST_ROWS) > _HOST_ROWS_CACHE_SIZE:
        evicted, _ = _HOST_ROWS.popitem(last=False)
        _READ.pop(evicted, None)  # its file is worth reading again
    return floats[:rows], flags[:rows]


CACHE_VARIABLE = "UNIOPT_SCALAR_CACHE"
"""A folder where :func:`scalar_table` keeps the host rows it computes, for other processes that
need the same spec (unset by default: nothing is written). The conformance suite sets it for its
jobs, which build the same tables in every TensorFlow and JAX mode."""


def _cache_path(spec: Spec) -> Path | None:
    folder = os.environ.get(CACHE_VARIABLE)
    if not folder:
        return None
    # the spec's repr names its type and every hyperparameter (floats round-trip); the sources of the
    # core make the rows, so any change to them is another file
    digest = hashlib.sha256(repr(spec).encode() + _core_digest().encode()).hexdigest()[:32]
    return Path(folder) / f"{spec.name}-{digest}.npz"


_CORE_DIGEST: list[str] = []


def _core_digest() -> str:
    """A digest of this package's sources (the code that computes the rows)."""
    if not _CORE_DIGEST:
        h = hashlib.sha256()
        for path in sorted(Path(__file__).parent.rglob("*.py")):
            h.update(path.name.encode() + path.read_bytes())
        _CORE_DIGEST.append(h.hexdigest())
    return _CORE_DIGEST[0]


def _read_cached(spec: Spec) -> tuple[np.ndarray, np.ndarray] | None:
    """The rows in ``spec``'s cache file, or ``None`` where there is none or where this process read
    it, unchanged since, into rows it still holds (no more than those the caller already has)."""
    path = _cache_path(spec)
    try:
        modified = path.stat().st_mtime_ns if path is not None else None
    except OSError:
        return None
    if modified is None or modified == _READ.get(spec):
        return None
    _READ[spec] = modified
    try:
        with np.load(path) as saved:
            floats, flags = saved["floats"], saved["flags"]
    except (OSError, ValueError, KeyError):  # a partial or foreign file: compute instead
        return None
    return floats, flags


def _write_cached(spec: Spec, floats: np.ndarray, flags: np.ndarray) -> None:
    path = _cache_path(spec)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, floats=floats, flags=flags)
    os.replace(tmp, path)  # atomic: a reader sees the old file or the whole new one
    _READ[spec] = path.stat().st_mtime_ns  # its rows are in memory: no need to read them back
