"""Writes the ``.keras`` files of this folder with uniopt.tf as it was at commit a10c66f (before
uniopt.keras existed): a Dense(3) model on 4 inputs, compiled with the optimizer, its weights set
from :func:`inputs`, then two ``optimizer.apply`` steps of :func:`inputs`' gradients. The files are
kept as written then; tests/keras_adapter/test_saving.py loads them on every backend, checks the
state against the NumPy reference and continues training.

    KERAS_BACKEND=tensorflow python tests/keras_adapter/data/make_saved_by_uniopt_tf.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHAPES = ((4, 3), (3,))
FILES = {
    "radam_uniopt_tf_a10c66f.keras": ("RAdam", {"learning_rate": 0.01, "weight_decay": 0.1}),
    "adamw_uniopt_tf_a10c66f.keras": (
        "AdamW",
        {"learning_rate": 0.02, "weight_decay": 0.05, "amsgrad": True},
    ),
}
STEPS_SAVED = 2


def inputs(steps: int = 4):
    """Initial kernel and bias, and ``steps`` gradient lists, drawn in float64, rounded once."""
    rng = np.random.default_rng(7)
    params = [rng.standard_normal(s).astype("float32") for s in SHAPES]
    grads = [[rng.standard_normal(s).astype("float32") for s in SHAPES] for _ in range(steps)]
    return params, grads


def main() -> None:
    import keras

    import uniopt.tf as ut

    for file, (name, kwargs) in FILES.items():
        params, grads = inputs()
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        model.set_weights(params)
        model.compile(optimizer=getattr(ut, name)(**kwargs), loss="mse")
        model.optimizer.build(model.trainable_variables)
        for step in grads[:STEPS_SAVED]:
            model.optimizer.apply([keras.ops.convert_to_tensor(g) for g in step], model.trainable_variables)
        model.save(HERE / file)


if __name__ == "__main__":
    main()
