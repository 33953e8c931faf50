"""XLA on CPU, bitwise: the flags and a probe.

By default XLA's CPU backend contracts ``a*b + c*d`` into fused multiply-adds (on machines with
FMA) and lowers ``max`` without NaN propagation, so compiled updates drift a few ulp from the spec
and a NaN in RMSprop's centered variance or AMSGrad's maximum can vanish. :data:`XLA_BITWISE_FLAGS`
turns both off. XLA reads ``XLA_FLAGS`` once, at the process's first XLA compilation: call
:func:`request_bitwise_xla` before that (importing TensorFlow is fine), and :func:`xla_is_bitwise`
to check that the flags took effect.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = ["XLA_BITWISE_FLAGS", "request_bitwise_xla", "xla_is_bitwise"]

XLA_BITWISE_FLAGS = "--xla_cpu_max_isa=AVX --xla_cpu_enable_fast_min_max=false"
"""No FMA contraction (code limited to AVX, which has no FMA) and NaN-propagating min/max."""


def request_bitwise_xla(flags: str = XLA_BITWISE_FLAGS) -> None:
    """Add ``flags`` to ``XLA_FLAGS`` (those already present are kept; effective only if XLA has
    not compiled anything in this process yet)."""
    current = os.environ.get("XLA_FLAGS", "").split()
    missing = [f for f in flags.split() if f not in current]
    if missing:
        os.environ["XLA_FLAGS"] = " ".join([*current, *missing])


def xla_is_bitwise() -> bool:
    """Whether XLA (``tf.function(jit_compile=True)``) here rounds ``a*b + c*d`` like NumPy and
    propagates NaN through ``maximum``: a probe of the two behaviours the flags change."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    a, b, c, d = (rng.standard_normal(4096).astype(np.float32) for _ in range(4))
    fused = tf.function(lambda a, b, c, d: a * b + c * d, jit_compile=True)(a, b, c, d).numpy()
    nan_max = tf.function(lambda x: tf.maximum(x, 0.0), jit_compile=True)(np.float32([np.nan])).numpy()
    return bool(np.array_equal(fused, a * b + c * d) and np.isnan(nan_max[0]))
