"""Process-wide settings for the uniopt.tf tests (they run in their own venv and process).

Keras's backend is chosen at its first import, and XLA reads ``XLA_FLAGS`` at its first
compilation, so both are fixed here, before any test here imports TensorFlow or compiles anything:
the XLA tests run under the bitwise flags of docs/tf.md (a subprocess test measures XLA's defaults).
Where TensorFlow or Keras is not installed, tests/conftest.py skips this folder (this file is still
imported, so it imports neither then).
"""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if os.environ.setdefault("KERAS_BACKEND", "tensorflow") != "tensorflow":
    raise RuntimeError("tests/tf_adapter need KERAS_BACKEND=tensorflow")

if all(importlib.util.find_spec(name) is not None for name in ("tensorflow", "keras")):
    from uniopt.tf.xla import request_bitwise_xla

    request_bitwise_xla()


def pytest_configure(config):
    # Keras's TF backend calls np.array on tensors the NumPy 2 way it warns about; not ours
    config.addinivalue_line(
        "filterwarnings", "ignore:__array__ implementation doesn't accept:DeprecationWarning"
    )
