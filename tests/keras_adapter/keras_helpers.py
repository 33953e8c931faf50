"""Helpers of the uniopt.keras tests (any Keras backend): a model whose gradients are its inputs,
the optimizer's state as NumPy, the registry's tolerances of this backend."""

from __future__ import annotations

import math

import keras
import numpy as np

BACKEND = keras.backend.backend()

# the registry's name of this backend's uniopt adapter and its eager and compiled modes, whose
# tolerances (Muon's matmul) hold for the same namespace here
REGISTRY = {
    "tensorflow": ("tf", "eager", "xla"),
    "jax": ("jax", "eager", "jit"),
    "torch": ("torch", "eager", "eager"),
}[BACKEND]


TORCH_COMPILE_ALL = "--torch-compile-all"
"""The option (conftest) that compiles every ``fit(jit_compile=True)`` row on torch."""


def tolerance(info, case, compiled: bool) -> int:
    """The table's ulp bound of ``info``'s ``case`` on this backend's adapter (0: bitwise)."""
    backend, eager, jit = REGISTRY
    return info.tolerance(backend, jit if compiled else eager, case.desc)


def numpy(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x)).copy()


def snapshot(opt, variables):
    """The optimizer's state as NumPy: (params, [slots per variable keyed by the core's names]); a
    slot kept in no variable (Muon's velocity of a Muon-stepped variable) is the zeros the rule
    passes through."""
    params = [numpy(v) for v in variables]
    slots = [
        {k: np.zeros_like(numpy(v)) if s is None else numpy(s) for k, s in opt.slots(v).items()}
        for v in variables
    ]
    return params, slots


@keras.saving.register_keras_serializable(package="uniopt_tests")
class FeedModel(keras.Model):
    """A model whose weights have ``shapes`` and whose gradient, for a batch of one row ``x``, is
    that row cut into the weights' shapes, exactly: the output is ``sum_i sum(w_i * x_i)`` and the
    loss (:func:`feed_loss`) is the output itself, so ``d loss / d w_i = x_i * 1``."""

    def __init__(self, shapes, dtype: str = "float32", **kwargs):
        super().__init__(**kwargs)
        self.shapes = [tuple(s) for s in shapes]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.ws = [
            self.add_weight(shape=s, initializer="zeros", dtype=dtype, name=f"w{i}")
            for i, s in enumerate(self.shapes)
        ]

    def get_config(self):
        return {"shapes": self.shapes, "dtype": self.ws[0].dtype if self.ws else "float32", "name": self.name}

    def call(self, x):
        total, start = 0.0, 0
        for w, shape, size in zip(self.ws, self.shapes, self.sizes, strict=True):
            part = keras.ops.reshape(x[:, start : start + size], (-1, *shape))
            total = total + keras.ops.sum(keras.ops.reshape(part * w, (keras.ops.shape(x)[0], -1)), axis=1)
            start += size
        return keras.ops.expand_dims(total, -1)


def feed_loss(y_true, y_pred):
    return keras.ops.sum(y_pred)


def feed_rows(grads_seq) -> np.ndarray:
    """Each step's gradients as one input row of :class:`FeedModel`."""
    return np.stack([np.concatenate([np.asarray(g).reshape(-1) for g in step]) for step in grads_seq])


def fit_feed(opt, params0, grads_seq, jit_compile, epochs: int = 1, callbacks=None, model=None):
    """``model.fit`` of a :class:`FeedModel` from ``params0``, one step per gradient list; returns
    the model."""
    if model is None:
        model = FeedModel([np.shape(p) for p in params0], dtype=str(np.asarray(params0[0]).dtype))
        model.build((None, sum(int(np.size(p)) for p in params0)))
        for w, p in zip(model.ws, params0, strict=True):
            w.assign(p)
        model.compile(optimizer=opt, loss=feed_loss, jit_compile=jit_compile)
    rows = feed_rows(grads_seq)
    model.fit(
        rows,
        np.zeros((len(rows), 1), rows.dtype),
        batch_size=1,
        epochs=epochs,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    return model
