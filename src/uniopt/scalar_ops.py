"""The scalar operations a spec's per-step scalar formulas use, on the host or inside a compiled graph.

Most specs compute their per-step scalars on the host in float64 (:meth:`uniopt.Spec.step_scalars`),
and adapters whose step count lives on the device read them from a table
(:mod:`uniopt.scalar_table`). A spec whose scalars never converge (Schedule-Free AdamW: a running
sum over the learning rates; Adafactor: ``t^c``) also offers its formula split in two
(:meth:`uniopt.Spec.step_terms`, :meth:`uniopt.Spec.scalars_from_terms`):

* the *terms*: what depends on the step alone and converges (``1 - beta2**t``, computed with the C
  library's ``pow``), tabulated on the host, so that no compiler's ``pow`` enters;
* the rest: elementwise float64 arithmetic (``+ - * /``, ``min``, ``max``) on those terms, the step,
  the learning rate and the history, written once against a namespace ``ops``: :data:`HOST` on the
  host (Python floats, the spec's own reference), or an adapter's namespace of graph ops (TensorFlow's
  under XLA, which cannot call the host).

A namespace provides ``const(x)`` (a float64 constant the compiler cannot fold: XLA rewrites a
division by a constant into a product with its reciprocal, a different rounding), ``minimum``,
``maximum``, ``divide``, ``div_or_zero`` (``a / b``, 0 where ``b == 0``), ``pow`` and ``sqrt``
(float64, the C library's ``pow`` and the correctly rounded square root), ``float32`` (round to
float32: a float32 ``+ - * /`` or ``sqrt`` is the float64 operation on float32 values rounded once,
exactly) and ``pow32`` (the C library's ``powf`` of the values rounded to float32). The arithmetic
operators of its values are IEEE float64 operations, each correctly rounded; a compiler that
contracts a product and a sum into a fused multiply-add (XLA's default on CPUs with FMA) rounds
once where the host rounds twice, as it does in the update itself.

A spec whose scalars never converge (Adafactor: ``t^c`` and ``1/sqrt(t)``) has no terms
(``step_terms`` gives ``()``) and computes every scalar with the namespace, ``pow`` included: XLA on
CPU lowers ``pow`` to the C library's ``pow``/``powf`` (measured bitwise, docs/tf.md); other
compilers' (XLA:GPU's libdevice) are other approximations.
"""

from __future__ import annotations

import math
import operator
from typing import Any

from ._math import float32_pow, keras_float32

__all__ = ["HOST", "HostOps"]


class HostOps:
    """The host's scalar operations: Python floats (and ints), as the spec's reference computes."""

    const = staticmethod(float)
    minimum = staticmethod(min)
    maximum = staticmethod(max)
    divide = staticmethod(operator.truediv)
    pow = staticmethod(operator.pow)
    sqrt = staticmethod(math.sqrt)

    @staticmethod
    def float32(a: Any) -> float:
        """``a`` rounded to float32 (round to nearest even), as a Python float
        (:func:`uniopt._math.keras_float32`'s rounding)."""
        return keras_float32(a)

    @staticmethod
    def pow32(a: Any, b: Any) -> float:
        """``powf(float32(a), float32(b))``, the C library's float32 power
        (:func:`uniopt._math.float32_pow`: subnormal results flushed to 0)."""
        return float(float32_pow(a, b))

    @staticmethod
    def div_or_zero(a: Any, b: Any) -> Any:
        """``a / b``, and 0 where Python raises ``ZeroDivisionError`` (``b == 0``)."""
        try:
            return a / b
        except ZeroDivisionError:
            return 0.0


HOST = HostOps()
"""The host namespace (:class:`HostOps`)."""
