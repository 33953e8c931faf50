"""Where a step's scalars come from when Keras runs the spec: host, table, or (XLA only) affine in lr.

The spec's ``step_scalars(step, lr)`` is host Python in float64. Keras's step count (``iterations``)
is a variable, read eagerly or traced inside ``tf.function``/XLA, and ``learning_rate`` is a
variable or a schedule's traced value. :class:`ScalarSource` (one per spec and dtype) gives the
spec's scalars, each rounded once to the variable dtype, for every case:

* eager: computed on the host for the current step and lr (exact);
* traced, lr equal to the spec's own ``lr`` (a constant learning rate): row ``min(t, T)`` of
  :func:`uniopt.scalar_table.scalar_table`, gathered in-graph (exact: each row is the host value);
* traced, any other lr (a schedule, a changed learning rate, or scalars that never converge such as
  Adagrad's ``lr_decay``): ``tf.numpy_function`` calling the host (exact), except under XLA, which
  cannot call the host; there every scalar is read from two float64 tables as ``A[t] + B[t] * lr``
  and rounded once to the dtype (every spec's scalars are affine in lr; checked when the tables are
  built). That costs the double rounding of float64 ``A + B*lr`` against the host's own formula:
  nothing in float32 but a rare tie, about 1 ulp of a scalar in float64 (docs/tf.md has the
  measured numbers). Scalars without a finite table are, under XLA, the spec's float64 formula
  evaluated in-graph: :meth:`uniopt.Spec.scalars_from_terms` on a table of its step-only terms with
  :class:`TracedOps` (:mod:`uniopt.scalar_ops`; Schedule-Free AdamW, whose history
  :func:`in_graph_scalars` also advances), else the core's ``step_scalars`` with a traced step (the
  host's ops in the host's order), or, if that spec's code cannot take a traced step, a
  ``ValueError`` asking to run without XLA.

No update math lives here: every value is the core's ``step_scalars``, only tabulated or called.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from uniopt import Spec
from uniopt.scalar_table import NotConvergentError, ScalarTable, rounded_scalars, scalar_table, term_table

__all__ = ["ScalarSource", "TracedOps", "in_graph_scalars", "in_xla_context", "round_once", "scalar_source"]


def in_xla_context() -> bool:
    """Whether the graph being traced is compiled by XLA (``tf.function(jit_compile=True)``)."""
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - TF moved it; XLA would then reject numpy_function itself
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()))


def round_once(value: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """A float64 tensor rounded once (to nearest, ties to even) to ``dtype``, as NumPy and ml_dtypes
    round on the host. ``tf.cast`` to float16 or bfloat16 goes through float32, eagerly and under
    XLA: a second rounding, which moves a value lying just past a 16-bit halfway point onto it
    (measured: Adafactor's ``t^-0.8`` in float16 at 77 of the steps up to 2*10^7). So a 16-bit
    dtype gets float32 rounded to odd first (the float32 neighbour with an odd last bit where the
    value lies between two; exact, since float32 keeps more than two bits beyond 16-bit's), then
    the cast."""
    value = tf.convert_to_tensor(value, tf.float64)
    if dtype not in (tf.float16, tf.bfloat16):
        return tf.cast(value, dtype)
    nearest = tf.cast(value, tf.float32)
    bits = tf.bitcast(nearest, tf.int32)
    back = tf.cast(nearest, tf.float64)
    # inexact with an even last bit: the other neighbour, one step towards the value
    even = tf.logical_and(tf.not_equal(back, value), tf.equal(tf.bitwise.bitwise_and(bits, 1), 0))
    even = tf.logical_and(even, tf.logical_not(tf.math.is_nan(value)))
    step = tf.where(tf.abs(value) > tf.abs(back), tf.constant(1, tf.int32), tf.constant(-1, tf.int32))
    odd = tf.bitcast(tf.where(even, bits + step, bits), tf.float32)
    return tf.cast(odd, dtype)


class _Column(NamedTuple):
    """One scalar over steps ``1..T``: a constant when every row agrees, else the whole column."""

    constant: Any  # the value when the column is constant, else None
    values: np.ndarray | None  # shape (T,) otherwise


def _columns(table: ScalarTable) -> list[_Column]:
    out, fi, bi = [], 0, 0
    for flag in table.is_flag:
        if flag:
            col = table.flags[:, bi]
            bi += 1
        else:
            col = table.floats[:, fi]
            fi += 1
        last = col[-1]
        same = (col == last) | (np.isnan(col) & np.isnan(last)) if col.dtype.kind == "f" else col == last
        out.append(_Column(last, None) if bool(np.all(same)) else _Column(None, col))
    return out


def _gather(column: _Column, index: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    if column.values is None:
        return tf.constant(column.constant, dtype=dtype)
    return tf.gather(tf.constant(column.values, dtype=dtype), index)


class ScalarSource:
    """The scalars of one spec in one dtype, for an eager or traced step and learning rate."""

    def __init__(self, spec: Spec, dtype: str):
        self.spec = spec
        self.tf_dtype = tf.as_dtype(dtype)
        self.np_dtype = np.dtype(self.tf_dtype.as_numpy_dtype)  # ml_dtypes' for bfloat16
        self.scalars_type: type[NamedTuple] = type(spec.step_scalars(1))
        self.is_flag = tuple(isinstance(v, bool) for v in spec.step_scalars(1))
        self.converges = spec.scalars_converge()

    # -- the host ---------------------------------------------------------------------------
    @functools.lru_cache(maxsize=256)  # noqa: B019 - sources live as long as the module cache
    def host(self, step: int, lr: float) -> tuple:
        """The spec's scalars at 1-based ``step`` and ``lr``, floats rounded once to the dtype."""
        return rounded_scalars(self.spec, step, self.np_dtype, lr)

    @functools.lru_cache(maxsize=64)  # noqa: B019
    def eager(self, step: int, lr: float) -> NamedTuple:
        """Eager execution: host values as 0-d tensors, flags as Python bools."""
        values = self.host(step, lr)
        return self.scalars_type(
            *(
                v if f else tf.constant(v, dtype=self.tf_dtype)
                for v, f in zip(values, self.is_flag, strict=True)
            )
        )

    # -- traced steps -------------------------------------------------------------------------
    @functools.cached_property
    def table(self) -> tuple[int, list[_Column]]:
        table = scalar_table(self.spec, self.np_dtype)
        return table.length, _columns(table)

    @functools.cached_property
    def affine(self) -> tuple[int, list[_Column], list[_Column], list[_Column]]:
        """float64 tables ``A`` (lr = 0) and ``B`` (slope), and the flags, for lr read in-graph."""
        at0 = scalar_table(self.spec.replace(lr=0.0), np.float64)
        at1 = scalar_table(self.spec.replace(lr=1.0), np.float64)
        length = max(at0.length, at1.length)
        # every field over steps 1..length, as ScalarTable.row gives it (the limit row past the end)
        at0, at1 = at0.extended(length), at1.extended(length)
        a_cols, b_cols, flag_cols, fi, bi = [], [], [], 0, 0
        for i, flag in enumerate(self.is_flag):
            if flag:
                if not np.array_equal(at0.flags[:, bi], at1.flags[:, bi]):
                    raise NotImplementedError(
                        f"{self.spec.name}: the step flag {self.scalars_type._fields[i]} depends on "
                        "the learning rate, so it cannot be read from a table under XLA"
                    )
                flag_cols.append(at1.flags[:, bi])
                bi += 1
            else:
                a_cols.append(at0.floats[:, fi])
                b_cols.append(at1.floats[:, fi] - at0.floats[:, fi])
                fi += 1
        self._check_affine(length, a_cols, b_cols)

        def as_columns(cols: list[np.ndarray]) -> list[_Column]:
            fake = ScalarTable(
                fields=(),
                floats=np.stack(cols, axis=1) if cols else np.zeros((length, 0)),
                flags=np.zeros((length, 0), bool),
                is_flag=(False,) * len(cols),
            )
            return _columns(fake)

        flags = [_Column(c[-1], None) if np.all(c == c[-1]) else _Column(None, c) for c in flag_cols]
        return length, as_columns(a_cols), as_columns(b_cols), flags

    def _check_affine(self, length: int, a_cols: list[np.ndarray], b_cols: list[np.ndarray]) -> None:
        for step in sorted({1, 2, 3, 6, 10, 100, length, length + 5}):
            i = min(step, length) - 1
            for lr in (1e-3, 0.37, 3.0):
                exact = [
                    v for v, f in zip(self.spec.step_scalars(step, lr), self.is_flag, strict=True) if not f
                ]
                for value, a, b in zip(exact, a_cols, b_cols, strict=True):
                    approx = a[i] + b[i] * lr
                    scale = max(abs(a[i]), abs(b[i] * lr))  # terms that cancel leave their rounding
                    if not math.isclose(value, approx, rel_tol=1e-12, abs_tol=1e-12 * scale):
                        raise NotImplementedError(
                            f"{self.spec.name}: a per-step scalar is not affine in the learning rate "
                            f"({value!r} at step {step}, lr {lr}), so XLA cannot take it from a table"
                        )

    def traced(self, step: tf.Tensor, lr: tf.Tensor, owner: str) -> NamedTuple:
        """Scalars for a traced 1-based ``step`` (int64) and learning rate ``lr``."""
        lr64 = tf.cast(lr, tf.float64)
        xla = in_xla_context()
        dynamic = functools.partial(self._dynamic, step, lr64, xla, owner)
        if self.converges:
            values = tf.cond(tf.equal(lr64, float(self.spec.lr)), lambda: self._from_table(step), dynamic)
        else:
            values = dynamic()
        return self.scalars_type(*values)

    def _from_table(self, step: tf.Tensor) -> list[tf.Tensor]:
        length, columns = self.table
        index = tf.minimum(step, length) - 1
        return [
            _gather(c, index, tf.bool if f else self.tf_dtype)
            for c, f in zip(columns, self.is_flag, strict=True)
        ]

    def _dynamic(self, step: tf.Tensor, lr64: tf.Tensor, xla: bool, owner: str) -> list[tf.Tensor]:
        if not xla:
            return self._from_host(step, lr64)
        if not self.converges:
            if has_terms(self.spec):
                values, _ = in_graph_scalars(self.spec, step, lr64, None)
                return self.rounded(values, step)
            return self._from_traced_spec(step, lr64, owner)
        length, a_cols, b_cols, flag_cols = self.affine
        index = tf.minimum(step, length) - 1
        floats = iter(
            round_once(_gather(a, index, tf.float64) + _gather(b, index, tf.float64) * lr64, self.tf_dtype)
            for a, b in zip(a_cols, b_cols, strict=True)
        )
        flags = iter(_gather(c, index, tf.bool) for c in flag_cols)
        return [next(flags) if f else next(floats) for f in self.is_flag]

    def rounded(self, values: tuple, step: tf.Tensor) -> list[tf.Tensor]:
        """In-graph float64 scalars (and host floats) rounded once to the dtype: a tensor by
        ``tf.cast``, a host float by NumPy (as :meth:`host` rounds it) and then hidden from XLA's
        constant folding (times ``1 + min(step, 0)``, exact: XLA rewrites a division by a constant
        into a product with its reciprocal, measured on Schedule-Free's ``/ beta1``); flags as
        bools."""
        one = tf.cast(1 - tf.minimum(step, 0), self.tf_dtype)  # 1, unknown to XLA
        return [
            tf.cast(v, tf.bool)
            if f
            else round_once(v, self.tf_dtype)
            if tf.is_tensor(v)
            else tf.constant(np.asarray(v, self.np_dtype), self.tf_dtype) * one
            for v, f in zip(values, self.is_flag, strict=True)
        ]

    def xla_refusal(self, owner: str) -> str | None:
        """Why this spec's scalars cannot be computed under XLA (``None`` where they can), found
        without changing anything: a spec without a finite table whose in-graph formula needs a
        term table that does not converge, or whose ``step_scalars`` cannot take a traced step."""
        if self.converges:
            return None
        if has_terms(self.spec):
            try:
                term_table(self.spec)
            except NotConvergentError as exc:
                return (
                    f"{owner}: under XLA the step-only part of the per-step scalars is read from a "
                    f"table, and {exc}; run without jit_compile (e.g. model.compile(..., "
                    "jit_compile=False))"
                )
            return None
        try:
            with tf.Graph().as_default():
                self.spec.step_scalars(tf.constant(1.0, tf.float64), None)
        except Exception as exc:
            return self._refusal(owner, exc)
        return None

    def _refusal(self, owner: str, exc: Exception) -> str:
        return (
            f"{owner}: with these hyperparameters ({self.spec!r}) the per-step scalars never "
            "reach a limit and cannot be evaluated inside XLA, so they come from the host "
            "(tf.numpy_function), which XLA cannot compile; run without jit_compile "
            f"(e.g. model.compile(..., jit_compile=False)). ({type(exc).__name__}: {exc})"
        )

    def _from_traced_spec(self, step: tf.Tensor, lr64: tf.Tensor, owner: str) -> list[tf.Tensor]:
        """XLA, scalars without a finite table (Adagrad's ``lr_decay``): the core's own
        ``step_scalars`` evaluated in-graph in float64 with the step as a float64 tensor. At the
        spec's lr the ops are the host's, in the same order (bitwise when XLA does not contract
        them into FMA); at another lr, ``A + B*lr`` from the scalars at lr 0 and 1, as above."""
        t = tf.cast(step, tf.float64)
        try:
            at_lr, at0, at1 = (self.spec.step_scalars(t, lr) for lr in (None, 0.0, 1.0))
        except Exception as exc:  # the spec's host code does not take a traced step
            raise ValueError(self._refusal(owner, exc)) from None

        def pick(values: tuple) -> list[tf.Tensor]:
            # a Python float becomes a float64 constant directly (tf.cast would go through float32)
            return [
                tf.cast(v, dtype) if tf.is_tensor(v) else tf.constant(v, dtype)
                for v, dtype in (
                    (v, tf.bool if f else tf.float64) for v, f in zip(values, self.is_flag, strict=True)
                )
            ]

        exact, a, b = pick(at_lr), pick(at0), pick(at1)
        same = tf.equal(lr64, float(self.spec.lr))
        return [
            v if f else round_once(tf.where(same, v, a_ + (b_ - a_) * lr64), self.tf_dtype)
            for v, a_, b_, f in zip(exact, a, b, self.is_flag, strict=True)
        ]

    def _from_host(self, step: tf.Tensor, lr64: tf.Tensor) -> list[tf.Tensor]:
        def call(step_value: np.ndarray, lr_value: np.ndarray) -> list[np.ndarray]:
            row = self.host(int(step_value), float(lr_value))
            return [
                np.asarray(v, bool if f else self.np_dtype) for v, f in zip(row, self.is_flag, strict=True)
            ]

        out = tf.numpy_function(
            call, [step, lr64], [tf.bool if f else self.tf_dtype for f in self.is_flag], stateful=False
        )
        for tensor in out:
            tensor.set_shape([])
        return list(out)


class TracedOps:
    """:mod:`uniopt.scalar_ops`'s namespace for a traced float64 graph. Each constant is a float64
    constant plus a zero XLA cannot see (``min(step, 0)`` of the traced step count), so that no
    division by it becomes a product with its reciprocal and nothing is folded; the other
    operations are TensorFlow's, each one IEEE float64 operation."""

    def __init__(self, step: tf.Tensor):
        self.zero = tf.cast(tf.minimum(step, 0), tf.float64)

    def const(self, value: Any) -> tf.Tensor:
        if tf.is_tensor(value):
            return tf.cast(value, tf.float64)
        return tf.constant(float(value), tf.float64) + self.zero

    @staticmethod
    def minimum(a: Any, b: Any) -> tf.Tensor:
        return tf.minimum(a, b)

    @staticmethod
    def maximum(a: Any, b: Any) -> tf.Tensor:
        return tf.maximum(a, b)

    @staticmethod
    def divide(a: Any, b: Any) -> tf.Tensor:
        return tf.math.truediv(a, b)

    @staticmethod
    def pow(a: Any, b: Any) -> tf.Tensor:
        return tf.pow(tf.cast(a, tf.float64), tf.cast(b, tf.float64))

    def sqrt(self, a: Any) -> tf.Tensor:
        # + 0: XLA rewrites a / sqrt(b) into a * rsqrt(b), in float32 an approximation
        return tf.sqrt(tf.cast(a, tf.float64)) + self.zero

    @staticmethod
    def float32(a: Any) -> tf.Tensor:
        return tf.cast(tf.cast(a, tf.float32), tf.float64)

    @staticmethod
    def pow32(a: Any, b: Any) -> tf.Tensor:
        return tf.cast(tf.pow(tf.cast(a, tf.float32), tf.cast(b, tf.float32)), tf.float64)

    @staticmethod
    def div_or_zero(a: Any, b: Any) -> tf.Tensor:
        zero = tf.equal(b, 0.0)
        return tf.where(zero, tf.zeros_like(a), a / tf.where(zero, tf.ones_like(b), b))


def has_terms(spec: Spec) -> bool:
    """Whether ``spec`` splits its scalars into step-only terms and in-graph float64 arithmetic."""
    return spec.step_terms(1) is not None


def in_graph_scalars(spec: Spec, step: tf.Tensor, lr64: tf.Tensor, history: Any) -> tuple[tuple, Any]:
    """``spec.history_scalars(step, lr, history)`` inside a traced graph: the step-only terms
    gathered from :func:`uniopt.scalar_table.term_table` (row ``min(step, T)``), the rest computed by
    :meth:`uniopt.Spec.scalars_from_terms` in float64 with :class:`TracedOps`. Returns the scalars
    (float64 tensors, or host floats for the constant fields) and the next history. ``step`` is the
    1-based int64 step, ``lr64`` the float64 learning rate."""
    table = term_table(spec)
    index = tf.minimum(step, len(table)) - 1
    terms = tuple(
        tf.gather(tf.constant(table[:, i], tf.float64), index)
        if not np.all(table[:, i] == table[-1, i])
        else float(table[-1, i])
        for i in range(table.shape[1])
    )
    ops = TracedOps(step)
    return spec.scalars_from_terms(terms, tf.cast(step, tf.float64), lr64, history, ops)


@functools.cache
def scalar_source(spec: Spec, dtype: str) -> ScalarSource:
    """The shared source of ``spec``'s scalars in ``dtype`` (tables are built once per process)."""
    return ScalarSource(spec, dtype)
